"""The exceptions mas_sync raises.

Each one derives from :class:`MASError` and from the builtin that fits, so
``except ConnectionError`` or ``except RuntimeError`` work as a reader expects.
"""

from __future__ import annotations

from typing import Any, List, Optional


class MASError(Exception):
    """Base class of every error raised by mas_sync."""


class AgentNotRunningError(MASError, RuntimeError):
    """The agent is not started (or already stopped) and cannot do this."""


class CannotReplyError(MASError, RuntimeError):
    """This message cannot be replied to: it is no request, or no agent received this copy."""


class AgentIdInUseError(MASError, RuntimeError):
    """The agent id has a live registration held by another run; nothing was written.

    Attributes:
        agent_id: The id asked for.
        expires_in: Seconds until the other run's heartbeat key expires unless
            it is renewed (None when Redis did not say).
    """

    def __init__(self, message: str, *, agent_id: str, expires_in: Optional[float]) -> None:
        super().__init__(message)
        self.agent_id = agent_id
        self.expires_in = expires_in


class MASConnectionError(MASError, ConnectionError):
    """Redis could not be reached or the connection was lost."""


class RedisCommandError(MASError, RuntimeError):
    """Redis refused a command: out of memory (``maxmemory``), no permission (ACL), ....

    The redis-py error is the ``__cause__``. Nothing was changed by the
    refused command.
    """


class StateError(MASError, ValueError):
    """State in Redis does not fit the agent's state model, or an update is invalid."""


class RequestTimeout(MASError, TimeoutError):
    """No reply to a request arrived in time."""


class RequestError(MASError, RuntimeError):
    """The agent asked answered with an error instead of a result.

    Attributes:
        reply: The error reply.
        kind: ``"validation_error"`` when a typed handler refused the payload,
            ``"handler_error"`` when the handler raised (for a reliable agent:
            at its last attempt), ``"dead_letter"`` when a reliable agent gave
            the request up unhandled (delivered ``max_attempts`` times).
        details: For validation errors, pydantic's list of errors.
    """

    def __init__(self, message: str, *, reply: Any, kind: str, details: List[Any]) -> None:
        super().__init__(message)
        self.reply = reply
        self.kind = kind
        self.details = details


class CircuitOpenError(MASError, RuntimeError):
    """The circuit breaker of a request's target is open: the request was not sent.

    Attributes:
        target: The agent asked.
        failures: The consecutive failed requests that opened the breaker.
        retry_after: Seconds until a trial request may be let through: the
            cool-down left or, while another call's trial is under way, the
            most that trial may still take.
    """

    def __init__(self, message: str, *, target: str, failures: int, retry_after: float) -> None:
        super().__init__(message)
        self.target = target
        self.failures = failures
        self.retry_after = retry_after


class ListenError(MASError, OSError):
    """A server of mas_sync (the dashboard) cannot listen on its address: a port in use, a bad host."""
