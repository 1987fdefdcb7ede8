"""An agent's settings, checked once, in the thread that builds the agent."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional, Type, Union

from pydantic import BaseModel

from ._checks import check_seconds
from ._rates import RateLimit, as_rate_limit
from ._wire import validate_agent_id

#: Bounds of the constructor's counts: beyond them, a typo rather than a plan.
MAX_WORKERS = 10_000
MAX_COUNT = 100_000_000
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # Redis's own limit for one string
#: Most deliveries of one message that ``max_attempts`` may ask for.
MAX_ATTEMPTS = 1000
#: The delivery modes: pub/sub (at most once) and Redis Streams (at least once).
DELIVERY_MODES = ("pubsub", "reliable")


@dataclass(frozen=True)
class AgentOptions:
    """The keyword settings of :class:`~mas_sync.Agent`, as its docstring describes them."""

    state_model: Optional[Type[BaseModel]] = None
    heartbeat_interval: float = 30.0
    heartbeat_ttl: float = 60.0
    max_workers: int = 8
    max_pending: int = 1000
    max_message_bytes: int = 1024 * 1024
    retry_timeout: float = 5.0
    command_timeout: float = 5.0
    probe_interval: float = 5.0
    take_over: bool = False
    delivery: str = "pubsub"
    instance: Optional[str] = None
    max_attempts: int = 5
    visibility_timeout: float = 30.0
    retry_delay: float = 1.0
    dedupe_window: Optional[float] = None
    stream_maxlen: int = 10_000
    send_rate: Union[str, RateLimit, None] = None  # a RateLimit or None, once checked
    rate_limit: Union[str, RateLimit, None] = None  # a RateLimit or None, once checked

    def __post_init__(self) -> None:
        """Refuse a bad setting, named in the message (TypeError, ValueError)."""
        state_model = self.state_model
        if state_model is not None and not (
            isinstance(state_model, type) and issubclass(state_model, BaseModel)
        ):
            raise TypeError(f"state_model must be a pydantic BaseModel class, not {state_model!r}")
        check_seconds("heartbeat_interval", self.heartbeat_interval)
        check_seconds("probe_interval", self.probe_interval)
        check_seconds("retry_timeout", self.retry_timeout, zero=True)
        check_seconds("command_timeout", self.command_timeout)
        check_seconds("heartbeat_ttl", self.heartbeat_ttl)
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_ttl ({self.heartbeat_ttl}) must be longer than heartbeat_interval"
                f" ({self.heartbeat_interval}), or the agent would flicker out of discovery"
            )
        for name, value, most in (
            ("max_workers", self.max_workers, MAX_WORKERS),
            ("max_pending", self.max_pending, MAX_COUNT),
            ("max_message_bytes", self.max_message_bytes, MAX_MESSAGE_BYTES),
            ("stream_maxlen", self.stream_maxlen, MAX_COUNT),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"{name} must be an int from 1 to {most}, not {value!r}")
        if not isinstance(self.take_over, bool):
            raise TypeError(f"take_over must be a bool, not {self.take_over!r}")
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be 'pubsub' or 'reliable', not {self.delivery!r}")
        if self.instance is None:
            object.__setattr__(self, "instance", default_instance())
        else:
            validate_agent_id(self.instance, "instance")
        max_attempts = self.max_attempts
        if (not isinstance(max_attempts, int) or isinstance(max_attempts, bool)
                or not 1 <= max_attempts <= MAX_ATTEMPTS):
            raise ValueError(
                f"max_attempts must be an int from 1 to {MAX_ATTEMPTS}, not {max_attempts!r}"
            )
        check_seconds("visibility_timeout", self.visibility_timeout)
        check_seconds("retry_delay", self.retry_delay, zero=True)
        if self.dedupe_window is not None:
            check_seconds("dedupe_window", self.dedupe_window)
            object.__setattr__(self, "dedupe_window", float(self.dedupe_window))
        for name in ("send_rate", "rate_limit"):
            object.__setattr__(self, name, as_rate_limit(getattr(self, name), name))
        for name in ("heartbeat_interval", "heartbeat_ttl", "retry_timeout",
                     "command_timeout", "probe_interval", "visibility_timeout", "retry_delay"):
            object.__setattr__(self, name, float(getattr(self, name)))


def default_instance() -> str:
    """The instance name of a run that was given none: ``{host}-{pid}``, made id-safe."""
    host = "".join(c if c.isascii() and c.isalnum() or c in "-_." else "_"
                   for c in socket.gethostname()) or "host"
    return f"{host[:100]}-{os.getpid()}"
