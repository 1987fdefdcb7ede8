"""Circuit breakers on an agent's requests: stop asking a target that keeps failing.

One breaker per target. *Closed*, every request is sent; ``breaker_failures``
failed requests in a row open it. *Open*, requests fail at once with
:class:`~mas_sync.CircuitOpenError` and nothing is sent, for
``breaker_cooldown`` seconds. Then it is *half-open*: exactly one request, the
trial, is sent, while the others still fail at once; the trial's success closes
the breaker, its failure opens it for another cool-down.

A failure is a :class:`~mas_sync.RequestTimeout`, or an error reply that says
the target failed (:class:`~mas_sync.RequestError` of any kind but those of
:data:`CALLER_FAULTS`). A refusal that is the caller's own fault (its payload
did not validate; the target refused it: unsigned, not an accepted sender,
beyond its rate) and an error of our side of the
wire (Redis unreachable, the agent stopping) count neither as a failure nor as
a success; a trial that ends so lets another call try.

A breaker lives in the run that uses it (``breaker_shared=False``), or in
Redis, in the hash ``mas_sync:breaker:{target}`` that every agent of a
deployment with ``breaker_shared=True`` reads and writes: one script call
(``lua/breaker.lua``, on Redis' clock) per decision. When Redis cannot be
asked, the run decides from its own copy of the state (the last it saw, and
its own outcomes since), with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import redis

from . import _wire
from ._errors import CircuitOpenError, RequestError, RequestTimeout
from ._redis import ANY_REDIS_ERROR, deadlines
from ._scripts import load_script
from ._stats import Counters

log = logging.getLogger(__name__)

#: Kinds of error reply that say the caller is at fault, not the target (as
#: an HTTP 4xx): its payload did not validate, or it sent beyond the rate the
#: target allows it. They count neither as failures nor as successes.
CALLER_FAULTS = frozenset({"validation_error", "refused"})
#: Seconds for which the state of a breaker that nothing touched is kept
#: (beyond its cool-down or its trial's turn); then it is forgotten (closed).
FORGET_AFTER = 3600.0
#: Seconds that a trial keeps its turn beyond its request's timeout: should
#: its caller die, another call may try once that much time has passed.
TRIAL_MARGIN = 1.0
#: Targets whose breakers one run keeps locally; the least recently used go.
MAX_TARGETS = 10_000

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
_OK, _FAIL, _NONE = "ok", "fail", "none"


def outcome_of(error: Optional[BaseException]) -> str:
    """``"ok"``, ``"fail"`` (the target failed) or ``"none"`` (says nothing of it)."""
    if error is None:
        return _OK
    if isinstance(error, RequestTimeout):
        return _FAIL
    if isinstance(error, RequestError):
        return _NONE if error.kind in CALLER_FAULTS else _FAIL
    return _NONE


@dataclass
class Ticket:
    """A request let through: what :meth:`Breakers.record` needs to settle it."""

    target_id: str
    token: str  # '' unless the call is the trial
    seen_failures: int  # the failures counted when it was let through
    shared: bool  # let through by the shared state (else by the local one)


class _State:
    """One target's breaker, as this run knows it (times in ``time.monotonic()``)."""

    __slots__ = ("failures", "opened_until", "trial", "trial_until", "expires")

    def __init__(self) -> None:
        self.failures = 0
        self.opened_until: Optional[float] = None
        self.trial = ""
        self.trial_until = 0.0
        self.expires = float("inf")


