"""What one process keeps of its agents: the running ones, every after-fork reset, the exit hook."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any, List

from . import _stats
from ._redis.connection import renew_lock_after_fork
from ._redis.sentinel import forget_watchers_after_fork

log = logging.getLogger(__name__)

_running: "weakref.WeakSet[Any]" = weakref.WeakSet()
_every: "weakref.WeakSet[Any]" = weakref.WeakSet()  # every agent, for fork()


def track(agent: Any) -> None:
    """Remember a new agent, for the after-fork reset."""
    _every.add(agent)


def started(agent: Any) -> None:
    """``agent`` runs: it is stopped at exit unless stopped before."""
    _running.add(agent)


def stopped(agent: Any) -> None:
    """``agent`` no longer runs."""
    _running.discard(agent)


def running_agents() -> List[Any]:
    """The agents started, and not yet stopped, in this process."""
    return list(_running)


def _after_fork_in_child() -> None:
    # Runs in the child, which has only the thread that called fork(): a lock
    # held by another thread of the parent would stay held for ever, and no
    # thread of the parent's agents exists here.
    renew_lock_after_fork()
    forget_watchers_after_fork()
    _stats.renew_locks_after_fork()
    # An agent that was running in the parent is stopped in the child, and
    # may be started again, with counters from zero. Its connections belong
    # to the parent and are left alone.
    for agent in list(_every):
        agent._mas_lock = threading.RLock()
        if agent._mas_run is not None:
            agent._mas_run = None
            agent._mas_counters = _stats.Counters()
            agent._mas_gaps = _stats.GapTracker()
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_running_agents() -> None:
    # Deregister cleanly when the interpreter exits with agents still running.
    for agent in list(_running):
        try:
            agent.stop(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("Agent %s: stop at exit failed", agent.id)
