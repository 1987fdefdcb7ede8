"""mas_sync: blocking, thread-based multi-agent systems on Redis.

Agents talk peer to peer over Redis pub/sub (or, opted in, Redis Streams with
at-least-once delivery), register with heartbeats, keep
their state in Redis and find each other by capability, on the same keys,
channels and messages as the async MAS framework.
"""

import logging

from ._acl import acl_rules, service_acl_rules
from ._agent import Agent, AgentStats
from ._dead_letters import DeadLetter, DeadLetters
from ._errors import (
    AgentIdInUseError,
    AgentNotRunningError,
    CannotReplyError,
    CircuitOpenError,
    MASConnectionError,
    MASError,
    RedisCommandError,
    RequestError,
    RequestTimeout,
    StateError,
)
from ._futures import GatherResult
from ._handlers import handler
from ._message import AgentMessage
from ._rates import RateLimit
from ._registry import AgentRegistry
from ._schedule import ScheduledCall, periodic
from ._service import MASService
from ._signing import Keyring, SigningKey
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
    "CircuitOpenError",
    "DeadLetter",
    "DeadLetters",
    "GatherResult",
    "Keyring",
    "MASConnectionError",
    "MASError",
    "MASService",
    "RateLimit",
    "RedisCommandError",
    "RequestError",
    "RequestTimeout",
    "ScheduledCall",
    "SigningKey",
    "StateError",
    "StateManager",
    "__version__",
    "acl_rules",
    "handler",
    "periodic",
    "service_acl_rules",
    "stop_on_signals",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
