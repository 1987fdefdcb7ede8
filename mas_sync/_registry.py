"""The agent registry: registration hashes, heartbeats and discovery."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

import redis

from . import _wire
from ._connection import is_cluster, publish

log = logging.getLogger(__name__)

# Keys fetched per SCAN call and per batch of reads in discover().
_SCAN_COUNT = 2000

# discover() on one server, one SCAN page per call: ARGV[1] is the cursor,
# ARGV[2] the COUNT, ARGV[3:] the capabilities wanted (any, when none). Of the
# registration hashes on the page, those ACTIVE and having one of the
# capabilities are returned with the next cursor, as
# {cursor, "[[id, capabilities, metadata], ...]"}: the keys never travel to
# the client, which parses one JSON document a page. Keys that are not
# registrations, and hashes whose JSON fields do not parse, are skipped.
_SELECT_PAGE = """
local want, any = {}, #ARGV == 2
for i = 3, #ARGV do want[ARGV[i]] = true end
local page = redis.call('SCAN', ARGV[1], 'MATCH', 'agent:*', 'COUNT', ARGV[2], 'TYPE', 'hash')
local out = {}
for _, key in ipairs(page[2]) do
  if #key > 6 and not string.find(key, ':', 7, true) then
    local f = redis.call('HMGET', key, 'id', 'capabilities', 'metadata', 'status')
    if f[4] == 'ACTIVE' and f[1] then
      local caps_text, meta_text = f[2] or '[]', f[3] or '{}'
      local ok_caps, caps = pcall(cjson.decode, caps_text)
      local ok_meta, meta = pcall(cjson.decode, meta_text)
      if ok_caps and ok_meta and type(caps) == 'table' and type(meta) == 'table' then
        local match = any
        if not match then
          for _, cap in ipairs(caps) do
            if want[cap] then match = true break end
          end
        end
        if match then
          out[#out + 1] = '[' .. cjson.encode(f[1]) .. ',' .. caps_text .. ',' .. meta_text .. ']'
        end
      end
    end
  end
end
return {page[1], '[' .. table.concat(out, ',') .. ']'}
"""


class AgentRegistry:
    """Registers agents in Redis and finds them by capability.

    Thread-safe: it holds nothing but the client, and redis-py clients may be
    shared by threads.

    Args:
        redis: A client created with ``decode_responses=True``.
    """

    def __init__(self, redis: redis.Redis) -> None:
        self._redis = redis
        # A cluster has no transactions across slots: the registration is
        # written without one there.
        self._cluster = is_cluster(redis)
        self._select_page = redis.register_script(_SELECT_PAGE)

    def register(
        self,
        agent_id: str,
        capabilities: List[str],
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        heartbeat_ttl: Optional[float] = None,
    ) -> str:
        """Write the registration hash, replacing any earlier one, and announce it.

        In one transaction: the ``agent:{id}`` hash is replaced, the heartbeat
        key is set when ``heartbeat_ttl`` is given, and REGISTER is published
        on ``mas.system``.

        Returns:
            The agent's new authentication token.

        Raises:
            TypeError, ValueError: bad id, capabilities or metadata; nothing
                is written.
        """
        _wire.validate_agent_id(agent_id)
        capabilities = _wire.validate_capabilities(capabilities)
        token = secrets.token_urlsafe(32)
        fields = _wire.registration_fields(agent_id, capabilities, metadata or {}, token)
        pipe = self._redis.pipeline(transaction=not self._cluster)
        pipe.delete(_wire.agent_key(agent_id))
        pipe.hset(_wire.agent_key(agent_id), mapping=fields)
        if heartbeat_ttl is not None:
            pipe.set(
                _wire.heartbeat_key(agent_id),
                _wire.heartbeat_value(),
                px=max(1, int(heartbeat_ttl * 1000)),
            )
        publish(pipe, _wire.SYSTEM_CHANNEL, _wire.register_event(agent_id, capabilities))
        pipe.execute()
        return token

    def deregister(self, agent_id: str, keep_state: bool = True) -> None:
        """Delete the registration and heartbeat keys and announce DEREGISTER.

        Args:
            agent_id: The agent to remove.
            keep_state: Keep ``agent.state:{id}`` (the default), so that the
                agent finds its state again when it restarts.
        """
        pipe = self._redis.pipeline(transaction=not self._cluster)
        pipe.delete(_wire.agent_key(agent_id))
        pipe.delete(_wire.heartbeat_key(agent_id))
        if not keep_state:
            pipe.delete(_wire.state_key(agent_id))
        publish(pipe, _wire.SYSTEM_CHANNEL, _wire.deregister_event(agent_id))
        pipe.execute()

    def get_agent(self, agent_id: str) -> Optional[Dict[str, Any]]:
        """The registration of one agent, or None if it is not registered.

        Returns:
            ``{"id", "capabilities", "metadata", "status", "registered_at"}``.
        """
        data = self._redis.hgetall(_wire.agent_key(agent_id))
        record = _wire.parse_agent_record(data)
        if record is None:
            return None
        try:
            record["registered_at"] = float(data.get("registered_at", "0"))
        except ValueError:
            record["registered_at"] = 0.0
        return record

    def discover(self, capabilities: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
        """The ACTIVE agents having at least one of ``capabilities``.

        Args:
            capabilities: Capabilities to look for; None or empty for every
                ACTIVE agent.

        Returns:
            ``{"id", "capabilities", "metadata"}`` for each agent, sorted by id.
            Registration hashes that are malformed are skipped.

        Raises:
            TypeError: ``capabilities`` is a bare string or holds non-strings.
        """
        wanted = _wire.validate_capabilities(capabilities)
        if self._cluster:
            found = self._discover_pipelined(self._registration_keys(), set(wanted))
        else:
            found = self._discover_scripted(wanted)
        found.sort(key=lambda r: r["id"])
        return found

    def update_heartbeat(self, agent_id: str, ttl: float = 60) -> None:
        """Refresh the heartbeat key of ``agent_id`` with a TTL of ``ttl`` seconds."""
        self._redis.set(
            _wire.heartbeat_key(agent_id), _wire.heartbeat_value(), px=max(1, int(ttl * 1000))
        )

    def _registration_keys(self) -> List[str]:
        # For a cluster. SCAN returns only hashes: the heartbeat strings
        # under the same prefix stay on the server.
        return [
            key
            for key in self._redis.scan_iter(
                match=_wire.AGENT_KEY_PATTERN, count=_SCAN_COUNT, _type="hash"
            )
            if _wire.agent_id_from_key(key) is not None
        ]

    def _discover_scripted(self, wanted: List[str]) -> List[Dict[str, Any]]:
        # The server scans, reads and filters; one round trip a SCAN page.
        found = []
        cursor = "0"
        while True:
            cursor, text = self._select_page(args=[cursor, _SCAN_COUNT, *wanted])
            for agent_id, caps, metadata in json.loads(text):
                if isinstance(caps, list) and isinstance(metadata, dict):
                    found.append({"id": agent_id, "capabilities": caps, "metadata": metadata})
            if str(cursor) == "0":
                return found

    def _discover_pipelined(self, keys: List[str], wanted: Set[str]) -> List[Dict[str, Any]]:
        # A cluster spreads the keys over slots and nodes, which one script
        # cannot span: the hashes are read with pipelined HMGETs.
        found = []
        for first in range(0, len(keys), _SCAN_COUNT):
            for record in self._fetch(keys[first:first + _SCAN_COUNT]):
                if record["status"] != _wire.STATUS_ACTIVE:
                    continue
                if wanted and not wanted.intersection(record["capabilities"]):
                    continue
                del record["status"]
                found.append(record)
        return found

    def _fetch(self, keys: List[str]) -> Iterable[Dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "id", "capabilities", "metadata", "status")
        for key, values in zip(keys, pipe.execute(raise_on_error=False)):
            if isinstance(values, Exception):  # not a hash: a foreign key
                log.debug("Registry: skipping %s: %s", key, values)
                continue
            record = _wire.parse_agent_record(
                dict(zip(("id", "capabilities", "metadata", "status"), values))
            )
            if record is not None:
                yield record
