"""Clean stops on SIGTERM and SIGINT: :func:`stop_on_signals`.

Python's default for SIGTERM ends the process at once: no ``finally`` clause,
no ``with`` block's exit and no ``atexit`` function runs, so agents do not
deregister (their registrations stay in Redis until their heartbeats expire).
:func:`stop_on_signals` makes the first SIGTERM or SIGINT a clean stop and a
second one an immediate exit, as ``python -m mas_sync.service``,
``python -m mas_sync demo`` and Django's ``manage.py runagents`` do.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Iterable, Optional

__all__ = ["SignalStop", "stop_on_signals"]

log = logging.getLogger(__name__)

#: Exit status of a second signal, which exits without a clean stop.
FORCED_EXIT_STATUS = 1


class SignalStop:
    """The handlers :func:`stop_on_signals` installed, and the event they set.

    Use it as a context manager to put the previous handlers back at the end
    of a block. Its methods run in the calling thread; the handlers run in
    the main thread, between two Python instructions.

    Attributes:
        signum: The first signal received, or None.
    """

    def __init__(self, signals: Iterable[int], exit_process: bool) -> None:
        self.signum: Optional[int] = None
        self._event = threading.Event()
        self._exit_process = exit_process
        self._previous: Dict[int, Any] = {}
        try:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except BaseException:
            self.restore()
            raise

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the first signal (or ``timeout`` seconds); True once it came."""
        return self._event.wait(timeout)

    def is_set(self) -> bool:
        """True once a signal came."""
        return self._event.is_set()

    def restore(self) -> None:
        """Put back the handlers that were installed before; call it from the main thread."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def __enter__(self) -> "SignalStop":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        # Runs in the main thread, between two of its Python instructions.
        name = signal.Signals(signum).name
        if self._event.is_set():
            log.warning("%s received again: exiting at once, without a clean stop", name)
            os._exit(FORCED_EXIT_STATUS)
        self.signum = signum
        self._event.set()
        log.info("%s received: stopping cleanly (send it again to exit at once)", name)
        if self._exit_process:
            raise SystemExit(0)


def stop_on_signals(
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), *, exit_process: bool = True
) -> SignalStop:
    """Make the first SIGTERM or SIGINT stop the agents cleanly, and a second exit at once.

    Call it from the main thread, early (a signal that comes before is
    handled the default way). On the first signal:

    - with ``exit_process=True`` (the default, for scripts), the handler
      raises ``SystemExit(0)`` in the main thread, wherever it is: ``with``
      blocks and ``finally`` clauses run, and at interpreter exit mas_sync
      stops every agent still running (each deregisters);
    - with ``exit_process=False`` (for a program that waits for the signal
      itself, as ``python -m mas_sync.service`` does), the handler only sets
      the event: wait with :meth:`SignalStop.wait`, then stop the agents.

    A second signal exits at once with status 1, skipping the clean stop.

    Args:
        signals: The signals to handle.
        exit_process: Whether the first signal raises ``SystemExit``.

    Returns:
        The installed handlers and their event; ``restore()`` puts back the
        previous handlers.

    Raises:
        ValueError: not called from the main thread, or no signal given.
        TypeError: ``signals`` is not an iterable of signal numbers.
    """
    if isinstance(signals, (str, bytes)) or not hasattr(signals, "__iter__"):
        raise TypeError(f"signals must be signal numbers, not {signals!r}")
    chosen = [signal.Signals(sig) for sig in signals]
    if not chosen:
        raise ValueError("signals must name at least one signal")
    if not isinstance(exit_process, bool):
        raise TypeError(f"exit_process must be a bool, not {exit_process!r}")
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("stop_on_signals() must be called from the main thread")
    return SignalStop(chosen, exit_process)
