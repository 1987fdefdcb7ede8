"""Reading registrations: page by page, in a script or a pipeline, skipping those unreadable."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import redis
from redis.client import NEVER_DECODE

from . import _json, _wire

log = logging.getLogger(__name__)

# Keys fetched per SCAN call and per batch of reads in discover().
SCAN_COUNT = 2000

# The option that has redis-py return a reply as bytes, whatever the client decodes.
RAW: Dict[str, Any] = {NEVER_DECODE: True}

# Keys a registry remembers having logged as unreadable (the oldest forgotten first).
_LOGGED_KEYS = 1024


class RegistrationReader:
    """What :class:`~mas_sync._registry.AgentRegistry` builds on to read registrations.

    Holds no state of its own: the registry sets the attributes below. Data
    it cannot read never breaks a read: each such key is logged once (see
    :meth:`_log_skip`) and counted in the caller's ``skipped``.
    """

    _redis: redis.Redis
    _cluster: bool
    _on_skip: Optional[Callable[[int], None]]
    _logged: "OrderedDict[bytes, None]"
    _logged_lock: threading.Lock
    _select_page: Any

    def _registration_keys(self) -> List[bytes]:
        # The names of the hashes under agent:, as bytes (a name need not be
        # UTF-8). SCAN returns only hashes: the heartbeat strings under the
        # same prefix, and foreign keys of other types, stay on the server.
        return list(self._redis.scan_iter(
            match=_wire.AGENT_KEY_PATTERN, count=SCAN_COUNT, _type="hash", **RAW
        ))

    def _server_ms(self, key: Optional[bytes] = None) -> int:
        """Redis's clock (TIME), in ms; on a cluster, that of the node holding ``key``.

        Without ``key``, on a cluster, that of the default node.
        """
        if self._cluster:
            node = (self._redis.get_default_node() if key is None
                    else self._redis.get_node_from_key(key))
            reply = self._redis.time(target_nodes=node)
        else:
            reply = self._redis.time()
        if isinstance(reply, dict):  # a cluster's reply, by node
            reply = next(iter(reply.values()))
        seconds, micros = reply
        return int(seconds) * 1000 + int(micros) // 1000

    def _log_skip(self, key: bytes, reason: object) -> None:
        """Log that ``key`` was skipped: a warning the first time, then at debug level."""
        with self._logged_lock:
            first = key not in self._logged
            self._logged[key] = None
            self._logged.move_to_end(key)
            if len(self._logged) > _LOGGED_KEYS:
                self._logged.popitem(last=False)
        if first:
            log.warning("Registry: skipped %r, which is not a registration mas_sync can read:"
                        " %s (logged once)", _wire.shown_key(key), reason)
        else:
            log.debug("Registry: skipped %r: %s", _wire.shown_key(key), reason)

    def _read_entries(
        self, entries: Sequence[Any], wanted: Set[str], skipped: List[bytes]
    ) -> List[Dict[str, Any]]:
        """Parse ``key, id, capabilities, metadata, delivery, instances, ...`` (bytes).

        One registration at a time.
        """
        found = []
        for n in range(0, len(entries) - 5, 6):
            key, agent_id, caps, metadata, delivery, instances = entries[n:n + 6]
            try:
                record = _wire.parse_registration(key, agent_id, caps, metadata)
            except ValueError as exc:
                self._log_skip(key, exc)
                skipped.append(key)
                continue
            if not wanted or wanted.intersection(record["capabilities"]):
                record["delivery"] = delivery.decode("ascii")
                record["instances"] = int(instances)
                found.append(record)
        return found

    def _run_raw(self, script: Any, args: Sequence[Any]) -> Any:
        """Run a script with no keys; its reply as bytes, whatever the client decodes."""
        try:
            return self._redis.execute_command(
                "EVALSHA", script.sha, 0, *args, **RAW)
        except redis.exceptions.NoScriptError:
            return self._redis.execute_command(
                "EVAL", script.script, 0, *args, **RAW)

    def _discover_scripted(self, wanted: List[str], skipped: List[bytes]) -> List[Dict[str, Any]]:
        # The server scans, reads and filters; one round trip a SCAN page
        # (two for a page holding a registration the client cannot read).
        found: List[Dict[str, Any]] = []
        wanted_set = set(wanted)
        cursor: Any = b"0"
        mode = "page"
        while True:
            reply = self._run_raw(
                self._select_page,
                [cursor, SCAN_COUNT, _wire.HEARTBEAT_KEY_SUFFIX, mode, *wanted],
            )
            if reply[1] == b"page":
                page = _read_page(reply[2], reply[3], wanted_set)
                if page is None:  # something only Python refuses: again, entry by entry
                    mode = "entries"
                    continue
                found.extend(page)
            else:
                found.extend(self._read_entries(reply[2:], wanted_set, skipped))
            mode = "page"
            cursor = reply[0]
            if cursor in (b"0", 0):
                return found

    def _discover_pipelined(
        self, keys: List[bytes], wanted: Set[str], skipped: List[bytes]
    ) -> List[Dict[str, Any]]:
        # A cluster spreads the keys over slots and nodes, which one script
        # cannot span: the hashes are read with pipelined HMGETs, and the
        # heartbeat keys of the matching ones with pipelined EXISTS, and each
        # reliable one whole (HGETALL), to count its live instances on the
        # clock of one node (a script would need write access to the key).
        # As on one server, a registration that cannot be read is counted
        # only if it is ACTIVE and beating.
        found = []
        suffix = _wire.HEARTBEAT_KEY_SUFFIX.encode("ascii")
        for first in range(0, len(keys), SCAN_COUNT):
            batch = [k for k in keys[first:first + SCAN_COUNT]
                     if len(k) > 6 and b":" not in k[6:]]
            pipe = self._redis.pipeline(transaction=False)
            for key in batch:
                pipe.execute_command(
                    "HMGET", key, "id", "capabilities", "metadata", "status",
                    _wire.DELIVERY_FIELD, **RAW)
            candidates: List[Tuple[bytes, Any]] = []
            for key, values in zip(batch, pipe.execute(raise_on_error=False)):
                if isinstance(values, Exception):  # no longer a hash
                    log.debug("Registry: skipping %r: %s", _wire.shown_key(key), values)
                    continue
                agent_id, caps, metadata, status, delivery = values
                if status != _wire.STATUS_ACTIVE.encode("ascii"):
                    continue
                try:
                    record: Any = _wire.parse_registration(key, agent_id, caps, metadata)
                except ValueError as exc:
                    candidates.append((key, exc))
                    continue
                if not wanted or wanted.intersection(record["capabilities"]):
                    reliable = delivery == _wire.DELIVERY_RELIABLE.encode("ascii")
                    record["delivery"] = _wire.DELIVERY_RELIABLE if reliable else "pubsub"
                    record["instances"] = 1
                    candidates.append((key, record))
            if not candidates:
                continue
            pipe = self._redis.pipeline(transaction=False)
            counted = []
            for key, outcome in candidates:
                pipe.exists(key + suffix)
            for key, outcome in candidates:
                if isinstance(outcome, dict) and outcome["delivery"] == _wire.DELIVERY_RELIABLE:
                    pipe.execute_command("HGETALL", key, **RAW)
                    counted.append(outcome)
            replies = pipe.execute(raise_on_error=False)
            now_ms = self._server_ms() if counted else 0
            for record, fields in zip(counted, replies[len(candidates):]):
                record["instances"] = (
                    _wire.live_instances(fields, now_ms) if isinstance(fields, dict) else 0
                )
            for (key, outcome), beating in zip(candidates, replies):
                if isinstance(beating, Exception) or not beating:
                    continue
                if isinstance(outcome, Exception):
                    self._log_skip(key, outcome)
                    skipped.append(key)
                else:
                    found.append(outcome)
        return found



def _read_page(count: Any, text: bytes, wanted: Set[str]) -> Optional[List[Dict[str, Any]]]:
    """The registrations of a page document, or None if any entry does not read strictly."""
    try:
        entries = _json.loads_strict(text)
    except ValueError:
        return None
    if type(entries) is not list or len(entries) != int(count):
        return None
    found = []
    append = found.append
    # The checks of one entry, inlined: this loop runs once a registration.
    try:
        for entry in entries:
            if type(entry) is not list:
                return None
            agent_id, caps, metadata, delivery, instances = entry  # ValueError: not 5
            if not (type(agent_id) is str and agent_id and type(caps) is list
                    and type(metadata) is dict):
                return None
            for cap in caps:
                if type(cap) is not str:
                    return None
            if not wanted or not wanted.isdisjoint(caps):
                append({"id": agent_id, "capabilities": caps, "metadata": metadata,
                        "delivery": delivery, "instances": instances})
    except ValueError:
        return None
    return found
