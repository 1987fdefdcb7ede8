"""An agent's statistics: its counters, and the sequence numbers that tell what it missed.

Pub/sub delivers at most once: what is published while a subscriber is
disconnected is gone. Each mas_sync sender stamps its messages to one target
with ``seq`` (1, 2, 3, ...) and ``sender_run`` (an id of that run of the
sender), extra fields that async peers ignore. A receiver that sees ``seq``
jump knows how many messages it missed.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Set, Tuple, Union


@dataclass(frozen=True)
class AgentStats:
    """Counters of one agent since it was created.

    Attributes:
        received: Messages read from the agent's channel.
        handled: Messages whose ``on_message`` returned.
        handler_errors: Messages whose ``on_message`` raised.
        invalid: Messages dropped because they were not valid agent messages
            (not JSON, wrong shape or types, or larger than
            ``max_message_bytes``).
        dropped_overflow: Messages dropped because ``max_pending`` messages
            were already waiting for a worker.
        dropped_on_stop: Messages still queued when ``stop()`` gave up waiting.
        rejected: Messages a typed handler refused: the payload did not
            validate into its model.
        replies_dropped: Replies that matched no waiting request: late (after
            the request timed out), or not from the agent that was asked.
        missed: Messages from mas_sync senders that never arrived, told by
            gaps in their sequence numbers (pub/sub drops what is published
            while a subscriber is disconnected).
        disconnects: Times the listener lost its connection (or found it
            dead: no answer to PING).
        reconnects: Times the listener resubscribed after losing Redis.
        listener_restarts: Times the listener failed for another reason
            (Redis refused to subscribe, an unexpected error) and was
            started again.
        skipped_registrations: Registrations that ``discover()`` skipped,
            summed over calls, because they could not be read (fields that
            are not strict JSON of the right shape or not UTF-8, an ``id``
            that does not name its key); each such key is also logged once
            per run.
        retried: Reliable delivery: attempts of a message after its handler
            raised (each attempt after the first).
        dead_lettered: Reliable delivery: messages moved to the dead-letter
            stream (attempts used up, or not readable).
        reclaimed: Reliable delivery: entries taken from the pending list of
            another consumer (an instance that crashed or stopped, or hangs)
            after ``visibility_timeout``.
        duplicates: Messages not handled because they were already: within
            ``dedupe_window``, or taken by another instance of a reliable
            agent (what peers publish reaches every instance).
        refused_unsigned: Messages refused because they were not signed
            (``require_signed``).
        refused_bad_signature: Messages refused because their signature did
            not verify: tampered with, or signed by a key the agent does not
            hold.
        refused_stale: Messages refused because their signature's time was
            outside ``signature_window`` of Redis' clock.
        refused_replayed: Messages refused because their nonce had been seen.
        refused_not_allowed: Messages refused because their sender is not
            accepted (``accept_from``, ``accept_capabilities``), or their
            key may not sign for it.
        refused_rate_limited: Messages refused because their sender went
            beyond ``rate_limit``.
        breaker_opened: Times a request of this agent opened a circuit
            breaker (see ``breaker_failures``): its last failure, or a failed
            trial.
        breaker_rejected: Requests that failed at once with
            ``CircuitOpenError`` (nothing sent).
        handler_timeouts: Handler calls still running past their time limit
            (``handler_timeout``, or a typed handler's ``timeout``).
        scheduled_runs: Runs of ``@periodic`` methods and ``call_later``
            calls that returned.
        scheduled_errors: Runs of ``@periodic`` methods and ``call_later``
            calls that raised.
        handler_seconds: Seconds spent in handlers (``on_message`` and typed
            handlers), summed over every call, whether it returned or raised.
    """

    received: int = 0
    handled: int = 0
    handler_errors: int = 0
    invalid: int = 0
    dropped_overflow: int = 0
    dropped_on_stop: int = 0
    rejected: int = 0
    replies_dropped: int = 0
    missed: int = 0
    disconnects: int = 0
    reconnects: int = 0
    listener_restarts: int = 0
    skipped_registrations: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    duplicates: int = 0
    refused_unsigned: int = 0
    refused_bad_signature: int = 0
    refused_stale: int = 0
    refused_replayed: int = 0
    refused_not_allowed: int = 0
    refused_rate_limited: int = 0
    breaker_opened: int = 0
    breaker_rejected: int = 0
    handler_timeouts: int = 0
    scheduled_runs: int = 0
    scheduled_errors: int = 0
    handler_seconds: float = 0.0

    @property
    def refused(self) -> int:
        """Messages refused, for any reason (the sum of the ``refused_*`` counters)."""
        return (self.refused_unsigned + self.refused_bad_signature + self.refused_stale
                + self.refused_replayed + self.refused_not_allowed + self.refused_rate_limited)


#: The upper bounds (seconds) of the buckets of :class:`Timing`: from 100 µs,
#: where a handler that does little lands, to 10 s.
TIMING_BOUNDS: Tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: What :class:`Counters` times: handler calls, and requests until their reply.
TIMINGS = ("handler", "request")


@dataclass(frozen=True)
class Timing:
    """A histogram of durations: how many fell at or below each bound of :data:`TIMING_BOUNDS`.

    Attributes:
        counts: Per bound, the durations at or below it and above the bound
            before (not cumulative); one more at the end for those above the
            last bound.
        total: The sum of the durations, in seconds.
    """

    counts: Tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """How many durations were recorded."""
        return sum(self.counts)


class Counters:
    """The live counters behind :class:`AgentStats`, and its timings. Thread-safe, and fork-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, Any] = dict.fromkeys(AgentStats.__dataclass_fields__, 0)
        self._values["handler_seconds"] = 0.0
        self._timings: Dict[str, List[Any]] = {
            name: [[0] * (len(TIMING_BOUNDS) + 1), 0.0] for name in TIMINGS
        }
        _locked.add(self)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def time(self, name: str, seconds: float) -> None:
        """Record one duration of ``name`` (one of :data:`TIMINGS`)."""
        bucket = bisect.bisect_left(TIMING_BOUNDS, seconds)
        with self._lock:
            counts, _ = timing = self._timings[name]
            counts[bucket] += 1
            timing[1] += seconds
            if name == "handler":
                self._values["handler_seconds"] += seconds

    def snapshot(self) -> AgentStats:
        with self._lock:
            return AgentStats(**self._values)

    def timings(self) -> Dict[str, Timing]:
        """Each of :data:`TIMINGS`, as recorded so far."""
        with self._lock:
            return {
                name: Timing(tuple(counts), total)
                for name, (counts, total) in self._timings.items()
            }


