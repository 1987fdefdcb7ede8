"""Work on a clock: @periodic methods and call_later(), against a real redis-server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, List, Optional, Tuple

import pytest

from mas_sync import Agent, AgentMessage, AgentNotRunningError, periodic
from mas_sync.testing import wait_until

from .conftest import mas_threads


class Ticker(Agent):
    """Records each run of its periodic method: (start, end, thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.runs: List[Tuple[float, float, str]] = []
        self.running = 0
        self.overlapped = False
        self.events: List[str] = []

    def record(self, work: float = 0.0) -> None:
        with self.lock:
            self.running += 1
            self.overlapped |= self.running > 1
        began = time.monotonic()
        if work:
            time.sleep(work)
        with self.lock:
            self.running -= 1
            self.runs.append((began, time.monotonic(), threading.current_thread().name))

    def starts(self) -> List[float]:
        with self.lock:
            return [began for began, _, _ in self.runs]

    def on_start(self) -> None:
        self.events.append("on_start")

    def on_stop(self) -> None:
        with self.lock:
            self.events.append(f"on_stop, {self.running} running, {len(self.runs)} runs")


def test_a_periodic_method_runs_on_a_worker_on_a_grid_that_does_not_drift(make_agent: Any) -> None:
    class Steady(Ticker):
        @periodic(0.05, initial_delay=0)
        def tick(self) -> None:
            self.record(0.01)  # each run takes a fifth of the period

    agent = make_agent("steady", Steady)
    wait_until(lambda: len(agent.starts()) >= 12, 5, message="12 runs")
    starts = agent.starts()
    assert all(name.startswith("mas-agent[steady]-worker-") for _, _, name in agent.runs)
    # The n-th run starts at first + n * period, not at the previous end + period:
    # after 11 periods (and 11 runs of 10 ms each), no more than one tick's lag.
    lags = [began - (starts[0] + n * 0.05) for n, began in enumerate(starts[:12])]
    assert max(abs(lag) for lag in lags) < 0.03, lags
    assert agent.stats.scheduled_runs >= 12


def test_a_slow_run_delays_the_next_instead_of_overlapping_it(make_agent: Any) -> None:
    class Slow(Ticker):
        @periodic(0.02, initial_delay=0)
        def tick(self) -> None:
            self.record(0.07)  # overruns three periods

    agent = make_agent("slow", Slow, max_workers=4)
    wait_until(lambda: len(agent.starts()) >= 5, 5, message="5 runs")
    agent.stop()
    assert not agent.overlapped
    runs = sorted(agent.runs)
    for (_, ended, _), (began, _, _) in zip(runs, runs[1:]):
        # The missed periods make one run, at once: no burst, no waiting for the grid.
        assert 0 <= began - ended < 0.03


def test_a_periodic_method_that_raises_keeps_its_schedule(make_agent: Any, caplog: Any) -> None:
    errors: List[Tuple[Optional[AgentMessage], Exception]] = []

    class Failing(Ticker):
        @periodic(0.03, initial_delay=0)
        def tick(self) -> None:
            self.record()
            if len(self.runs) % 2:
                raise RuntimeError(f"run {len(self.runs)} failed")

        def on_error(self, message: Optional[AgentMessage], error: Exception) -> None:
            errors.append((message, error))

    with caplog.at_level(logging.ERROR, logger="mas_sync"):
        agent = make_agent("failing", Failing)
        wait_until(lambda: len(agent.starts()) >= 6, 5, message="6 runs, half of them failed")
        agent.stop()
    runs = len(agent.runs)
    assert agent.stats.scheduled_errors == (runs + 1) // 2
    assert agent.stats.scheduled_runs == runs // 2
    assert [str(error) for _, error in errors] == [f"run {n} failed" for n in range(1, runs + 1, 2)]
    assert all(message is None for message, _ in errors)
    assert "scheduled tick() failed" in caplog.text and "run 1 failed" in caplog.text
    starts = agent.starts()
    assert max(b - a for a, b in zip(starts, starts[1:])) < 0.03 + 0.03  # no gap after a failure


def test_periodic_work_starts_after_on_start_and_stops_before_on_stop(make_agent: Any) -> None:
    class Ordered(Ticker):
        def on_start(self) -> None:
            time.sleep(0.1)  # a run due meanwhile waits for on_start
            super().on_start()

        @periodic(0.01, initial_delay=0)
        def tick(self) -> None:
            with self.lock:
                self.events.append("tick")
            self.record(0.02)

    agent = make_agent("ordered", Ordered)
    wait_until(lambda: len(agent.runs) >= 3, 5, message="3 runs")
    agent.stop()
    assert agent.events[0] == "on_start"
    # on_stop found no run under way; none started after it.
    assert agent.events[-1] == f"on_stop, 0 running, {len(agent.runs)} runs"
    assert not [t for t in mas_threads() if t.name.startswith("mas-agent[ordered]")
                and t.is_alive() and "worker" not in t.name]


def test_stop_during_a_slow_periodic_run_keeps_to_its_timeout(make_agent: Any) -> None:
    release = threading.Event()

    class Stuck(Ticker):
        @periodic(0.01, initial_delay=0)
        def tick(self) -> None:
            self.record()
            release.wait(10)  # far longer than the stop's timeout

    agent = make_agent("stuck", Stuck)
    wait_until(lambda: agent.runs, 5, message="a run under way")
    began = time.monotonic()
    agent.stop(timeout=0.5)
    took = time.monotonic() - began
    release.set()
    assert took < 0.5 + 0.5, f"stop took {took:.2f} s"
    assert not agent.is_running
    assert len(agent.runs) == 1
    assert agent.events[-1].startswith("on_stop, ")


def test_initial_delay_and_jitter(make_agent: Any) -> None:
    class Delayed(Ticker):
        @periodic(0.05, initial_delay=0.15, jitter=0.02)
        def tick(self) -> None:
            self.record()

    began = time.monotonic()
    agent = make_agent("delayed", Delayed)
    wait_until(lambda: len(agent.starts()) >= 4, 5, message="4 runs")
    starts = agent.starts()
    assert starts[0] - began >= 0.15
    # Each run is 0 to 20 ms after its slot (the first one's too); the slots are 50 ms apart.
    for n, began_at in enumerate(starts[:4]):
        assert -0.025 < began_at - (starts[0] + n * 0.05) < 0.02 + 0.01


def test_periodic_methods_of_a_base_class_and_an_override_without_the_decorator(
    make_agent: Any,
) -> None:
    class Base(Ticker):
        @periodic(0.02, initial_delay=0)
        def tick(self) -> None:
            self.record()

        @periodic(0.02, initial_delay=0)
        def tock(self) -> None:
            with self.lock:
                self.events.append("tock")

    class Child(Base):
        def tock(self) -> None:  # no longer periodic
            raise AssertionError("tock ran")

    agent = make_agent("child", Child)
    wait_until(lambda: len(agent.runs) >= 3, 5, message="3 runs of the inherited tick")
    assert "tock" not in agent.events
    assert agent.stats.scheduled_errors == 0


def test_an_agent_without_work_on_a_clock_has_no_timers_thread(make_agent: Any) -> None:
    agent = make_agent("plain")
    agent.send("plain", {"n": 1})
    assert not [t.name for t in mas_threads() if t.name == "mas-agent[plain]-timers"]


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((0,), {}, "periodic seconds must be a number of seconds, more than 0"),
        ((float("nan"),), {}, "periodic seconds must be"),
        (("1",), {}, "periodic seconds must be"),
        ((1,), {"initial_delay": -1}, "initial_delay must be a number of seconds, 0 or more"),
        ((1,), {"jitter": 2}, "jitter (2) may not exceed the period (1)"),
    ],
)
def test_periodic_refuses_bad_durations(args: Any, kwargs: Any, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        periodic(*args, **kwargs)
    assert error in str(caught.value)


# --- call_later ---------------------------------------------------------------


def test_call_later_runs_once_on_a_worker_and_can_be_cancelled(make_agent: Any) -> None:
    agent = make_agent("later")
    ran: List[Tuple[str, Any]] = []
    done = threading.Event()

    def note(value: Any, *, key: str) -> None:
        ran.append((threading.current_thread().name, (value, key)))
        done.set()

    began = time.monotonic()
    call = agent.call_later(0.05, note, 1, key="a")
    cancelled = agent.call_later(0.05, note, 2, key="b")
    assert cancelled.cancel() is True
    assert cancelled.cancelled and cancelled.done()
    assert done.wait(5)
    assert time.monotonic() - began >= 0.05
    wait_until(call.done, 5, message="the call done")
    assert ran == [("mas-agent[later]-worker-1", (1, "a"))]
    assert call.cancel() is False and not call.cancelled
    assert agent.stats.scheduled_runs == 1


def test_stop_cancels_the_calls_not_yet_made(make_agent: Any) -> None:
    agent = make_agent("stopper")
    ran = threading.Event()
    calls = [agent.call_later(0.3, ran.set) for _ in range(3)]
    agent.stop()
    assert all(call.cancelled for call in calls)
    assert not ran.wait(0.5)


def test_a_failing_call_later_goes_to_on_error(make_agent: Any) -> None:
    errors: List[Tuple[Optional[AgentMessage], Exception]] = []
    told = threading.Event()

    class Watcher(Agent):
        def on_error(self, message: Optional[AgentMessage], error: Exception) -> None:
            errors.append((message, error))
            told.set()

    agent = make_agent("watcher", Watcher)

    def boom() -> None:
        raise ValueError("boom")

    agent.call_later(0, boom)
    assert told.wait(5)
    assert errors[0][0] is None and str(errors[0][1]) == "boom"
    assert agent.stats.scheduled_errors == 1


def test_call_later_refuses_bad_input_and_a_stopped_agent(make_agent: Any) -> None:
    agent = make_agent("picky")
    with pytest.raises(TypeError, match="call_later\\(\\) takes a callable"):
        agent.call_later(1, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds must be a number of seconds, 0 or more"):
        agent.call_later(-1, print)
    agent.stop()
    with pytest.raises(AgentNotRunningError):
        agent.call_later(1, print)


def test_a_run_queued_behind_a_busy_worker_does_not_start_once_stop_began(
    make_agent: Any,
) -> None:
    entered, release = threading.Event(), threading.Event()

    class Busy(Ticker):
        def on_message(self, message: AgentMessage) -> None:
            entered.set()
            release.wait(10)

        @periodic(0.05, initial_delay=0.05)
        def tick(self) -> None:
            self.record()

    agent = make_agent("busy", Busy, max_workers=1)
    make_agent("sender").send("busy", {})
    assert entered.wait(5)
    run = agent._mas_run
    # Its timer went off: the run is queued for the only worker, which is busy.
    wait_until(lambda: len(run.timers) == 0, 5, message="the periodic run queued")
    stopper = threading.Thread(target=agent.stop, kwargs={"timeout": 5})
    stopper.start()
    wait_until(lambda: run.schedule._stopped, 5, message="the schedule stopped")
    release.set()
    stopper.join(10)
    assert agent.runs == []
    assert agent.events[-1] == "on_stop, 0 running, 0 runs"


def test_no_periodic_run_starts_once_stop_began_even_while_the_reader_ends(
    make_agent: Any,
) -> None:
    class Reliable(Ticker):
        @periodic(0.005, initial_delay=0)
        def tick(self) -> None:
            self.record()

    agent = make_agent("steady-reliable", Reliable, delivery="reliable")
    wait_until(lambda: len(agent.runs) >= 3, 5, message="3 runs")
    began = time.monotonic()
    agent.stop()
    assert [start for start in agent.starts() if start > began] == []


def test_scheduled_work_does_not_take_the_room_of_messages(make_agent: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    class Narrow(Agent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.got: List[Any] = []

        def on_message(self, message: AgentMessage) -> None:
            self.got.append(message.payload)
            entered.set()
            release.wait(10)

    agent = make_agent("narrow", Narrow, max_workers=1, max_pending=1)
    sender = make_agent("sender")
    sender.send("narrow", {"n": 1})
    assert entered.wait(5)  # the only worker is busy
    ran = []
    calls = [agent.call_later(0, ran.append, n) for n in range(3)]
    run = agent._mas_run
    wait_until(lambda: len(run.timers) == 0, 5, message="the calls queued")
    sender.send("narrow", {"n": 2})  # the one place in the queue is still free for it
    wait_until(lambda: agent.stats.received == 2, 5, message="the second message read")
    release.set()
    wait_until(lambda: all(call.done() for call in calls), 5, message="the calls made")
    wait_until(lambda: len(agent.got) == 2, 5, message="both messages handled")
    assert agent.stats.dropped_overflow == 0
    assert sorted(ran) == [0, 1, 2]
