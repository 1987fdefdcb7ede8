"""An agent's opt-in copy of the registry, kept fresh by ``mas.system`` (``discovery_cache``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, FrozenSet, List, Optional, Set

from . import _json, _wire
from ._listener import ChannelListener
from ._redis import ANY_REDIS_ERROR
from ._registry import AgentRegistry

log = logging.getLogger(__name__)

#: Seconds for which a registration announced but not yet beating is read
#: again (an agent of the async framework announces itself before its first
#: heartbeat), and the pause between two reads.
BEAT_GRACE = 2.0
BEAT_RECHECK = 0.02

# The keys of a record that discover() returns.
_RECORD_KEYS = ("id", "capabilities", "metadata", "delivery", "instances")


class DiscoveryCache:
    """The registrations an agent keeps, answering :meth:`discover` without Redis.

    Filled by one full read (what :meth:`AgentRegistry.discover` returns for
    every capability), then kept fresh by the REGISTER and DEREGISTER events
    of ``mas.system``: the registration each one names is read again (its
    hash and heartbeat key), so that the copy follows what Redis holds, not
    what an event says. What no event announces (a heartbeat that expires, a
    status a registry service changes) is caught by a full read every
    ``refresh`` seconds.

    The events come on a connection and a thread of the cache's own (a
    :class:`~mas_sync._listener.ChannelListener` on ``mas.system``; sharded
    pub/sub on a cluster), named ``{name}-discovery``; the reads it does run
    in that thread. While the subscription is not confirmed, lost, or the
    last read failed, :attr:`valid` is False and :meth:`discover` reads
    Redis, as without the cache: a stale copy is never served.

    Thread-safe: :meth:`discover` may be called from any thread.

    Args:
        registry: The run's registry (reads Redis).
        url: The Redis URL.
        refresh: Seconds between two full reads.
        name: The prefix of the thread's name.
        owner: Who owns the cache, for log lines.
        probe_interval: Seconds of silence before the listener PINGs Redis.
        client_name: The connection's name in ``CLIENT LIST``.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        url: str,
        refresh: float,
        name: str,
        owner: str,
        probe_interval: float = 5.0,
        client_name: Optional[str] = None,
    ) -> None:
        self._registry = registry
        self._refresh = refresh
        self._owner = owner
        self._lock = threading.Lock()  # guards the fields below
        self._work = threading.Lock()  # one fill or catch-up at a time
        self._entries: Dict[str, Dict[str, Any]] = {}
        self._answers: Dict[FrozenSet[str], List[Dict[str, Any]]] = {}
        self._dirty: Set[str] = set()
        # Announced, ACTIVE, not yet beating: id -> when to stop reading it again.
        self._pending: Dict[str, float] = {}
        # Announced gone: id -> until when a full read may not bring it back
        # (an agent of the async framework announces DEREGISTER before it
        # deletes its registration).
        self._gone: Dict[str, float] = {}
        self._valid = False
        self._epoch = 0  # moved on by each lost subscription
        self._next_fill = 0.0  # monotonic time of the next full read
        self._listener = ChannelListener(
            url, _wire.SYSTEM_CHANNEL, self._on_event, f"{name}-discovery", owner,
            on_tick=self._catch_up, on_disconnect=self._lost, on_reconnect=self._catch_up,
            # Starting over, it may miss events: answer from Redis until refilled.
            on_restart=lambda error: self._lost(),
            on_fatal=lambda error: self._lost(), probe_interval=probe_interval,
            client_name=client_name,
        )

    @property
    def valid(self) -> bool:
        """True while :meth:`discover` answers from the copy."""
        return self._valid

    @property
    def thread(self) -> threading.Thread:
        """The thread that reads ``mas.system`` and refreshes the copy."""
        return self._listener.thread

    def start(self) -> None:
        """Subscribe to ``mas.system``, then fill the copy (a failed read is retried later).

        Raises:
            MASConnectionError: the subscription failed.
        """
        self._listener.start()
        self._catch_up()

    def read_now(self, agent_id: str) -> None:
        """Read the registration of ``agent_id`` now, in the calling thread (its own, at start)."""
        with self._lock:
            self._dirty.add(agent_id)
        self._catch_up()

    def moved(self) -> None:
        """Sentinel moved the master: answer from Redis, subscribe again, refill (any thread)."""
        self._lost()
        self._listener.reset()

    def stop(self, publisher: Any, deadline: float) -> None:
        """Stop the thread (woken through ``publisher``) and close its connection."""
        self._lost()
        self._listener.stop(publisher, deadline)

    def discover(self, wanted: List[str]) -> List[Dict[str, Any]]:
        """As :meth:`AgentRegistry.discover` (``wanted`` already checked), from the copy if valid.

        Each record is a copy of the one kept; its ``capabilities`` and
        ``metadata`` are shared with the copy and with later answers.
        """
        key = frozenset(wanted)
        with self._lock:
            answer = self._answers.get(key) if self._valid else None
            if answer is None and self._valid:
                answer = sorted(
                    (record for record in self._entries.values()
                     if not key or not key.isdisjoint(record["capabilities"])),
                    key=_by_id,
                )
                self._answers[key] = answer
        if answer is None:
            return self._registry.discover(wanted)
        return list(map(dict.copy, answer))  # dict.copy: several times quicker than dict()

    # -- in the listener thread --------------------------------------------------

    def _on_event(self, data: bytes) -> None:
        """Note the agent a REGISTER names (read at the catch-up); drop the one DEREGISTER names."""
        try:
            event = _json.loads_strict(data)
            kind, agent_id = event["type"], event["agent_id"]
        except (ValueError, TypeError, KeyError):
            return  # not an event of the registry
        if kind not in ("REGISTER", "DEREGISTER") or not isinstance(agent_id, str):
            return
        with self._lock:
            if kind == "REGISTER":
                self._dirty.add(agent_id)
                self._gone.pop(agent_id, None)
                return
            self._dirty.discard(agent_id)
            self._gone[agent_id] = time.monotonic() + BEAT_GRACE
            if self._entries.pop(agent_id, None) is not None:
                self._answers.clear()

    def _lost(self) -> None:
        """The subscription is lost (or the cache stops): answer from Redis until refilled."""
        with self._lock:
            self._valid = False
            self._epoch += 1
            self._next_fill = 0.0

    def _catch_up(self) -> Optional[float]:
        """Fill the copy when due (or invalid), then read the agents that events named.

        Returns:
            The seconds within which to call again: soon while an announced
            registration waits for its first heartbeat; None otherwise.
        """
        if not self._listener.receiving:
            return None
        with self._work:
            now = time.monotonic()
            with self._lock:
                epoch = self._epoch
                fill = not self._valid or now >= self._next_fill
                dirty, self._dirty = self._dirty, set()
            pending = {agent_id: until for agent_id, until in self._pending.items()
                       if agent_id not in self._gone}
            self._pending = {}
            try:
                if fill:
                    self._fill(epoch)
                for agent_id in sorted(dirty | set(pending)):
                    if not self._read_one(agent_id, epoch):
                        until = pending.get(agent_id, now + BEAT_GRACE)
                        if until > now:
                            self._pending[agent_id] = until
            except ANY_REDIS_ERROR as exc:
                log.warning("%s: discovery cache could not read Redis (%s); reading Redis"
                            " at each discover() until it can", self._owner, exc)
                with self._lock:
                    if self._epoch == epoch:
                        self._valid = False
                        self._next_fill = 0.0
        return BEAT_RECHECK if self._pending else None

    def _fill(self, epoch: int) -> None:
        """One full read; the copy is valid if no subscription was lost meanwhile."""
        found = self._registry.discover()
        entries = {record["id"]: record for record in found}
        with self._lock:
            if self._epoch != epoch:
                return
            now = time.monotonic()
            for agent_id, until in list(self._gone.items()):
                if until <= now:
                    del self._gone[agent_id]
                else:
                    entries.pop(agent_id, None)
            # Events that came during the read are read again after it.
            self._entries = entries
            self._answers.clear()
            self._valid = True
            self._next_fill = time.monotonic() + self._refresh

    def _read_one(self, agent_id: str, epoch: int) -> bool:
        """Read again the registration of ``agent_id`` (after an event that named it).

        Returns:
            False when it is ACTIVE but its heartbeat key is missing (not in
            the copy: read it again soon); True otherwise.
        """
        record: Optional[Dict[str, Any]] = None
        try:
            _wire.validate_agent_id(agent_id)
        except (TypeError, ValueError):
            return True  # no registration can have this id
        found = self._registry.get_agent(agent_id)
        active = found is not None and found["status"] == _wire.STATUS_ACTIVE
        beating = active and self._registry.is_beating(agent_id)
        if found is not None and beating:
            record = {key: found[key] for key in _RECORD_KEYS}
        with self._lock:
            if self._epoch != epoch or agent_id in self._gone:
                return True  # a DEREGISTER came meanwhile
            if record is None:
                changed = self._entries.pop(agent_id, None) is not None
            else:
                changed = self._entries.get(agent_id) != record
                self._entries[agent_id] = record
            if changed:
                self._answers.clear()
        return beating or not active


def _by_id(record: Dict[str, Any]) -> str:
    return record["id"]