#: Senders (runs) remembered per receiver; the oldest are forgotten first.
MAX_STREAMS = 10_000
#: Missing numbers remembered per sender, in case they arrive late (messages
#: sent by several threads of one sender may overtake each other).
MAX_MISSING = 1024


class Numbering:
    """Hands out the next sequence number per target. Thread-safe, and fork-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: Dict[str, int] = {}
        _locked.add(self)

    def next(self, target_id: str) -> int:
        with self._lock:
            n = self._next.get(target_id, 0) + 1
            self._next[target_id] = n
            return n


class GapTracker:
    """Counts the messages a receiver never got, from the senders' numbers.

    Numbers that arrive out of order (overtaken, not lost) are taken back off
    the count when they arrive. Thread-safe, and fork-safe: in a child
    process the lock is new, even if a thread of the parent held it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: "OrderedDict[Tuple[str, str], Tuple[int, Set[int]]]" = OrderedDict()
        self._given_up = 0  # missing numbers no longer remembered
        _locked.add(self)

    def observe(self, sender_id: str, sender_run: str, seq: int) -> None:
        """Record that message ``seq`` of ``sender_run`` of ``sender_id`` arrived."""
        key = (sender_id, sender_run)
        with self._lock:
            entry = self._streams.get(key)
            if entry is None:
                # First message seen from this run: what came before it is not
                # counted (this receiver may simply have started later).
                self._streams[key] = (seq, set())
                if len(self._streams) > MAX_STREAMS:
                    _, (_, missing) = self._streams.popitem(last=False)
                    self._given_up += len(missing)
                return
            self._streams.move_to_end(key)
            highest, missing = entry
            if seq > highest:
                gap = seq - highest - 1
                if gap:
                    room = MAX_MISSING - len(missing)
                    if gap > room:
                        self._given_up += gap - max(room, 0)
                        missing.update(range(seq - max(room, 0), seq))
                    else:
                        missing.update(range(highest + 1, seq))
                self._streams[key] = (seq, missing)
            else:
                missing.discard(seq)

    @property
    def missed(self) -> int:
        """Messages missed so far (late arrivals not counted)."""
        with self._lock:
            return self._given_up + sum(len(m) for _, m in self._streams.values())


#: Every Counters, Numbering and GapTracker of the process, for the after-fork handler.
_locked: "weakref.WeakSet[Union[Counters, Numbering, GapTracker]]" = weakref.WeakSet()


def renew_locks_after_fork() -> None:
    """Make every Counters', Numbering's and GapTracker's lock anew, in a child after ``fork()``."""
    # Runs in the child, which has only the thread that called fork(): a lock
    # that another thread of the parent held (the listener counting a message)
    # would stay held for ever. The numbers themselves are kept.
    for instance in list(_locked):
        instance._lock = threading.Lock()