class Breakers:
    """The circuit breakers of one run's requests, one per target. Thread-safe.

    Called in the threads that call :meth:`mas_sync.Agent.request`.

    Args:
        agent_id: Whose requests.
        failures: Consecutive failed requests that open a breaker.
        cooldown: Seconds a breaker stays open before its trial.
        client: The run's command client, for shared state; None keeps the
            state in this run only.
        counters: The agent's counters (``breaker_opened``, ``breaker_rejected``).
        command_timeout: Seconds to wait for Redis to answer one decision.
        stopping: Whether the run is stopping (Redis errors are then
            expected, and not warned of).
    """

    def __init__(
        self,
        agent_id: str,
        failures: int,
        cooldown: float,
        client: Optional[redis.Redis],
        counters: Counters,
        command_timeout: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._agent_id = agent_id
        self._failures = failures
        self._cooldown = cooldown
        self._counters = counters
        self._command_timeout = command_timeout
        self._script: Any = None if client is None else client.register_script(
            load_script("breaker")
        )
        self._lock = threading.Lock()
        self._local: "OrderedDict[str, _State]" = OrderedDict()
        self._degraded = False  # Redis failed the last decision: warned once
        self._stopping = stopping

    # -- the two calls of a request ----------------------------------------------

    def admit(self, target_id: str, timeout: float, deadline: float) -> Ticket:
        """Let a request to ``target_id`` through, or refuse it.

        Args:
            target_id: The agent asked.
            timeout: The request's timeout: a trial keeps its turn that long
                (and :data:`TRIAL_MARGIN`).
            deadline: The request's deadline (``time.monotonic()``), which
                a decision in Redis does not outlast.

        Raises:
            CircuitOpenError: the breaker is open, or half-open with another
                call's trial under way. Nothing is sent.
        """
        token = uuid.uuid4().hex
        turn = timeout + TRIAL_MARGIN
        if self._script is not None:
            reply = self._call(
                ["admit", token, _ms(turn), _ms(self._keep(0.0))], target_id, deadline
            )
            if reply is not None:
                state, left, failures = reply
                with self._lock:
                    self._mirror(target_id, state, left, failures, token, turn)
                if state in ("open", "busy"):
                    raise self._refuse(target_id, state, left, failures)
                return Ticket(target_id, token if state == "trial" else "", failures, True)
        with self._lock:
            state, left, failures = self._admit_local(target_id, token, turn)
        if state in ("open", "busy"):
            raise self._refuse(target_id, state, left, failures)
        return Ticket(target_id, token if state == "trial" else "", failures, False)

    def record(self, ticket: Ticket, error: Optional[BaseException]) -> None:
        """Settle a request that was let through, by how it ended (``error`` None: a reply)."""
        outcome = outcome_of(error)
        target_id = ticket.target_id
        if ticket.shared:
            if not ticket.token and (
                outcome == _NONE or (outcome == _OK and not ticket.seen_failures)
            ):
                return  # changes nothing in Redis: spare the round trip
            reply = self._call(
                ["record", ticket.token, outcome, str(self._failures), _ms(self._cooldown),
                 _ms(self._keep(0.0))],
                target_id, time.monotonic() + self._command_timeout,
            )
            if reply is not None:
                state, left, failures = reply
                with self._lock:
                    self._mirror(target_id, state, left, failures, "", 0.0)
                self._settled(target_id, state, left, failures, bool(ticket.token))
                return
        with self._lock:
            state, left, failures = self._record_local(target_id, ticket.token, outcome)
        self._settled(target_id, state, left, failures, bool(ticket.token))

    def state(self, target_id: str) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``: the breaker of ``target_id`` as this
        run last knew it (with shared state, what Redis said at the last decision)."""
        with self._lock:
            entry = self._entry(target_id, time.monotonic(), create=False)
            if entry is None or entry.opened_until is None:
                return CLOSED
            return OPEN if time.monotonic() < entry.opened_until else HALF_OPEN

    # -- the local state -----------------------------------------------------------

    def _entry(self, target_id: str, now: float, create: bool = True) -> Optional[_State]:
        entry = self._local.get(target_id)
        if entry is not None and now >= entry.expires:
            del self._local[target_id]
            entry = None
        if entry is None and create:
            entry = self._local[target_id] = _State()
            while len(self._local) > MAX_TARGETS:
                self._local.popitem(last=False)
        if entry is not None:
            self._local.move_to_end(target_id)
        return entry

    def _keep(self, base: float) -> float:
        return base + max(FORGET_AFTER, 2 * self._cooldown)

    def _admit_local(self, target_id: str, token: str, turn: float) -> List[Any]:
        """As ``breaker.lua``'s admit, in seconds of ``time.monotonic()``."""
        now = time.monotonic()
        entry = self._entry(target_id, now, create=False)
        if entry is None or entry.opened_until is None:
            return ["closed", 0.0, 0 if entry is None else entry.failures]
        if now < entry.opened_until:
            return ["open", entry.opened_until - now, entry.failures]
        if entry.trial and entry.trial_until > now:
            return ["busy", entry.trial_until - now, entry.failures]
        entry.trial, entry.trial_until = token, now + turn
        entry.expires = now + self._keep(turn)
        return ["trial", 0.0, entry.failures]

    def _record_local(self, target_id: str, token: str, outcome: str) -> List[Any]:
        """As ``breaker.lua``'s record, in seconds of ``time.monotonic()``."""
        now = time.monotonic()
        entry = self._entry(target_id, now, create=outcome == _FAIL)
        if entry is None:
            return ["closed", 0.0, 0]
        is_trial = bool(token) and entry.trial == token
        if outcome == _OK:
            if is_trial or entry.opened_until is None:
                del self._local[target_id]
                return ["closed", 0.0, 0]
        elif outcome == _FAIL:
            if is_trial or entry.opened_until is None:
                entry.failures += 1
                if is_trial or entry.failures >= self._failures:
                    entry.opened_until = now + self._cooldown
                    entry.trial, entry.trial_until = "", 0.0
                    entry.expires = now + self._keep(self._cooldown)
                    return ["opened", self._cooldown, entry.failures]
                entry.expires = now + self._keep(0.0)
                return ["closed", 0.0, entry.failures]
        elif is_trial:
            entry.trial, entry.trial_until = "", 0.0
        if entry.opened_until is None:
            if not entry.failures:
                del self._local[target_id]
            return ["closed", 0.0, entry.failures]
        return ["open", max(0.0, entry.opened_until - now), entry.failures]

    def _mirror(
        self, target_id: str, state: str, left: float, failures: int, token: str, turn: float
    ) -> None:
        """Copy what Redis said into the local state, for when Redis cannot be asked."""
        now = time.monotonic()
        if state == "closed" and not failures:
            self._local.pop(target_id, None)
            return
        entry = self._entry(target_id, now)
        assert entry is not None
        entry.failures = failures
        if state == "closed":
            entry.opened_until, entry.trial, entry.trial_until = None, "", 0.0
            entry.expires = now + self._keep(0.0)
        elif state == "trial":
            entry.opened_until = min(entry.opened_until or now, now)
            entry.trial, entry.trial_until = token, now + turn
            entry.expires = now + self._keep(turn)
        else:  # open, busy, opened: ``left`` is the cool-down, or the trial's turn, left
            if state == "busy":
                entry.opened_until = min(entry.opened_until or now, now)
                entry.trial, entry.trial_until = "?", now + left
            else:
                entry.opened_until = now + left
                entry.trial, entry.trial_until = "", 0.0
            entry.expires = now + self._keep(left)

    # -- Redis -----------------------------------------------------------------------

    def _call(self, args: List[str], target_id: str, deadline: float) -> Optional[List[Any]]:
        """One script call; None (and a warning, once) when Redis cannot be asked."""
        try:
            connect_by = min(deadline, time.monotonic() + self._command_timeout)
            with deadlines(connect_by, deadline):
                raw = self._script(keys=[_wire.breaker_key(target_id)], args=args)
            state, left_ms, failures = raw
            state = state.decode() if isinstance(state, bytes) else str(state)
            reply = [state, int(left_ms) / 1000.0, int(failures)]
        except (*ANY_REDIS_ERROR, TypeError, ValueError) as exc:  # unreachable, refused, garbled
            if not self._degraded and not self._stopping():
                log.warning(
                    "Agent %s: shared circuit breaker of %s not readable in Redis (%s);"
                    " deciding from this process's own breakers until it is",
                    self._agent_id, target_id, exc,
                )
            self._degraded = True
            return None
        if self._degraded:
            self._degraded = False
            log.info("Agent %s: shared circuit breakers readable in Redis again", self._agent_id)
        return reply

    # -- outcomes --------------------------------------------------------------------

    def _refuse(self, target_id: str, state: str, left: float, failures: int) -> CircuitOpenError:
        self._counters.add("breaker_rejected")
        if state == "open":
            text = f"is open after {_failed(failures)}; next trial in {left:.3g} s"
        else:
            text = (f"is half-open after {_failed(failures)}, and another call's trial"
                    f" is under way; next trial in {left:.3g} s at the latest")
        return CircuitOpenError(
            f"agent {self._agent_id!r}: circuit to {target_id!r} {text}",
            target=target_id, failures=failures, retry_after=left,
        )

    def _settled(self, target_id: str, state: str, left: float, failures: int,
                 trial: bool) -> None:
        if state == "opened":
            self._counters.add("breaker_opened")
            log.warning(
                "Agent %s: circuit to %s opened after %s; next trial in %.3g s",
                self._agent_id, target_id, _failed(failures), left,
            )
        elif trial and state == "closed":
            log.info("Agent %s: circuit to %s closed: its trial request succeeded",
                     self._agent_id, target_id)


def _ms(seconds: float) -> str:
    """Whole milliseconds, at least 1, as a script argument."""
    return str(max(1, int(round(seconds * 1000))))


def _failed(failures: int) -> str:
    return f"{failures} failed request{'' if failures == 1 else 's'}"
