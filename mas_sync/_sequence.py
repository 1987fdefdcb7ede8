"""Per-sender sequence numbers: what a receiver missed while pub/sub dropped it.

Pub/sub delivers at most once: what is published while a subscriber is
disconnected is gone. Each mas_sync sender stamps its messages to one target
with ``seq`` (1, 2, 3, ...) and ``sender_run`` (an id of that run of the
sender), extra fields that async peers ignore. A receiver that sees ``seq``
jump knows how many messages it missed.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Dict, Set, Tuple, Union

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


#: Every Numbering and GapTracker of the process, for the after-fork handler.
_locked: "weakref.WeakSet[Union[Numbering, GapTracker]]" = weakref.WeakSet()


def _renew_locks_after_fork() -> None:
    # Runs in the child, which has only the thread that called fork(): a lock
    # that another thread of the parent held (the listener counting a message)
    # would stay held for ever. The numbers themselves are kept.
    for instance in list(_locked):
        instance._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_after_fork)
