"""The exceptions mas_sync raises.

Each one derives from :class:`MASError` and from the builtin that fits, so
``except ConnectionError`` or ``except RuntimeError`` work as a reader expects.
"""

from __future__ import annotations


class MASError(Exception):
    """Base class of every error raised by mas_sync."""


class AgentNotRunningError(MASError, RuntimeError):
    """The agent is not started (or already stopped) and cannot do this."""


class MASConnectionError(MASError, ConnectionError):
    """Redis could not be reached or the connection was lost."""


class StateError(MASError, ValueError):
    """State in Redis does not fit the agent's state model, or an update is invalid."""
