"""Every :class:`ProcessAgents` of this process: new locks after a fork, a stop at exit."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any

log = logging.getLogger(__name__)

# The ProcessAgents instances of this process (typed Any: their module imports this one).
_instances: "weakref.WeakSet[Any]" = weakref.WeakSet()


def track(instance: Any) -> None:
    """Count ``instance`` (a :class:`ProcessAgents`) among those the hooks below reach."""
    _instances.add(instance)


def _after_fork_in_child() -> None:
    # A lock held by a parent thread at fork time stays held in the child,
    # where that thread does not exist: make every lock anew.
    for instance in list(_instances):
        instance._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_at_exit() -> None:
    # Registered after mas_sync's own exit handler, so it runs first: the
    # agents stop with their configured timeout, the client last.
    for instance in list(_instances):
        try:
            instance.stop()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("stopping agents at exit failed")
