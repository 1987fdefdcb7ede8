"""One run's timers: a thread that calls short functions at given times.

Periodic methods and ``call_later`` (:mod:`._schedule`), the deadlines of
request futures (:mod:`._outbox`) and handler time limits (:mod:`._handling`)
all wait here, in one heap, on one thread (``{name}-timers``) that is started
the first time something is due, so that an agent that uses none of them has
no such thread. A function called here must be quick: a periodic method is
handed to the agent's workers, and what may wait on Redis (an error reply, a
shared circuit breaker's record) to :meth:`Timers.defer`, whose own thread
(``{name}-timers-io``, also started when first needed) runs it, so that no
deadline is late because Redis is.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

log = logging.getLogger(__name__)

#: The longest the thread waits at once (a wait of threading.TIMEOUT_MAX or
#: more raises OverflowError): a call due later is waited for in steps.
MAX_WAIT = 3600.0

#: Cancelled timers left in the heap (they are skipped when due) before the
#: heap is rebuilt without them, when they are also half of it.
COMPACT_AFTER = 256


class Timer:
    """A call waiting in :class:`Timers`; :meth:`cancel` it to have it not made."""

    __slots__ = ("due", "fn", "cancelled", "_timers")

    def __init__(self, due: float, fn: Callable[[], None], timers: "Timers") -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False
        self._timers: Optional[Timers] = timers

    def cancel(self) -> None:
        """Do not make the call (it may already be under way); safe to repeat."""
        timers = self._timers
        if timers is not None and not self.cancelled:
            timers._cancelled(self)


class Timers:
    """Calls functions at given ``time.monotonic()`` times, in one daemon thread.

    Args:
        thread_name: The thread's name (``mas-agent[{id}]-timers``).
        label: Who owns them, for the log.
    """

    def __init__(self, thread_name: str, label: str) -> None:
        self._thread_name = thread_name
        self._label = label
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: List[Tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._dead = 0  # cancelled timers still in the heap
        self._closed = False
        self.thread: Optional[threading.Thread] = None
        # When the thread looks at the heap next: a call due sooner wakes it,
        # any other waits (a handler's limit, pushed for each message, mostly does).
        self._wake_at = float("-inf")
        self._deferred: Deque[Callable[[], None]] = deque()
        self._io_wake = threading.Condition(self._lock)
        self.io_thread: Optional[threading.Thread] = None

    def call_at(self, due: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn()`` in the timers' thread at ``due`` (``time.monotonic()``).

        Once the timers are closed, the call is not made (the timer returned
        is cancelled).
        """
        timer = Timer(due, fn, self)
        with self._lock:
            if self._closed:
                timer.cancelled = True
                timer._timers = None
                return timer
            heapq.heappush(self._heap, (due, next(self._order), timer))
            if self.thread is None:
                self._start_locked()
            elif due < self._wake_at:
                self._wake_at = due
                self._wake.notify()
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn()`` in ``delay`` seconds (see :meth:`call_at`)."""
        return self.call_at(time.monotonic() + delay, fn)

    def defer(self, fn: Callable[[], None]) -> bool:
        """Call ``fn()`` soon, in the order deferred, in a thread where it may wait on Redis.

        Once the timers are closed, what was deferred before still runs (the
        thread ends after it); what is deferred after is dropped.

        Returns:
            False when ``fn`` was dropped (the timers are closed).
        """
        with self._lock:
            if self._closed:
                return False
            self._deferred.append(fn)
            if self.io_thread is None:
                thread = threading.Thread(
                    target=self._run_deferred, name=f"{self._thread_name}-io", daemon=True
                )
                thread.start()
                self.io_thread = thread
            else:
                self._io_wake.notify()
            return True

    def close(self) -> None:
        """Make no more calls: those waiting are dropped; the threads exit (see :meth:`join`)."""
        with self._lock:
            self._closed = True
            for _, _, timer in self._heap:
                timer.cancelled = True
                timer._timers = None
            self._heap.clear()
            self._dead = 0
            self._wake.notify_all()
            self._io_wake.notify_all()

    def join(self, deadline: float) -> List[threading.Thread]:
        """Wait for the threads (after :meth:`close`) until ``deadline``; those still alive."""
        alive = []
        for thread in self.threads():
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                alive.append(thread)
        return alive

    def threads(self) -> List[threading.Thread]:
        """The threads started so far."""
        return [t for t in (self.thread, self.io_thread) if t is not None]

    def __len__(self) -> int:
        """Calls waiting (cancelled ones not counted)."""
        with self._lock:
            return len(self._heap) - self._dead

    # -- internals -------------------------------------------------------------

    def _cancelled(self, timer: Timer) -> None:
        with self._lock:
            if timer.cancelled or timer._timers is None:
                return  # cancelled already, or made (or being made) meanwhile
            timer.cancelled = True
            timer._timers = None
            self._dead += 1
            heap = self._heap
            if self._dead > COMPACT_AFTER and self._dead * 2 > len(heap):
                self._heap = [item for item in heap if not item[2].cancelled]
                heapq.heapify(self._heap)
                self._dead = 0

    def _start_locked(self) -> None:
        thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        thread.start()
        self.thread = thread

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                heap = self._heap
                if not heap:
                    self._wake_at = float("inf")
                    self._wake.wait()
                    self._wake_at = float("-inf")
                    continue
                due, _, timer = heap[0]
                if timer.cancelled:
                    heapq.heappop(heap)
                    self._dead -= 1
                    continue
                delay = due - time.monotonic()
                if delay > 0:
                    self._wake_at = due
                    self._wake.wait(min(delay, MAX_WAIT))
                    self._wake_at = float("-inf")
                    continue
                heapq.heappop(heap)
                timer._timers = None  # made: a cancel() now changes nothing
                self._lock.release()
                try:
                    timer.fn()
                except BaseException:  # noqa: B902 - the clock must survive its calls
                    log.exception("%s: a timer's call failed", self._label)
                finally:
                    self._lock.acquire()

    def _run_deferred(self) -> None:
        with self._lock:
            while True:
                while not self._deferred and not self._closed:
                    self._io_wake.wait()
                if not self._deferred:
                    return  # closed, and nothing left
                fn = self._deferred.popleft()
                self._lock.release()
                try:
                    fn()
                except BaseException:  # noqa: B902 - as in _run
                    log.exception("%s: a deferred call failed", self._label)
                finally:
                    self._lock.acquire()
