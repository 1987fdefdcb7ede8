"""Concurrent sends of one run, coalesced into pipelines (a group commit).

Threads that send at once do not each wait for a round trip of their own:
the first becomes the *leader* and sends what every thread queued meanwhile
in one pipeline, while the others wait for its answer. A thread's call still
returns only once Redis accepted its own entry, and an error reaches the
callers whose entries it concerns: a lost connection fails the whole
pipeline, a command Redis refused fails only the call it belongs to.

After its pipeline the leader hands the lead to the thread of the oldest
entry still queued and returns: no caller serves the others for longer than
one round trip. Entries are made under the queue's lock, in the order they
are queued, so numbers that an entry takes (a message's sequence number)
reach Redis in the order they were given.
"""

from __future__ import annotations

import copy
import threading
from typing import Callable, Generic, List, Optional, Sequence, TypeVar

E = TypeVar("E")

#: Sends the entries in one go; returns, per entry, None or the error that
#: fails it alone. Raises for a failure of them all.
Flush = Callable[[Sequence[E]], Sequence[Optional[BaseException]]]


class _Slot(Generic[E]):
    """One caller's entry, and how it is woken."""

    __slots__ = ("entry", "error", "done", "armed", "leads", "wake")

    def __init__(self, entry: E) -> None:
        self.entry = entry
        self.error: Optional[BaseException] = None
        self.done = False
        self.armed = False  # its thread waits on ``wake`` (guarded by the queue's lock)
        self.leads = False  # its thread holds the lead (guarded by the queue's lock)
        self.wake: Optional["threading.Lock"] = None


class Coalescer(Generic[E]):
    """Queues the entries of concurrent callers and sends them together. Thread-safe.

    An exception that cuts a caller off anywhere (``KeyboardInterrupt`` in
    the main thread, even while it waits for the queue's lock) leaves the
    others served: the lead it held is handed on, and the callers of a
    pipeline it sent are settled.

    Args:
        flush: Sends a list of entries in one go, as :data:`Flush` says. It
            is called on the leader's thread, never twice at once.
        interrupted: The error of the other callers when the leader's
            ``flush`` is cut off by an exception that is not an ``Exception``
            (``KeyboardInterrupt`` in the main thread): their entries may or
            may not have been sent.
    """

    def __init__(
        self, flush: Flush[E], interrupted: Callable[[BaseException], BaseException]
    ) -> None:
        self._flush = flush
        self._interrupted = interrupted
        self._lock = threading.Lock()
        self._queue: List[_Slot[E]] = []
        self._leading = False  # a thread is sending a pipeline

    def submit(self, make: Callable[[], E]) -> E:
        """Queue the entry that ``make()`` returns, and return it once sent.

        ``make`` runs under the queue's lock: entries go out in the order
        they were made. What it raises propagates, and nothing is queued.

        Raises:
            What ``flush`` raised, or returned for this entry.
        """
        slot: Optional[_Slot[E]] = None
        try:
            with self._lock:
                slot = _Slot(make())
                self._queue.append(slot)
                if not self._leading:
                    self._leading = slot.leads = True
            if not slot.leads:
                self._wait(slot)
            if slot.leads:
                self._lead(slot)
        except BaseException:
            if slot is not None:
                self._abandon(slot)
            raise
        error = slot.error
        if error is not None:
            raise error
        return slot.entry

    def _wait(self, slot: _Slot[E]) -> None:
        """Wait until ``slot`` is sent, or its thread is to lead (``slot.leads``)."""
        wake = slot.wake = threading.Lock()
        wake.acquire()
        while True:
            with self._lock:
                if slot.done:
                    return
                if not self._leading:
                    # Handed the lead (or it fell free): ``slot`` is still queued.
                    self._leading = slot.leads = True
                    return
                slot.armed = True
            wake.acquire()

    def _abandon(self, slot: _Slot[E]) -> None:
        """A caller was cut off: its entry, if still queued, stays; the lead goes on if free."""
        with self._lock:
            slot.armed = False
            if slot.leads:
                slot.leads = False
                self._leading = False
            if not self._leading:
                self._hand_on()

    def _lead(self, own: _Slot[E]) -> None:
        """Send what is queued (``own`` entry among it) in one go; settle each; hand the lead on."""
        slots: List[_Slot[E]] = []
        errors: Sequence[Optional[BaseException]] = ()
        failure: Optional[BaseException] = None
        try:
            with self._lock:
                slots, self._queue = self._queue, []
            errors = self._flush([slot.entry for slot in slots])
        except BaseException as exc:  # noqa: B902 - every waiting caller must hear of it
            failure = exc
        try:
            self._settle(slots, own, errors, failure)
        except BaseException:
            # Cut off (most likely while waiting for the lock): settle what is left.
            self._settle(slots, own, errors, failure)
            raise
        if not own.done:  # cut off before it took the queue: ``own`` is still in it
            assert failure is not None
            raise failure

    def _settle(
        self,
        slots: List[_Slot[E]],
        own: _Slot[E],
        errors: Sequence[Optional[BaseException]],
        failure: Optional[BaseException],
    ) -> None:
        """Give each caller of a pipeline its outcome, and hand the lead on (once: repeatable)."""
        with self._lock:
            for n, slot in enumerate(slots):
                if slot.done:
                    continue
                if failure is None:
                    slot.error = errors[n]
                elif slot is own:
                    slot.error = failure
                elif isinstance(failure, Exception):
                    slot.error = _own_copy(failure)
                else:
                    slot.error = self._interrupted(failure)
                slot.done = True
                self._wake(slot)
            if own.leads:
                own.leads = False
                self._leading = False
                self._hand_on()

    def _hand_on(self) -> None:
        """Wake the oldest queued caller that waits, to lead (under the queue's lock).

        One that does not wait yet leads by itself as it looks; one that
        gave up waiting (interrupted) leaves its entry to the next leader.
        """
        for slot in self._queue:
            if slot.armed:
                self._wake(slot)
                return

    @staticmethod
    def _wake(slot: _Slot[E]) -> None:
        """Wake ``slot``'s thread if it waits (under the queue's lock)."""
        if slot.armed:
            slot.armed = False
            assert slot.wake is not None
            slot.wake.release()


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for another caller to raise (one exception, one traceback)."""
    try:
        mine = copy.copy(error)
    except Exception:  # pragma: no cover - an exception that cannot be copied
        return error
    mine.__cause__ = error.__cause__
    return mine
