"""Each agent's counters in Redis, for anyone to read: ``agent:{id}:stats``.

An agent writes its counters on each heartbeat into one field of that hash,
named after its instance (a reliable agent's instances each have one) or
``run`` (a pub/sub agent), as a JSON object::

    {"at": 1764130000.5,          # wall-clock time of the write (time.time())
     "since": 1764129000.1,       # when this run started
     "interval": 10.0,            # seconds between writes
     "counters": {"received": 120, "handled": 118, ...},   # AgentStats, from the run's start
     "rates": {"received": 2.0, "handled": 1.9},           # per second, since the last write
     "pending": 0, "in_progress": 1}                       # at the time of the write

So the command-line tool and the dashboard read rates without talking to the
agent's process. A clean stop removes its field; the key expires
:data:`STATS_TTL` seconds after the last write (so the last counters of an
agent that crashed stay for a while), and pruning a registration removes it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

import redis

from . import _json, _wire
from ._redis import ANY_REDIS_ERROR
from ._stats import AgentStats, Counters

log = logging.getLogger(__name__)

#: Seconds that ``agent:{id}:stats`` lives after its last write.
STATS_TTL = 24 * 3600
#: The field of a pub/sub agent's run (a reliable agent's instances use their names).
RUN_FIELD = "run"
#: The counters whose rates are written.
RATES = ("received", "handled")


class StatsWriter:
    """Writes one run's counters into ``agent:{id}:stats`` (from its heartbeat thread).

    Args:
        client: The run's Redis client.
        agent_id: Whose counters.
        instance: The instance of a reliable agent; None for a pub/sub agent.
        counters: The run's counters.
        queued: Messages waiting for a worker now.
        active: Messages being handled now.
        interval: Seconds between writes (the heartbeat's).
    """

    def __init__(
        self,
        client: redis.Redis,
        agent_id: str,
        instance: Optional[str],
        counters: Counters,
        queued: Callable[[], int],
        active: Callable[[], int],
        interval: float,
    ) -> None:
        self.client = client
        self.key = _wire.stats_key(agent_id)
        self.field = instance if instance is not None else RUN_FIELD
        self.counters = counters
        self.queued = queued
        self.active = active
        self.interval = interval
        self.since = time.time()
        self._last: Optional[AgentStats] = None
        self._last_at = time.monotonic()

    def record(self) -> Dict[str, Any]:
        """The record of now, with the rates since the previous one."""
        stats = self.counters.snapshot()
        now = time.monotonic()
        elapsed = max(now - self._last_at, 1e-6)
        last = self._last
        rates = {
            name: round((getattr(stats, name) - (getattr(last, name) if last else 0)) / elapsed, 3)
            for name in RATES
        }
        self._last, self._last_at = stats, now
        counters = {name: getattr(stats, name) for name in AgentStats.__dataclass_fields__}
        counters["handler_seconds"] = round(stats.handler_seconds, 6)
        return {
            "at": time.time(),
            "since": self.since,
            "interval": self.interval,
            "counters": counters,
            "rates": rates,
            "pending": self.queued(),
            "in_progress": self.active(),
        }

    def write(self) -> None:
        """Write the record of now (raises what the client raises)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, self.field, json.dumps(self.record(), separators=(",", ":")))
        pipe.expire(self.key, STATS_TTL)
        pipe.execute()

    def remove(self, client: redis.Redis) -> None:
        """Remove this run's field (at a clean stop); a failure is logged."""
        try:
            client.hdel(self.key, self.field)
        except ANY_REDIS_ERROR as exc:  # a cluster's own errors included
            log.debug("could not remove %s %s: %s", self.key, self.field, exc)


@dataclass(frozen=True)
class SharedStats:
    """An agent's counters as read from Redis, summed over its runs (instances).

    Attributes:
        counters: Each counter of :class:`~mas_sync.AgentStats`, summed over
            the records (counted from each run's start).
        rates: Messages per second ``received`` and ``handled``, over the
            fresh records only.
        pending: Messages waiting for a worker, over the fresh records.
        in_progress: Messages being handled, over the fresh records.
        at: The time of the newest record (wall clock), or None if none.
        runs: How many records there are; ``fresh`` of them were written
            within three of their intervals.
        fresh: See ``runs``.
    """

    counters: Dict[str, float] = field(default_factory=dict)
    rates: Dict[str, float] = field(default_factory=dict)
    pending: int = 0
    in_progress: int = 0
    at: Optional[float] = None
    runs: int = 0
    fresh: int = 0

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict of these figures."""
        return {
            "counters": dict(self.counters), "rates": dict(self.rates),
            "pending": self.pending, "in_progress": self.in_progress,
            "at": self.at, "runs": self.runs, "fresh": self.fresh,
        }


def read_stats(client: redis.Redis, agent_id: str, now: Optional[float] = None) -> Optional[SharedStats]:
    """The counters of ``agent_id`` from ``agent:{id}:stats``; None when it has none.

    Records that do not parse are skipped (they are data from the outside).
    """
    raw = client.hgetall(_wire.stats_key(agent_id))
    return combine_stats(raw, time.time() if now is None else now)


def combine_stats(raw: Mapping[Any, Any], now: float) -> Optional[SharedStats]:
    """Sum the records of one ``agent:{id}:stats`` hash (as HGETALL gives it)."""
    counters: Dict[str, float] = {}
    rates: Dict[str, float] = dict.fromkeys(RATES, 0.0)
    pending = in_progress = runs = fresh = 0
    newest: Optional[float] = None
    for value in raw.values():
        record = _parse(value)
        if record is None:
            continue
        runs += 1
        for name, number in record["counters"].items():
            counters[name] = counters.get(name, 0) + number
        at = record["at"]
        newest = at if newest is None else max(newest, at)
        if now - at <= 3 * record["interval"]:
            fresh += 1
            pending += record["pending"]
            in_progress += record["in_progress"]
            for name in RATES:
                rates[name] += record["rates"].get(name, 0.0)
    if runs == 0:
        return None
    return SharedStats(counters, rates, pending, in_progress, newest, runs, fresh)


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _parse(value: Any) -> Optional[Dict[str, Any]]:
    """One record, checked; None when it is not one."""
    try:
        record = _json.loads_strict(value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    counters, rates = record.get("counters"), record.get("rates", {})
    if not (isinstance(counters, dict) and isinstance(rates, dict)):
        return None
    if not all(_number(record.get(name)) for name in ("at", "interval", "pending", "in_progress")):
        return None
    record["counters"] = {k: v for k, v in counters.items() if isinstance(k, str) and _number(v)}
    record["rates"] = {k: v for k, v in rates.items() if isinstance(k, str) and _number(v)}
    return record
