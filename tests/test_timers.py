"""The run's clock (mas_sync._timers): calls at their time, cancels, deferred work."""

from __future__ import annotations

import threading
import time
from typing import List

from mas_sync._timers import Timers


def test_calls_are_made_in_time_order_and_cancelled_ones_are_not() -> None:
    timers = Timers("mas-test-timers", "test")
    made: List[str] = []
    done = threading.Event()
    now = time.monotonic()
    timers.call_at(now + 0.06, lambda: (made.append("c"), done.set()))
    timers.call_at(now + 0.02, lambda: made.append("a"))
    cancelled = timers.call_at(now + 0.04, lambda: made.append("b"))
    cancelled.cancel()
    assert len(timers) == 2
    assert done.wait(5)
    assert made == ["a", "c"]
    assert len(timers) == 0
    timers.close()
    assert timers.join(time.monotonic() + 5) == []


def test_a_cancel_that_comes_as_the_call_is_made_changes_no_count() -> None:
    timers = Timers("mas-test-timers", "test")
    entered, release = threading.Event(), threading.Event()
    timer = timers.call_later(0, lambda: (entered.set(), release.wait(5)))
    assert entered.wait(5)
    # What a cancel() that read the timer just before it was taken does next.
    timers._cancelled(timer)
    release.set()
    assert len(timers) == 0
    timers.close()
    assert timers.join(time.monotonic() + 5) == []


def test_deferred_work_does_not_make_a_timer_late() -> None:
    timers = Timers("mas-test-timers", "test")
    slow_started, fired = threading.Event(), threading.Event()
    release = threading.Event()
    timers.defer(lambda: (slow_started.set(), release.wait(5)))  # waits, as on a slow Redis
    assert slow_started.wait(5)
    began = time.monotonic()
    timers.call_later(0.05, fired.set)
    assert fired.wait(5)
    took = time.monotonic() - began
    release.set()
    assert took < 0.05 + 0.2
    order: List[int] = []
    for n in range(3):
        timers.defer(lambda n=n: order.append(n))
    timers.close()  # what was deferred before still runs
    assert timers.join(time.monotonic() + 5) == []
    assert order == [0, 1, 2]
    assert {t.name for t in timers.threads()} == {"mas-test-timers", "mas-test-timers-io"}


def test_many_cancelled_timers_do_not_pile_up() -> None:
    timers = Timers("mas-test-timers", "test")
    far = [timers.call_later(3600, lambda: None) for _ in range(2000)]
    for timer in far[:1500]:
        timer.cancel()
    assert len(timers) == 500
    assert len(timers._heap) < 1000  # rebuilt without most of the cancelled ones
    timers.close()
    assert timers.join(time.monotonic() + 5) == []


def _exit(code: int) -> None:
    raise SystemExit(code)


def test_a_call_far_ahead_and_a_call_that_raises_leave_the_clock_running() -> None:
    """A due time beyond what a wait takes (threading.TIMEOUT_MAX), and a call
    ending in a BaseException (a future's done-callback calling sys.exit()),
    used to end the thread: no later call was made."""
    timers = Timers("mas-test-timers", "test")
    fired = threading.Event()
    far = timers.call_later(threading.TIMEOUT_MAX * 2, fired.set)
    timers.call_later(0, lambda: _exit(3))
    timers.defer(lambda: _exit(4))
    deferred = threading.Event()
    timers.defer(deferred.set)
    timers.call_later(0.05, fired.set)
    assert fired.wait(5) and deferred.wait(5)
    assert timers.thread is not None and timers.thread.is_alive()
    assert len(timers) == 1 and not far.cancelled
    timers.close()
    assert timers.join(time.monotonic() + 5) == []
