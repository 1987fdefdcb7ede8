"""What an operator sees of a running system, read from Redis alone: agents, their liveness and counters.

The command-line tool and the dashboard read through here. Nothing here talks
to an agent's process: registrations (``agent:{id}``), heartbeats
(``agent:{id}:heartbeat``), counters (``agent:{id}:stats``, see
:mod:`mas_sync._shared_stats`) and state (``agent.state:{id}``) are all in
Redis, so a view survives its own restart and that of any agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import redis

from . import _wire
from ._discovery import RAW
from ._registry import AgentRegistry
from ._shared_stats import SharedStats, combine_stats


#: The status shown for an ACTIVE agent whose heartbeat key is gone.
STALE = "STALE"


@dataclass(frozen=True)
class AgentView:
    """One registered agent, as Redis holds it.

    Attributes:
        id: The agent's id.
        status: ``ACTIVE`` or ``INACTIVE`` (as a registry service marked it).
        capabilities: Its capabilities.
        metadata: Its metadata.
        delivery: ``pubsub`` or ``reliable``.
        instances: Live instances of a reliable agent (1 for pub/sub).
        registered_at: When it registered (wall clock), 0 if unknown.
        heartbeat_at: When it last beat (wall clock, the agent's), None when
            its heartbeat key is gone or unreadable.
        stale: Its heartbeat key is gone: the agent stopped without
            deregistering, or is cut off from Redis.
        stats: Its counters, None when it writes none (an async agent, or a
            mas_sync agent before its first beat).
    """

    id: str
    status: str
    capabilities: List[str]
    metadata: Dict[str, Any]
    delivery: str
    instances: int
    registered_at: float
    heartbeat_at: Optional[float]
    stale: bool
    stats: Optional[SharedStats] = field(default=None)

    @property
    def shown_status(self) -> str:
        """``ACTIVE``, :data:`STALE` (ACTIVE, heartbeat gone) or the status Redis holds."""
        if self.status == _wire.STATUS_ACTIVE and self.stale:
            return STALE
        return self.status

    def heartbeat_age(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds since the last beat, None when it is unknown."""
        if self.heartbeat_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.heartbeat_at)

    def to_json(self, now: Optional[float] = None) -> Dict[str, Any]:
        """A JSON-ready dict of this view, with ``heartbeat_age``."""
        return {
            "id": self.id, "status": self.status, "stale": self.stale,
            "capabilities": list(self.capabilities), "metadata": dict(self.metadata),
            "delivery": self.delivery, "instances": self.instances,
            "registered_at": self.registered_at, "heartbeat_at": self.heartbeat_at,
            "heartbeat_age": self.heartbeat_age(now),
            "stats": None if self.stats is None else self.stats.to_json(),
        }


def list_agents(
    client: redis.Redis,
    capability: Optional[str] = None,
    include_inactive: bool = False,
) -> List[AgentView]:
    """Every registered agent, sorted by id; registrations that cannot be read are skipped.

    Args:
        client: A client of the deployment (any URL form of mas_sync).
        capability: Only the agents with this capability.
        include_inactive: Also those a registry service marked INACTIVE.
            Stale agents (heartbeat gone, still ACTIVE) are always listed.
    """
    registry = AgentRegistry(client)
    now = time.time()
    now_ms: Optional[int] = None
    views: List[AgentView] = []
    for batch in registry._id_batches():
        pipe = client.pipeline(transaction=False)
        for agent_id in batch:
            pipe.execute_command("HGETALL", _wire.agent_key(agent_id), **RAW)
            pipe.execute_command("GET", _wire.heartbeat_key(agent_id), **RAW)
            pipe.execute_command("HGETALL", _wire.stats_key(agent_id), **RAW)
        replies = pipe.execute(raise_on_error=False)
        for n, agent_id in enumerate(batch):
            fields, beat, stats = replies[3 * n:3 * n + 3]
            if isinstance(fields, Exception) or not fields:
                continue
            if now_ms is None and fields.get(_DELIVERY_FIELD) == _RELIABLE:
                now_ms = registry._server_ms()
            view = _view(agent_id, fields, beat, stats, now, now_ms)
            if view is None:
                continue
            if view.status != _wire.STATUS_ACTIVE and not include_inactive:
                continue
            if capability is not None and capability not in view.capabilities:
                continue
            views.append(view)
    views.sort(key=lambda v: v.id)
    return views


def agent_view(client: redis.Redis, agent_id: str) -> Optional[AgentView]:
    """One agent's view, None when it is not registered (or its registration cannot be read).

    Raises:
        TypeError, ValueError: ``agent_id`` is not a valid agent id.
    """
    _wire.validate_agent_id(agent_id)
    fields = client.execute_command("HGETALL", _wire.agent_key(agent_id), **RAW)
    if not fields:
        return None
    beat = client.execute_command("GET", _wire.heartbeat_key(agent_id), **RAW)
    stats = client.execute_command("HGETALL", _wire.stats_key(agent_id), **RAW)
    now_ms = None
    if fields.get(_DELIVERY_FIELD) == _RELIABLE:
        now_ms = AgentRegistry(client)._server_ms(_wire.agent_key(agent_id).encode())
    return _view(agent_id, fields, beat, stats, time.time(), now_ms)


