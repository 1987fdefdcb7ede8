"""mas_sync: blocking, thread-based multi-agent systems on Redis.

Agents talk peer to peer over Redis pub/sub (or, opted in, Redis Streams with
at-least-once delivery), register with heartbeats, keep
their state in Redis and find each other by capability, on the same keys,
channels and messages as the async MAS framework.
"""

import logging

from ._agent import Agent, AgentStats
from ._dead_letters import DeadLetter, DeadLetters
from ._errors import (
    AgentIdInUseError,
    AgentNotRunningError,
    CannotReplyError,
    MASConnectionError,
    MASError,
    RedisCommandError,
    RequestError,
    RequestTimeout,
    StateError,
)
from ._handlers import handler
from ._message import AgentMessage
from ._rates import RateLimit
from ._registry import AgentRegistry
from ._service import MASService
from ._state import StateManager
from .signals import stop_on_signals

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentIdInUseError",
    "AgentMessage",
    "AgentNotRunningError",
    "AgentRegistry",
    "AgentStats",
    "CannotReplyError",
    "DeadLetter",
    "DeadLetters",
    "MASConnectionError",
    "MASError",
    "MASService",
    "RateLimit",
    "RedisCommandError",
    "RequestError",
    "RequestTimeout",
    "StateError",
    "StateManager",
    "__version__",
    "handler",
    "stop_on_signals",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
