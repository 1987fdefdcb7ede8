"""The Redis calls of an agent's public methods: the retry policy, and no call cut off by a stop."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from ._errors import AgentNotRunningError, MASConnectionError, MASError, RedisCommandError
from ._redis import ANY_REDIS_ERROR, REDIS_ERRORS
from ._redis import NotConnected, deadlines, redact_text, redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")


class CallGate:
    """Runs one run's Redis operations for public calls, and closes behind the last one.

    Thread-safe: any thread may call :meth:`run` at once; :meth:`close`
    refuses new calls and waits (with a bound) for those in flight, so that
    a stop closes no connection under a call.

    Args:
        agent_id: Whose calls, for messages.
        url: The Redis URL (shown with its password hidden).
        retry_timeout: Seconds for which a connection that cannot be made is
            tried again.
        command_timeout: Seconds to wait for one answer (and for the first
            attempt to connect).
    """

    def __init__(
        self, agent_id: str, url: str, retry_timeout: float, command_timeout: float
    ) -> None:
        self.agent_id = agent_id
        self.url = url
        self.retry_timeout = retry_timeout
        self.command_timeout = command_timeout
        self._calls = threading.Condition(threading.Lock())
        self._in_flight = 0
        self.closed = False
        self._closing = threading.Event()

    def run(self, func: Callable[..., T], *args: Any, deadline: Optional[float] = None) -> T:
        """Run a Redis operation for a public call; every failure comes out as a MASError.

        Only a connection that could not be made (nothing was sent) is tried
        again, with capped exponential backoff, for ``retry_timeout`` seconds
        (or until ``deadline``); the first attempt may take
        ``command_timeout`` to connect, however short that window. A command
        that may have run is never sent twice. The answer is waited for at
        most ``command_timeout`` (or until ``deadline``).

        Raises:
            AgentNotRunningError: the agent stopped (before or during the call).
            MASConnectionError: no connection in the retry window; or the
                connection failed or timed out once the command was sent (it
                may have run).
            RedisCommandError: Redis refused the command.
        """
        with self._calls:
            if self.closed:
                raise self.not_running()
            self._in_flight += 1
        try:
            return self._attempts(func, args, deadline)
        finally:
            with self._calls:
                self._in_flight -= 1
                if not self._in_flight:
                    self._calls.notify_all()

    def _attempts(self, func: Callable[..., T], args: Any, deadline: Optional[float]) -> T:
        began = time.monotonic()
        connect_by = began + self.retry_timeout
        # The first attempt may take a whole command timeout to connect,
        # however short the retry window (retry_timeout=0: one attempt).
        first_by = max(connect_by, began + self.command_timeout)
        if deadline is not None:
            connect_by = min(connect_by, deadline)
            first_by = min(first_by, deadline)
        delay = 0.05
        attempt_by = first_by
        while True:
            try:
                with deadlines(attempt_by, deadline):
                    return func(*args)
            except NotConnected as exc:
                if self.closed:
                    raise self.not_running() from exc
                attempt_by = connect_by
                left = connect_by - time.monotonic()
                if left <= 0:
                    raise MASConnectionError(
                        f"agent {self.agent_id!r}: cannot reach Redis at"
                        f" {redact_url(self.url)}: {redact_text(str(exc), self.url)}"
                    ) from exc
                self._closing.wait(min(delay, left))
                delay = min(delay * 2, 1.0)
            except MASError:
                raise
            except REDIS_ERRORS as exc:
                if self.closed:
                    raise self.not_running() from exc
                raise MASConnectionError(
                    f"agent {self.agent_id!r}: Redis at {redact_url(self.url)} failed"
                    f" after the command was sent (it may have run, and is not sent"
                    f" again): {redact_text(str(exc), self.url)}"
                ) from exc
            except ANY_REDIS_ERROR as exc:
                raise self.refused(exc) from exc
            except Exception as exc:
                if self.closed:  # a connection closed under the call by stop()
                    raise self.not_running() from exc
                raise

    def refused(self, error: BaseException) -> RedisCommandError:
        """The error of a call whose command Redis refused with ``error``."""
        refusal = RedisCommandError(
            f"agent {self.agent_id!r}: Redis at {redact_url(self.url)} refused"
            f" the command: {redact_text(str(error), self.url)}"
        )
        refusal.__cause__ = error
        return refusal

    def not_running(self) -> AgentNotRunningError:
        """The error of a call made after (or cut off by) the stop."""
        return AgentNotRunningError(f"agent {self.agent_id!r} is not started")

    def close(self, deadline: float) -> None:
        """Refuse new calls, and let those in flight end (until ``deadline``)."""
        with self._calls:
            self.closed = True
            self._closing.set()
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "Agent %s: closing the connections under %d call(s) still running",
                        self.agent_id, self._in_flight,
                    )
                    break
                self._calls.wait(left)