@dataclass(frozen=True)
class ConsumerView:
    """One consumer of a reliable agent's group (``XINFO CONSUMERS``).

    Attributes:
        name: ``{id}-{instance}``.
        pending: Entries delivered to it and not yet acknowledged.
        idle: Seconds since it last read or claimed.
    """

    name: str
    pending: int
    idle: float

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict of this view."""
        return {"name": self.name, "pending": self.pending, "idle": self.idle}


@dataclass(frozen=True)
class StreamView:
    """A reliable agent's stream, group and dead letters, as Redis holds them.

    Attributes:
        length: Entries in ``agent.stream:{id}`` (handled ones included, up
            to its ``stream_maxlen``).
        pending: Entries the group ``agents`` delivered and did not
            acknowledge yet (0 when there is no group).
        lag: Entries not yet delivered to the group; None when Redis cannot
            tell (before Redis 7, or after entries were deleted).
        consumers: The group's consumers, by name.
        dead_letters: Entries in ``agent.dlq:{id}``.
    """

    length: int
    pending: int
    lag: Optional[int]
    consumers: List[ConsumerView]
    dead_letters: int

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict of this view."""
        return {
            "length": self.length, "pending": self.pending, "lag": self.lag,
            "consumers": [c.to_json() for c in self.consumers],
            "dead_letters": self.dead_letters,
        }


def stream_view(client: redis.Redis, agent_id: str) -> Optional[StreamView]:
    """The stream of ``agent_id``, None when it has neither a stream nor dead letters.

    Raises:
        TypeError, ValueError: ``agent_id`` is not a valid agent id.
    """
    _wire.validate_agent_id(agent_id)
    stream, dlq = _wire.stream_key(agent_id), _wire.dlq_key(agent_id)
    length = int(client.xlen(stream))
    dead_letters = int(client.xlen(dlq))
    if not length and not dead_letters and not client.exists(stream):
        return None
    pending, lag, consumers = 0, None, []
    try:
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
    except redis.ResponseError:  # no longer a stream
        groups = []
    for group in groups:
        if _text(group.get("name")) != _wire.CONSUMER_GROUP:
            continue
        pending = int(group.get("pending") or 0)
        lag = None if group.get("lag") is None else int(group["lag"])
        for consumer in client.xinfo_consumers(stream, _wire.CONSUMER_GROUP):
            consumers.append(ConsumerView(
                name=_text(consumer.get("name")), pending=int(consumer.get("pending") or 0),
                idle=int(consumer.get("idle") or 0) / 1000.0,
            ))
    consumers.sort(key=lambda c: c.name)
    return StreamView(length, pending, lag, consumers, dead_letters)


def read_state(client: redis.Redis, agent_id: str) -> Dict[str, str]:
    """The state hash ``agent.state:{id}`` as the state manager stores it: str to str.

    A typed agent's fields are stored encoded (JSON for lists, dicts and
    models); bytes that are not UTF-8 are shown escaped.

    Raises:
        TypeError, ValueError: ``agent_id`` is not a valid agent id.
    """
    _wire.validate_agent_id(agent_id)
    raw = client.execute_command("HGETALL", _wire.state_key(agent_id), **RAW)
    return {_text(k): _text(v) for k, v in sorted(raw.items())}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


_DELIVERY_FIELD = _wire.DELIVERY_FIELD.encode("ascii")
_RELIABLE = _wire.DELIVERY_RELIABLE.encode("ascii")


def _view(
    agent_id: str, fields: Any, beat: Any, stats: Any, now: float, now_ms: Optional[int]
) -> Optional[AgentView]:
    """The view of one registration as HGETALL/GET give them (bytes), or None."""
    key = _wire.agent_key(agent_id).encode("utf-8")
    try:
        record = _wire.parse_registration(
            key, fields.get(b"id"), fields.get(b"capabilities"), fields.get(b"metadata")
        )
        status = fields.get(b"status", b"").decode("utf-8")
    except ValueError:
        return None
    if not status:
        return None
    reliable = fields.get(_DELIVERY_FIELD) == _RELIABLE
    instances = _wire.live_instances(fields, now_ms or 0) if reliable else 1
    heartbeat_at: Optional[float] = None
    if isinstance(beat, bytes):
        try:
            heartbeat_at = float(beat)
        except ValueError:
            heartbeat_at = None
    try:
        registered_at = float(fields.get(b"registered_at", b"0"))
    except ValueError:
        registered_at = 0.0
    shared = combine_stats(stats, now) if isinstance(stats, dict) else None
    return AgentView(
        id=record["id"], status=status, capabilities=record["capabilities"],
        metadata=record["metadata"], delivery="reliable" if reliable else "pubsub",
        instances=instances, registered_at=registered_at, heartbeat_at=heartbeat_at,
        stale=beat is None or isinstance(beat, Exception), stats=shared,
    )
