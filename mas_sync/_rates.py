"""Rate limits: :class:`RateLimit`, a receiver's :class:`RateLimiter`, a sender's :class:`Throttle`.

Both sides use GCRA (the generic cell rate algorithm): one number per sender
(or target), the time at which its next message is on time, moved one
interval on by each message let through. The receiver keeps it in Redis, on
Redis's clock, so that every instance of an agent applies one limit; the
sender keeps it in memory, on ``time.monotonic()``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import redis

from . import _wire
from ._redis import ANY_REDIS_ERROR
from ._scripts import load_script

log = logging.getLogger(__name__)

#: Fastest rate a limit may name, per second: beyond it, a typo rather than a plan
#: (and below the microsecond that the receiver's clock counts in).
MAX_RATE = 1_000_000.0
#: Slowest rate a limit may name, per second: one message a day.
MIN_RATE = 1.0 / 86_400
#: Largest burst a limit may allow.
MAX_BURST = 1_000_000

#: The units of ``RateLimit.parse()``, in seconds. ``m`` (a minute or a
#: millisecond?) is refused rather than guessed.
_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86_400.0, "day": 86_400.0, "days": 86_400.0,
}
_RATE_TEXT = re.compile(
    r"\s*(?P<count>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:/|\s+per\s+)\s*(?P<unit>[A-Za-z]+)\s*\Z"
)
_FORMS = "'<number>/<unit>' or '<number> per <unit>', units s, min, h, day (say '100/s')"


@dataclass(frozen=True, init=False)
class RateLimit:
    """A rate of messages per second, and a burst: how many may come at once.

    Over any span of ``t`` seconds, at most ``burst + rate * t`` messages
    pass; a sender that kept quiet has the whole burst again.

    Build one from numbers, ``RateLimit(100)`` (a burst of one second's
    worth, at least 1) or ``RateLimit(100, burst=20)``, or from text with
    :meth:`parse`: ``RateLimit.parse("6000/min")``.

    Args:
        rate: Messages per second: more than 0, from one a day
            (:data:`MIN_RATE`) to :data:`MAX_RATE`.
        burst: Messages that may arrive at once, from 1 to
            :data:`MAX_BURST`; None for one second's worth of ``rate``
            (rounded down, at least 1).

    Raises:
        TypeError: ``rate`` is not a number (a string: use :meth:`parse`), or
            ``burst`` not an int.
        ValueError: ``rate`` or ``burst`` out of range, NaN or infinite.
    """

    rate: float
    burst: int = field(default=1)

    def __init__(self, rate: float, burst: Optional[int] = None) -> None:
        if isinstance(rate, str):
            raise TypeError(
                f"rate must be a number; for text such as {rate!r} use RateLimit.parse()"
            )
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            raise TypeError(f"rate must be a number of messages per second, not {rate!r}")
        rate = float(rate)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(
                f"rate must be more than 0 messages per second, and finite, not {rate!r}"
            )
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(
                f"rate must be from one message a day to {MAX_RATE:.0f} a second, not {rate!r}/s"
            )
        if burst is None:
            burst = max(1, int(rate))
        elif not isinstance(burst, int) or isinstance(burst, bool):
            raise TypeError(f"burst must be an int (messages), not {burst!r}")
        elif not 1 <= burst <= MAX_BURST:
            raise ValueError(f"burst must be from 1 to {MAX_BURST}, not {burst!r}")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "burst", burst)

    @classmethod
    def parse(cls, text: str, burst: Optional[int] = None) -> "RateLimit":
        """The limit that ``text`` names: ``"100/s"``, ``"6000/min"``, ``"10 per hour"``.

        Units: ``s`` (``sec``, ``second``), ``min`` (``minute``), ``h``
        (``hr``, ``hour``), ``day`` (``d``), plurals too, any case.

        Args:
            text: A positive decimal number, ``/`` or ``per``, a unit.
            burst: As for the constructor.

        Raises:
            TypeError: ``text`` is not a str, or ``burst`` not an int.
            ValueError: ``text`` is not a rate in that form, or out of range.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"a rate limit must be a str such as '100/s', not {type(text).__name__}"
            )
        match = _RATE_TEXT.match(text)
        if not match:
            raise ValueError(f"rate limit {text!r} is not a rate: write {_FORMS}")
        unit = match.group("unit").lower()
        seconds = _UNITS.get(unit)
        if seconds is None:
            hint = " ('m' is ambiguous: write 'min' for a minute)" if unit == "m" else ""
            raise ValueError(
                f"rate limit {text!r} has an unknown unit {unit!r}{hint}: write {_FORMS}"
            )
        try:
            return cls(float(match.group("count")) / seconds, burst)
        except ValueError as exc:
            raise ValueError(f"rate limit {text!r}: {exc}") from None

    @property
    def interval(self) -> float:
        """Seconds between two messages at the rate (``1 / rate``)."""
        return 1.0 / self.rate

    def __str__(self) -> str:
        return f"{self.rate:g}/s, burst {self.burst}"

    def __repr__(self) -> str:
        return f"RateLimit(rate={self.rate!r}, burst={self.burst!r})"


