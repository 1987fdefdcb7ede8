"""An agent's settings, checked once, in the thread that builds the agent."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import FrozenSet, Iterable, Optional, Type, Union

from pydantic import BaseModel

from ._checks import check_seconds
from ._rates import RateLimit, as_rate_limit
from ._signing import Keyring
from ._wire import validate_agent_id, validate_capabilities

#: Bounds of the constructor's counts: beyond them, a typo rather than a plan.
MAX_WORKERS = 10_000
MAX_COUNT = 100_000_000
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # Redis's own limit for one string
#: Most deliveries of one message that ``max_attempts`` may ask for.
MAX_ATTEMPTS = 1000
#: Most consecutive failures that ``breaker_failures`` may ask for.
MAX_BREAKER_FAILURES = 1_000_000
#: The delivery modes: pub/sub (at most once) and Redis Streams (at least once).
DELIVERY_MODES = ("pubsub", "reliable")
#: Seconds between the full reads of the discovery cache, with ``discovery_cache=True``.
DEFAULT_DISCOVERY_REFRESH = 5.0


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
    keyring: Optional[Keyring] = None
    require_signed: bool = False
    signature_window: float = 300.0
    accept_from: Union[Iterable[str], FrozenSet[str], None] = None
    accept_capabilities: Union[Iterable[str], FrozenSet[str], None] = None
    breaker_failures: Optional[int] = None
    breaker_cooldown: float = 30.0
    breaker_shared: bool = False
    send_rate: Union[str, RateLimit, None] = None  # a RateLimit or None, once checked
    rate_limit: Union[str, RateLimit, None] = None  # a RateLimit or None, once checked
    discovery_cache: Union[bool, float] = False
    handler_timeout: Optional[float] = None

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
        if self.keyring is not None and not isinstance(self.keyring, Keyring):
            raise TypeError(f"keyring must be a Keyring, not {type(self.keyring).__name__}")
        if not isinstance(self.require_signed, bool):
            raise TypeError(f"require_signed must be a bool, not {self.require_signed!r}")
        if self.require_signed and self.keyring is None:
            raise ValueError("require_signed=True needs a keyring to verify signatures with")
        check_seconds("signature_window", self.signature_window)
        if self.accept_from is not None:
            if isinstance(self.accept_from, (str, bytes)):
                raise TypeError("accept_from must be a collection of agent ids, not one string")
            object.__setattr__(self, "accept_from", frozenset(
                validate_agent_id(a, "an id of accept_from") for a in _iterate(self.accept_from)
            ))
        if self.accept_capabilities is not None:
            object.__setattr__(self, "accept_capabilities", frozenset(
                validate_capabilities(self.accept_capabilities, "accept_capabilities")
            ))
        self._check_breaker()
        for name in ("send_rate", "rate_limit"):
            object.__setattr__(self, name, as_rate_limit(getattr(self, name), name))
        cache = self.discovery_cache
        if not isinstance(cache, bool):
            if not isinstance(cache, (int, float)):
                raise TypeError(f"discovery_cache must be a bool or seconds, not {cache!r}")
            check_seconds("discovery_cache", cache)
        if self.handler_timeout is not None:
            check_seconds("handler_timeout", self.handler_timeout)
            object.__setattr__(self, "handler_timeout", float(self.handler_timeout))
        for name in ("heartbeat_interval", "heartbeat_ttl", "retry_timeout",
                     "command_timeout", "probe_interval", "visibility_timeout", "retry_delay",
                     "signature_window"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def _check_breaker(self) -> None:
        """Refuse bad circuit breaker settings (TypeError, ValueError)."""
        failures = self.breaker_failures
        if failures is not None and (
            not isinstance(failures, int) or isinstance(failures, bool)
            or not 1 <= failures <= MAX_BREAKER_FAILURES
        ):
            raise ValueError(
                f"breaker_failures must be None or an int from 1 to {MAX_BREAKER_FAILURES},"
                f" not {failures!r}"
            )
        check_seconds("breaker_cooldown", self.breaker_cooldown)
        object.__setattr__(self, "breaker_cooldown", float(self.breaker_cooldown))
        if not isinstance(self.breaker_shared, bool):
            raise TypeError(f"breaker_shared must be a bool, not {self.breaker_shared!r}")
        if self.breaker_shared and failures is None:
            raise ValueError("breaker_shared needs breaker_failures (the breaker is off without)")


    @property
    def discovery_refresh(self) -> Optional[float]:
        """Seconds between the discovery cache's full reads; None without the cache."""
        cache = self.discovery_cache
        if cache is False:
            return None
        if cache is True:
            return DEFAULT_DISCOVERY_REFRESH
        return float(cache)


def _iterate(items: object) -> Iterable[object]:
    try:
        return iter(items)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"accept_from must be a collection of agent ids, not {type(items).__name__}"
        ) from None


def default_instance() -> str:
    """The instance name of a run that was given none: ``{host}-{pid}``, made id-safe."""
    host = "".join(c if c.isascii() and c.isalnum() or c in "-_." else "_"
                   for c in socket.gethostname()) or "host"
    return f"{host[:100]}-{os.getpid()}"
