"""A bounded pool of daemon worker threads that keeps per-key order.

Items with the same key (the sender of a message) run one at a time, in the
order they were submitted; items with different keys run in parallel on up to
``max_workers`` threads. Keys take turns, one item per turn, so one chatty
sender cannot starve the others.

Unlike ``concurrent.futures.ThreadPoolExecutor``, the workers are daemon
threads that the interpreter does not join at exit, so a handler that never
returns cannot hang the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Set

log = logging.getLogger(__name__)


class OrderedPool:
    """Runs ``handler(item)`` on daemon threads named ``{name}-worker-{n}``.

    Workers are started lazily, when work is waiting and none is idle, and
    only after :meth:`open`; items submitted before that wait in the queue.

    Args:
        name: Prefix of the worker thread names.
        handler: Called with each item in a worker thread. It should not
            raise; if it does, the error is logged and the worker goes on.
        max_workers: Upper bound on worker threads.
        max_pending: Upper bound on items waiting for a worker; :meth:`submit`
            refuses items beyond it.
    """

    def __init__(
        self, name: str, handler: Callable[[Any], None], max_workers: int, max_pending: int
    ) -> None:
        self._name = name
        self._handler = handler
        self._max_workers = max_workers
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here
        self._quiet = threading.Condition(self._lock)  # drain() waits here
        self._boxes: Dict[Any, Deque[Any]] = {}
        self._ready: Deque[Any] = deque()  # keys with items and no worker on them
        self._scheduled: Set[Any] = set()  # keys in _ready or being worked on
        self._pending = 0  # items queued, bounded or not
        self._extra = 0  # of them, those not bounded
        self._active = 0
        self._idle = 0
        self._open = False
        self._closed = False
        self._threads: List[threading.Thread] = []
        self._worker_idents: Set[int] = set()

    def submit(self, key: Any, item: Any, bounded: bool = True) -> bool:
        """Queue ``item`` behind earlier items of ``key``.

        Args:
            bounded: False neither counts it against ``max_pending`` nor
                refuses it (work the caller bounds itself, such as the agent's
                periodic runs); it still takes its turn for a worker.

        Returns:
            False, and queues nothing, when the pool is closed or (``bounded``)
            ``max_pending`` bounded items are already waiting.
        """
        with self._lock:
            if self._closed or (bounded and self._pending - self._extra >= self._max_pending):
                return False
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = deque()
            if bounded:
                box.append(item)
            else:
                box.append(_Unbounded(item))
                self._extra += 1
            self._pending += 1
            if key not in self._scheduled:
                self._scheduled.add(key)
                self._ready.append(key)
                self._wake_locked()
            elif not self._threads:
                self._wake_locked()  # no worker could be started so far: try again
            return True

    def open(self) -> None:
        """Let workers start and run what was queued so far."""
        with self._lock:
            self._open = True
            for _ in range(min(len(self._ready), self._max_workers)):
                self._wake_locked()

    @property
    def pending(self) -> int:
        """Items waiting for a worker, those queued with ``bounded=False`` not counted."""
        return self._pending - self._extra

    @property
    def active(self) -> int:
        """Items being handled now."""
        return self._active

    def in_worker(self) -> bool:
        """True when called from one of this pool's worker threads."""
        return threading.get_ident() in self._worker_idents

    def drain(self, timeout: float) -> bool:
        """Wait until every queued item has been handled, at most ``timeout`` s.

        Called from a worker, it does not wait for that worker's own item.

        Returns:
            True when the pool went quiet in time.
        """
        own = 1 if self.in_worker() else 0
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._open:
                return self._pending == 0
            while self._pending or self._active > own:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._quiet.wait(remaining)
            return True

    def close(self) -> int:
        """Refuse new items, drop those still queued, and let workers exit.

        Returns:
            The number of queued items dropped (those queued with
            ``bounded=False`` not counted).
        """
        with self._lock:
            self._closed = True
            dropped = self._pending - self._extra
            self._boxes.clear()
            self._ready.clear()
            self._scheduled.clear()
            self._pending = 0
            self._extra = 0
            self._work.notify_all()
            self._quiet.notify_all()
            return dropped

    def join(self, deadline: float) -> List[threading.Thread]:
        """Join the workers (all but the calling one) until ``deadline``.

        Returns:
            The worker threads still alive, other than the calling one.
        """
        current = threading.current_thread()
        with self._lock:
            threads = list(self._threads)
        alive = []
        for thread in threads:
            if thread is current:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                alive.append(thread)
        return alive

    def threads(self) -> List[threading.Thread]:
        """The worker threads started so far."""
        with self._lock:
            return list(self._threads)

    # -- internals -----------------------------------------------------------

    def _wake_locked(self) -> None:
        if not self._open:
            return
        if self._idle >= len(self._ready) or len(self._threads) >= self._max_workers:
            self._work.notify()
        else:
            thread = threading.Thread(
                target=self._run,
                name=f"{self._name}-worker-{len(self._threads) + 1}",
                daemon=True,
            )
            self._idle += 1  # counted idle until it takes its first item
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": out of threads
                self._idle -= 1
                log.error(
                    "%s: cannot start a worker (%s); %d items wait for one",
                    self._name, exc, self._pending,
                )
                if self._threads:
                    self._work.notify()  # a running worker takes the work
                return
            self._threads.append(thread)

    def _run(self) -> None:
        self._worker_idents.add(threading.get_ident())
        self._lock.acquire()
        try:
            self._idle -= 1
            while True:
                while not self._ready and not self._closed:
                    self._idle += 1
                    self._work.wait()
                    self._idle -= 1
                if self._closed:
                    return
                key = self._ready.popleft()
                box = self._boxes[key]
                item = box.popleft()
                self._pending -= 1
                if item.__class__ is _Unbounded:
                    self._extra -= 1
                    item = item.item
                self._active += 1
                self._lock.release()
                try:
                    self._handler(item)
                except BaseException:  # noqa: B902 - a worker must survive its handler
                    log.exception("%s: handler raised", self._name)
                finally:
                    self._lock.acquire()
                    self._active -= 1
                    if self._closed:
                        pass
                    elif box:
                        self._ready.append(key)  # this worker takes its turn next
                    else:
                        del self._boxes[key]
                        self._scheduled.discard(key)
                    if not self._pending:
                        self._quiet.notify_all()
        finally:
            self._worker_idents.discard(threading.get_ident())
            self._lock.release()



class _Unbounded:
    """An item queued with ``bounded=False``."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item