RateLimitLike = Union[str, RateLimit]


def as_rate_limit(value: object, name: str) -> Optional[RateLimit]:
    """``value`` (None, a :class:`RateLimit` or its text) as a RateLimit, for option ``name``.

    Raises:
        TypeError: ``value`` is none of those.
        ValueError: text that :meth:`RateLimit.parse` refuses.
    """
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        try:
            return RateLimit.parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    raise TypeError(
        f"{name} must be a rate such as '100/s' or a RateLimit (RateLimit(100, burst=20)),"
        f" or None, not {value!r}"
    )


# -- the receiver: one limit on Redis, for every instance --------------------------


class RateLimiter:
    """One receiver's limit on each sender, kept in Redis so that its instances share it.

    Each :meth:`allow` is one call of ``lua/rate_limit.lua`` (``EVALSHA``)
    on the key ``mas_sync:rate:{agent_id}:{sender_id}``, on Redis's clock,
    which the instances of an agent share whatever their own clocks say. The
    key expires as soon as the sender would have its whole burst again: an
    idle sender leaves nothing behind. One key per call, so it works on a
    Redis Cluster too.

    When Redis fails (unreachable, a refused command, a key it cannot read),
    the message is **allowed**: the limit protects an agent from a flood,
    nothing may depend on it for correctness, and refusing every message
    while Redis stumbles would turn a protection into an outage. The first
    failure is logged as a warning, the recovery as info; :attr:`failed_open`
    counts the messages let through so.

    Thread-safe: any thread may call :meth:`allow` at once (each call takes a
    connection of the client's pool).

    Args:
        client: A redis-py client (plain, Sentinel or Cluster; decoding or
            not) of the Redis that holds the limits.
        agent_id: The receiver.
        limit: Its limit on each sender (or the text of one).

    Raises:
        TypeError, ValueError: a bad ``agent_id`` or ``limit``.
    """

    def __init__(self, client: Any, agent_id: str, limit: RateLimitLike) -> None:
        self.agent_id = _wire.validate_agent_id(agent_id)
        if isinstance(limit, str):
            limit = RateLimit.parse(limit)
        if not isinstance(limit, RateLimit):
            raise TypeError(f"limit must be a RateLimit or its text ('100/s'), not {limit!r}")
        self.limit = limit
        self._client = client
        self._script = load_script("rate_limit")
        self._sha = hashlib.sha1(self._script.encode("utf-8")).hexdigest()
        interval = max(1, round(1_000_000 / limit.rate))  # microseconds
        self._args = (interval, (limit.burst - 1) * interval)
        self._lock = threading.Lock()
        self._failing = False
        self._failed_open = 0

    @property
    def failed_open(self) -> int:
        """Messages allowed because Redis could not say (see the class docstring)."""
        return self._failed_open

    def allow(self, sender_id: str) -> bool:
        """Whether a message of ``sender_id`` is within the limit now; counts it if so.

        Returns:
            True to take the message, False to refuse it. True, too, when
            Redis fails (logged; see the class docstring).

        Raises:
            TypeError: ``sender_id`` is not a str.
            ValueError: ``sender_id`` is empty.
        """
        if not isinstance(sender_id, str):
            raise TypeError(f"sender id must be a str, not {type(sender_id).__name__}")
        if not sender_id:
            raise ValueError("sender id must not be empty")
        key = _wire.rate_key(self.agent_id, sender_id)
        try:
            try:
                allowed = self._client.execute_command("EVALSHA", self._sha, 1, key, *self._args)
            except redis.exceptions.NoScriptError:
                # A server that lost its script cache (restarted, SCRIPT
                # FLUSH, a failover): EVAL caches it again.
                allowed = self._client.execute_command("EVAL", self._script, 1, key, *self._args)
        except ANY_REDIS_ERROR as exc:
            self._failed(sender_id, exc)
            return True
        if self._failing:
            self._recovered()
        return bool(int(allowed))

    def _failed(self, sender_id: str, exc: BaseException) -> None:
        with self._lock:
            self._failed_open += 1
            first = not self._failing
            self._failing = True
        if first:
            log.warning(
                "Agent %s: cannot check the rate limit of %s in Redis (%s: %s); letting"
                " messages through until Redis answers again",
                self.agent_id, sender_id, type(exc).__name__, exc,
            )
        else:
            log.debug("Agent %s: rate limit of %s not checked: %s", self.agent_id, sender_id, exc)

    def _recovered(self) -> None:
        with self._lock:
            was_failing, self._failing = self._failing, False
        if was_failing:
            log.info("Agent %s: rate limits are checked in Redis again", self.agent_id)


