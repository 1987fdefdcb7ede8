"""Work an agent does on a clock: ``@periodic`` methods and ``call_later``.

The run's timers (:mod:`._timers`) say when; the agent's workers do the work,
as they handle messages, so that a slow run occupies a worker and never the
timers' thread. A periodic method is scheduled again only once its run has
returned: two runs of one method never overlap, and a run that overruns its
period delays the next one instead.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set, Tuple, TypeVar

from ._checks import check_seconds
from ._stats import Counters
from ._timers import Timer, Timers

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__mas_periodic__"


@dataclass(frozen=True)
class PeriodicSpec:
    """One periodic method of an agent class (see :func:`periodic`)."""

    method: str
    seconds: float
    initial_delay: float
    jitter: float


def periodic(
    seconds: float, *, initial_delay: Optional[float] = None, jitter: float = 0.0
) -> Callable[[F], F]:
    """Call the decorated method every ``seconds`` while the agent runs.

    The method takes no argument but ``self``. It runs in one of the agent's
    worker threads, like a handler, from the end of :meth:`~mas_sync.Agent.on_start`
    until :meth:`~mas_sync.Agent.stop`, which stops the schedule, waits for a
    run under way (within its ``timeout``) and only then calls ``on_stop()``.

    Runs keep to a fixed grid: the n-th is due ``initial_delay + n * seconds``
    after the start, however long each took, so the schedule does not drift.
    Two runs of one method never overlap: a run still going when the next is
    due delays it until it returns (the runs missed meanwhile are made once,
    not in a burst), and the grid goes on from there. A run that raises is
    logged, counted in ``stats.scheduled_errors`` and passed to
    ``on_error(None, error)``; the schedule goes on.

    Args:
        seconds: The period.
        initial_delay: Seconds from the start to the first run; None (the
            default) waits one period, as ``threading.Timer`` and most
            schedulers do; ``0`` runs it at once.
        jitter: Up to this many seconds (at most ``seconds``) are added, at
            random, to each run's time, so that many agents started together
            do not all run at once. The grid itself does not move.

    Example::

        class Reporter(Agent):
            @periodic(5.0, jitter=0.5)
            def report(self) -> None:
                self.send("monitor", {"load": current_load()})

    Raises:
        ValueError: a duration that is not a number of seconds (``seconds``
            more than 0; ``initial_delay`` and ``jitter`` 0 or more), or a
            ``jitter`` beyond ``seconds``.
    """
    check_seconds("periodic seconds", seconds)
    if initial_delay is not None:
        check_seconds("initial_delay", initial_delay, zero=True)
    check_seconds("jitter", jitter, zero=True)
    if jitter > seconds:
        raise ValueError(f"jitter ({jitter}) may not exceed the period ({seconds})")

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@periodic decorates a method, not {func!r}")
        delay = float(seconds if initial_delay is None else initial_delay)
        setattr(func, _MARK, (float(seconds), delay, float(jitter)))
        return func

    return decorate


def collect_periodic(cls: type) -> Tuple[PeriodicSpec, ...]:
    """The periodic methods of ``cls`` and its bases (a subclass's override counts once)."""
    found: Dict[str, PeriodicSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            mark = getattr(attr, _MARK, None)
            if mark is not None:
                found[name] = PeriodicSpec(name, *mark)
            else:
                found.pop(name, None)  # overridden without the decorator
    return tuple(found.values())


class ScheduledCall:
    """A call of :meth:`~mas_sync.Agent.call_later`, until it is made or cancelled."""

    __slots__ = ("_lock", "_state", "_timer", "_schedule")

    def __init__(self, schedule: "Schedule") -> None:
        self._lock = threading.Lock()
        self._state = "waiting"  # -> "queued" -> "running" -> "done", or "cancelled"
        self._timer: Optional[Timer] = None
        self._schedule = schedule

    def cancel(self) -> bool:
        """Do not make the call; True unless it has already started (or was made)."""
        with self._lock:
            if self._state not in ("waiting", "queued"):
                return self._state == "cancelled"
            self._state = "cancelled"
            timer = self._timer
        if timer is not None:
            timer.cancel()
        self._schedule._forget(self)
        return True

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` (or the agent's stop) took it back in time."""
        return self._state == "cancelled"

    def done(self) -> bool:
        """True once the call returned (or raised), or was cancelled."""
        return self._state in ("done", "cancelled")

    def __repr__(self) -> str:
        return f"<ScheduledCall {self._state}>"


class Schedule:
    """The periodic methods and ``call_later`` calls of one run.

    Args:
        agent: Whose methods (and ``on_error``).
        specs: The agent class's periodic methods.
        timers: The run's timers.
        submit: Queues a job (a callable) for the workers under a key: jobs
            of one key run one at a time. Returns False once the workers are
            closed.
        counters: The agent's counters.
    """

    def __init__(
        self,
        agent: Any,
        specs: Tuple[PeriodicSpec, ...],
        timers: Timers,
        submit: Callable[[Any, Callable[[], None]], bool],
        counters: Counters,
    ) -> None:
        self.agent = agent
        self.specs = specs
        self.timers = timers
        self.submit = submit
        self.counters = counters
        self._lock = threading.Lock()
        self._stopped = False
        self._armed: Dict[str, Timer] = {}  # periodic method -> its next run's timer
        self._calls: Set[ScheduledCall] = set()

    def start(self) -> None:
        """Arm each periodic method from now (the end of ``on_start()``)."""
        now = time.monotonic()
        for spec in self.specs:
            job = _Periodic(spec, now + spec.initial_delay)
            self._arm(job, job.origin + job.jitter())

    def call_later(
        self, seconds: float, fn: Callable[..., Any], args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> ScheduledCall:
        """Call ``fn(*args, **kwargs)`` on a worker in ``seconds`` (see :meth:`Agent.call_later`)."""
        call = ScheduledCall(self)
        key = ("call_later", id(call))

        def run() -> None:
            with call._lock:
                if call._state != "queued":
                    return
                call._state = "running"
            try:
                self._call(getattr(fn, "__qualname__", repr(fn)), fn, *args, **kwargs)
            finally:
                call._state = "done"
                self._forget(call)

        def due() -> None:
            with call._lock:
                if call._state != "waiting":
                    return
                call._state = "queued"
            if not self.submit(key, run):
                with call._lock:
                    call._state = "cancelled"
                self._forget(call)

        with self._lock:
            if self._stopped:
                call._state = "cancelled"
                return call
            self._calls.add(call)
            call._timer = self.timers.call_later(seconds, due)
        return call

    def stop(self) -> None:
        """Run nothing more: cancel the armed periodic runs and the waiting calls."""
        with self._lock:
            self._stopped = True
            armed = list(self._armed.values())
            self._armed.clear()
            calls = list(self._calls)
        for timer in armed:
            timer.cancel()
        for call in calls:
            call.cancel()

    # -- internals -------------------------------------------------------------

    def _forget(self, call: ScheduledCall) -> None:
        with self._lock:
            self._calls.discard(call)

    def _arm(self, job: "_Periodic", due: float) -> None:
        with self._lock:
            if self._stopped:
                return
            self._armed[job.spec.method] = self.timers.call_at(due, lambda: self._queue(job))

    def _queue(self, job: "_Periodic") -> None:
        """Timers' thread: the run is due; a worker makes it."""
        with self._lock:
            if self._stopped:
                return
            self._armed.pop(job.spec.method, None)
        self.submit(("periodic", job.spec.method), lambda: self._run(job))

    def _run(self, job: "_Periodic") -> None:
        """Worker: one run, then the next one armed."""
        if self._stopped:
            return  # queued before the stop, not started: stays unmade
        spec = job.spec
        try:
            self._call(spec.method, getattr(self.agent, spec.method))
        finally:
            now = time.monotonic()
            following = job.slot + 1
            if job.origin + following * spec.seconds <= now:
                # Overran the next slot (or more): one run at once stands for
                # them all, and the grid goes on after it.
                job.slot = math.floor((now - job.origin) / spec.seconds)
                self._arm(job, now)
            else:
                job.slot = following
                self._arm(job, job.origin + following * spec.seconds + job.jitter())

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run scheduled work in the calling worker: errors are logged, counted, and reported."""
        agent = self.agent
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self.counters.add("scheduled_errors")
            log.exception("Agent %s: scheduled %s() failed", agent.id, what)
            try:
                agent.on_error(None, exc)
            except Exception:
                log.exception("Agent %s: on_error raised", agent.id)
        else:
            self.counters.add("scheduled_runs")


class _Periodic:
    """Where one periodic method is on its grid: run ``slot`` is due at ``origin + slot * seconds``."""

    __slots__ = ("spec", "origin", "slot")

    def __init__(self, spec: PeriodicSpec, origin: float) -> None:
        self.spec = spec
        self.origin = origin
        self.slot = 0

    def jitter(self) -> float:
        """The random delay of one run."""
        jitter = self.spec.jitter
        return random.uniform(0.0, jitter) if jitter else 0.0
