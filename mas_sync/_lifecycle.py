"""Who starts and who stops: start() and stop() of one agent, called from any threads at once.

The agent's lock guards its current run (``agent._mas_run``) and that run's
lifecycle flags; nothing slow happens under it. See :meth:`mas_sync.Agent.start`
and :meth:`mas_sync.Agent.stop` for the promises kept here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, List, Optional, Protocol

from . import _process
from ._errors import AgentNotRunningError, MASError
from ._handling import AgentHooks
from ._options import AgentOptions
from ._run import AgentRun
from ._stats import Counters, GapTracker

log = logging.getLogger(__name__)


class Startable(AgentHooks, Protocol):
    """What starting and stopping needs of an agent (see :class:`mas_sync.Agent`)."""

    redis_url: str
    capabilities: List[str]
    _mas_lock: Any  # a threading.RLock
    _mas_run: Optional[AgentRun]
    _mas_state: Any
    _mas_options: AgentOptions
    _mas_counters: Counters
    _mas_gaps: GapTracker

    def on_start(self) -> None: ...


def start(agent: Startable) -> AgentRun:
    """Start a new run of ``agent``, call ``on_start()``, then let the workers take messages."""
    with agent._mas_lock:
        if agent._mas_run is not None:
            raise AgentNotRunningError(f"agent {agent.id!r} is already started")
        run = agent._mas_run = AgentRun(
            agent, agent.redis_url, agent.capabilities, agent._mas_options,
            agent._mas_counters, agent._mas_gaps,
        )
    try:
        run.start()
    except BaseException as exc:
        with agent._mas_lock:
            agent._mas_run = None
            run.start_done = True
        run.started.set()
        run.stopped.set()
        if run.stopping and not isinstance(exc, MASError):
            raise AgentNotRunningError(f"agent {agent.id!r} was stopped while starting") from None
        raise
    agent._mas_state = run.state
    _process.started(agent)
    failure: Optional[BaseException] = None
    try:
        with agent._mas_lock:
            run.on_start_called = not run.stopping
        if run.on_start_called:
            agent.on_start()
    except BaseException as exc:  # noqa: B902 - the run is stopped, then it is raised
        log.error("Agent %s: on_start raised; stopping", agent.id)
        failure = exc
    with agent._mas_lock:
        run.start_done = True
        if failure is None and not run.stopping and run.pool is not None:
            run.open()
        hand_over = run.stop_by_starter
    run.started.set()
    if hand_over:  # a stop() gave up waiting for this start: it is this thread's to make
        finish_stop(agent, run, time.monotonic() + run.stop_timeout)
    elif failure is not None:
        agent.stop()
    if failure is not None:
        raise failure
    if run.stopping:
        raise AgentNotRunningError(f"agent {agent.id!r} was stopped while starting")
    log.info("Agent %s: started", agent.id)
    return run


def stop(agent: Startable, timeout: float) -> None:
    """Stop ``agent``'s run, once, whoever calls; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    with agent._mas_lock:
        run = agent._mas_run
        if run is None:
            return
        second = run.stopping
        if second:
            nested = (
                run.stopper is current
                or run.starter is current
                or run.owns_current_thread()
            )
        else:
            run.stopping = True
            run.stopper = current
            run.stop_timeout = float(timeout)
            wait_for_start = not run.start_done and run.starter is not current
    if second:
        if not nested:
            run.stopped.wait(timeout)
        return
    if wait_for_start:
        run.started.wait(timeout)
        with agent._mas_lock:
            if not run.start_done:
                run.stop_by_starter = True
                log.warning(
                    "Agent %s: start() still busy after %.1f s; it stops the agent when done",
                    agent.id, timeout,
                )
                return
    finish_stop(agent, run, deadline)


def finish_stop(agent: Startable, run: AgentRun, deadline: float) -> None:
    """Stop ``run`` in order, then forget it."""
    if run.stopped.is_set():
        return  # start() failed, and cleaned up after itself
    try:
        run.stop(deadline)
    finally:
        with agent._mas_lock:
            if agent._mas_run is run:
                agent._mas_run = None
            _process.stopped(agent)
        run.stopped.set()
    log.info("Agent %s: stopped", agent.id)