# -- the sender: its own pace, per target ---------------------------------------------


class Throttle:
    """Paces one run's messages to each target at a :class:`RateLimit`, in this process.

    A sender takes a turn (:meth:`take`, :meth:`reserve`), then waits for it
    (:meth:`wait_until`); turns go in the order they were asked for, and a
    target's turns never hold up another's. After :meth:`close` (the agent
    stops), waiting senders wake at once and :meth:`wait_until` answers
    False. Thread-safe. Targets whose turns are all past are forgotten, so
    that memory follows the targets in use.

    Args:
        limit: The pace toward each target.
    """

    #: How many targets it keeps before it looks for idle ones to forget.
    PRUNE_AT = 1024

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._interval = limit.interval
        self._tolerance = (limit.burst - 1) * self._interval
        self._lock = threading.Lock()
        self._next: Dict[str, float] = {}  # target -> its theoretical arrival time
        self._prune_at = self.PRUNE_AT
        self._closed = threading.Event()
        self._waiting = 0

    def take(self, target_id: str) -> float:
        """The next turn to send to ``target_id``, taken: its ``time.monotonic()`` time."""
        turn = self.reserve(target_id)
        assert turn is not None
        return turn

    def reserve(self, target_id: str, deadline: Optional[float] = None) -> Optional[float]:
        """Take the next turn to send to ``target_id``, unless it comes after ``deadline``.

        Args:
            target_id: Where the message goes.
            deadline: A ``time.monotonic()`` time: a turn later than it is
                not taken. None: any turn.

        Returns:
            The ``time.monotonic()`` time of the turn (now or later); None
            when it would come after ``deadline`` (nothing is taken).
        """
        with self._lock:
            now = time.monotonic()
            arrival = max(self._next.get(target_id, now), now)
            turn = max(now, arrival - self._tolerance)
            if deadline is not None and turn > deadline:
                return None
            self._next[target_id] = arrival + self._interval
            if len(self._next) > self._prune_at:
                self._prune(now)
            return turn

    def wait_until(self, turn: float) -> bool:
        """Block until ``turn`` (a ``time.monotonic()`` time); False if closed meanwhile."""
        if turn <= time.monotonic():
            return True
        with self._lock:
            self._waiting += 1
        try:
            while True:
                left = turn - time.monotonic()
                if self._closed.is_set():
                    return left <= 0
                if left <= 0:
                    return True
                self._closed.wait(min(left, threading.TIMEOUT_MAX))
        finally:
            with self._lock:
                self._waiting -= 1

    def close(self) -> None:
        """Wake every waiting sender; from now on, a turn that is not due fails."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed.is_set()

    def waiting(self) -> int:
        """How many senders wait for their turn now."""
        with self._lock:
            return self._waiting

    def tracked(self) -> int:
        """How many targets it keeps a turn for."""
        with self._lock:
            return len(self._next)

    def _prune(self, now: float) -> None:
        """Forget the targets with no turn ahead (called with the lock held)."""
        self._next = {target: at for target, at in self._next.items() if at > now}
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._next))
