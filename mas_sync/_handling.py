"""The worker side of a run: call the agent's handler for a message, and answer a failed request."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Protocol, Tuple

from pydantic import ValidationError

from . import _tracing, _wire
from ._admission import Admission
from ._dedupe import Seen
from ._errors import CannotReplyError
from ._handlers import HandlerSpec, action_of, body_of
from ._inbox import first_error, parse_message
from ._message import AgentMessage
from ._outbox import Outbox
from ._schedule import PeriodicSpec
from ._signing import Refused
from ._stats import Counters
from ._timers import Timers
from ._transport import Receipt

log = logging.getLogger(__name__)

#: What :meth:`Handling.attempt` returns for a payload its handler's model refused.
_REJECTED = "the payload does not fit the handler's model"


class AgentHooks(Protocol):
    """What a run needs of its agent: its handlers and hooks (see :class:`mas_sync.Agent`)."""

    id: str
    _mas_handlers: Dict[str, HandlerSpec]
    _mas_periodic: Tuple[PeriodicSpec, ...]

    def get_metadata(self) -> Dict[str, Any]: ...

    def on_message(self, message: AgentMessage) -> None: ...

    def on_error(self, message: Optional[AgentMessage], error: Exception) -> None: ...

    def on_stop(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class Handling:
    """Runs in the worker threads: routes each message to its handler, and reports failures.

    A message whose ``payload["action"]`` names a typed handler goes to it
    (validated into its model first); any other to ``on_message``. A handler
    that raises is logged, counted, passed to ``on_error``, and a waiting
    requester gets an error reply instead of a timeout.

    Args:
        agent: Whose handlers.
        counters: The agent's counters.
        outbox: Where replies go.
        seen: What tells a message handled already (a duplicate) from a new one.
        admission: What refuses messages (signatures, senders, rates); None
            admits every message.
        timers: The run's timers, which watch the handlers' time limits.
        handler_timeout: The agent's time limit of a handler call (a typed
            handler may have its own); None for none.
    """

    def __init__(
        self,
        agent: AgentHooks,
        counters: Counters,
        outbox: Outbox,
        seen: Optional[Seen] = None,
        admission: Optional[Admission] = None,
        timers: Optional[Timers] = None,
        handler_timeout: Optional[float] = None,
    ) -> None:
        self.agent = agent
        self.counters = counters
        self.outbox = outbox
        self.seen = seen if seen is not None and seen.active else None
        self.admission = admission
        self.timers = timers
        self.handler_timeout = handler_timeout

    def handle(self, message: AgentMessage) -> None:
        """Call the handler of ``message``; never raises.

        A message read from a stream is settled here: acknowledged once its
        handler returned (and a request was answered), tried again after a
        backoff while attempts are left, then moved to the dead-letter stream.
        """
        receipt = message._receipt
        admission = self.admission
        if admission is not None:
            try:
                admission.verify(message)
            except Refused as refusal:
                self.refuse(message, refusal)
                return
        seen = self.seen
        if seen is not None and not seen.take(message):
            self.counters.add("duplicates")
            if receipt is not None:
                receipt.ack()
            return
        if admission is not None:
            # After the check for a duplicate: of the instances of a reliable
            # agent that hear one message on its channel, only the one that
            # takes it records its nonce.
            try:
                admission.admit(message)
            except Refused as refusal:
                self.refuse(message, refusal)
                return
        if receipt is None:
            if self.attempt(message) is None and seen is not None:
                seen.done(message)
            return
        if receipt.attempts > receipt.max_attempts:
            # Delivered that often without being settled: its handler crashed
            # the process, or hung, each time.
            self.give_up(message, f"delivered {receipt.attempts} times without being handled")
            return
        receipt.handling = True
        try:
            self._attempts(message, receipt, seen)
        finally:
            receipt.handling = False

    def _attempts(self, message: AgentMessage, receipt: Receipt, seen: Optional[Seen]) -> None:
        """Handle a stream message, trying again while attempts are left; settle it."""
        while True:
            error = self.attempt(message, last=receipt.attempts >= receipt.max_attempts)
            if error is None:
                if seen is not None:
                    seen.done(message)
                receipt.ack()
                return
            if receipt.attempts >= receipt.max_attempts or error is _REJECTED:
                self.give_up(message, error)
                return
            if not receipt.retry():
                return  # the agent stops, or the entry is gone: left as it is
            self.counters.add("retried")
            retried = parse_message(receipt.data)
            retried._reply, retried._receipt = message._reply, receipt
            # Answered already (at its time limit, or by the handler before it
            # raised): the request has one answer, and the retries send none.
            retried._replied = message._replied
            retried._attempt = receipt.attempts
            message = retried

    def attempt(self, message: AgentMessage, last: bool = True) -> Optional[str]:
        """One call of the handler; returns what went wrong (None when it returned).

        A requester hears of a failure (an error reply) only at the ``last``
        attempt. With tracing on, the call is the CONSUMER span ``process
        agent.{id}`` (see :mod:`._tracing`).
        """
        if _tracing.ENABLED and _tracing.on():
            with _tracing.processing(self.agent.id, message) as span:
                return self._attempt(message, last, span)
        return self._attempt(message, last)

    def _attempt(self, message: AgentMessage, last: bool, span: Any = None) -> Optional[str]:
        spec = self.agent._mas_handlers.get(action_of(message) or "")
        limit = self.handler_timeout
        if spec is not None and spec.timeout is not None:
            limit = spec.timeout
        if limit is None or self.timers is None:
            return self._call(message, spec, last, span)
        watch = _Watch(self, message, spec, limit, self.timers)
        try:
            return self._call(message, spec, last, span, watch)
        finally:
            watch.finish()

    def _call(
        self,
        message: AgentMessage,
        spec: Optional[HandlerSpec],
        last: bool,
        span: Any,
        watch: Optional["_Watch"] = None,
    ) -> Optional[str]:
        agent = self.agent
        started = time.perf_counter()
        try:
            if spec is None:
                result = agent.on_message(message)
            elif spec.model is None:
                result = getattr(agent, spec.method)(message)
            else:
                try:
                    body = spec.model.model_validate(body_of(message))
                except ValidationError as exc:
                    if span is not None:
                        _tracing.failed(span, exc)
                    self.reject(message, spec, exc)
                    return _REJECTED
                result = getattr(agent, spec.method)(message, body)
            if (result is not None and message.expects_reply and not message._replied
                    and (watch is None or watch.claim())):
                message.reply(result)
        except BaseException as exc:  # noqa: B902 - SystemExit too: the message must be settled
            self.counters.time("handler", time.perf_counter() - started)
            self.counters.add("handler_errors")
            if span is not None:
                _tracing.failed(span, exc)
            where = f"{spec.method}()" if spec is not None else "on_message"
            log.exception(
                "Agent %s: %s failed for message %s from %s (attempt %d)",
                agent.id, where, message.message_id, message.sender_id, message.attempt,
            )
            error = f"{type(exc).__name__}: {exc}"
            if last and (watch is None or watch.claim()):
                self.reply_error(message, "handler_error", error)
            if isinstance(exc, Exception):  # what on_error() is documented to take
                try:
                    agent.on_error(message, exc)
                except Exception:
                    log.exception("Agent %s: on_error raised", agent.id)
            return error
        self.counters.time("handler", time.perf_counter() - started)
        self.counters.add("handled")
        return None

    def replay(self, message: AgentMessage) -> bool:
        """Handle a stored message again, replying nothing; True when the handler returned."""
        message._replied = True  # no reply, no error reply: its requester is long gone
        return self.attempt(message) is None

    def give_up(self, message: AgentMessage, error: str) -> None:
        """Move a stream message to the dead-letter stream; tell a requester."""
        receipt = message._receipt
        assert receipt is not None
        self.counters.add("dead_lettered")
        receipt.dead_letter(error)
        self.reply_error(
            message, "dead_letter", f"gave up after {receipt.attempts} attempts: {error}"
        )

    def refuse(self, message: AgentMessage, refusal: Refused) -> None:
        """A message its agent does not admit: count, log once per sender and reason, answer."""
        assert self.admission is not None
        self.admission.count(message, refusal)
        reason = refusal.reason
        receipt = message._receipt
        if receipt is not None:
            self.counters.add("dead_lettered")
            receipt.dead_letter(f"refused ({reason}): {refusal.detail}")
        self.reply_error(
            message, "refused", f"{reason}: {refusal.detail}", [{"reason": reason}]
        )

    def reject(self, message: AgentMessage, spec: HandlerSpec, exc: ValidationError) -> None:
        """A payload that does not fit the handler's model: log, count, tell the requester."""
        agent = self.agent
        self.counters.add("rejected")
        log.warning(
            "Agent %s: rejected message %s from %s: payload does not fit %s for action %r: %s",
            agent.id, message.message_id, message.sender_id,
            spec.model.__name__ if spec.model else "?", spec.action, first_error(exc),
        )
        # Without each error's "input" (the payload again); pydantic 2.0's
        # json() has no include_input.
        details = [
            {key: value for key, value in error.items() if key != "input"}
            for error in json.loads(exc.json(include_url=False))
        ]
        self.reply_error(
            message,
            "validation_error",
            f"payload does not fit {spec.model.__name__ if spec.model else '?'}"
            f" for action {spec.action!r}",
            details,
        )

    def reply_error(
        self, message: AgentMessage, kind: str, text: str, details: Optional[List[Any]] = None
    ) -> None:
        """Tell a requester that its request failed, instead of letting it time out."""
        if not message.expects_reply or message._replied:
            return
        try:
            self.outbox.reply(message, _wire.error_payload(kind, text, details), error=True)
        except Exception as exc:
            log.warning(
                "Agent %s: could not send the error reply to %s: %s",
                self.agent.id, message.sender_id, exc,
            )


class _Watch:
    """The time limit of one handler call: when it passes, the call is reported, not stopped.

    The first to claim the request's answer gives it: the call (its reply,
    or its error reply) or the limit (an error reply ``handler_timeout``).
    While the call runs, the message replies through :meth:`replying`, so
    that a reply the handler makes itself claims the answer too.
    """

    __slots__ = ("handling", "message", "spec", "limit", "thread", "started", "lock",
                 "finished", "expired", "answered", "timer", "reply")

    def __init__(
        self, handling: Handling, message: AgentMessage, spec: Optional[HandlerSpec],
        limit: float, timers: Timers,
    ) -> None:
        self.handling = handling
        self.message = message
        self.spec = spec
        self.limit = limit
        self.thread = threading.current_thread()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.finished = False
        self.expired = False
        self.answered = False  # the call claimed the answer
        self.reply = None  # the message's own reply sender, while the watch stands in
        if message.expects_reply:
            reply = message._reply
            if reply is not None:
                self.reply = reply
                message._reply = self.replying
        self.timer = timers.call_at(self.started + limit, self.expire)

    def where(self) -> str:
        return f"{self.spec.method}()" if self.spec is not None else "on_message"

    def claim(self) -> bool:
        """Worker: the call answers the request; False when the limit answered it first."""
        with self.lock:
            if self.expired and not self.answered:
                return False
            self.answered = True
            return True

    def replying(self, message: AgentMessage, payload: Dict[str, Any]) -> str:
        """``message.reply()`` while the call runs: only if the limit did not answer first."""
        if not self.claim():
            raise CannotReplyError(
                f"request {message.correlation_id} from {message.sender_id!r} was answered"
                f" with an error at its time limit of {self.limit} s; this reply came after"
            )
        assert self.reply is not None
        return self.reply(message, payload)

    def expire(self) -> None:
        """Timers' thread: the limit passed with the call still running."""
        handling, message = self.handling, self.message
        with self.lock:
            if self.finished:
                return
            self.expired = True
            answer = message.expects_reply and not self.answered and not message._replied
            if answer:
                message._replied = True  # what the call returns is no longer sent
        frame = sys._current_frames().get(self.thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        agent_id = handling.agent.id
        handling.counters.add("handler_timeouts")
        log.warning(
            "Agent %s: %s still running after %s s (its time limit) for message %s from %s,"
            " in %s; it is not interrupted, and keeps its worker until it returns. Its stack:\n%s",
            agent_id, self.where(), self.limit, message.message_id, message.sender_id,
            self.thread.name, stack.rstrip(),
        )
        if answer and handling.timers is not None:
            handling.timers.defer(self.answer)

    def answer(self) -> None:
        """Send the requester the error reply of the limit (where a send may wait on Redis)."""
        handling, message = self.handling, self.message
        try:
            handling.outbox.reply(
                message,
                _wire.error_payload(
                    "handler_timeout",
                    f"{self.where()} still running after its time limit of {self.limit} s",
                ),
                error=True,
            )
        except Exception as exc:
            log.warning("Agent %s: could not send the error reply to %s: %s",
                        handling.agent.id, message.sender_id, exc)

    def finish(self) -> None:
        """Worker: the call returned (or raised)."""
        with self.lock:
            self.finished = True
            expired = self.expired
        if self.reply is not None:
            self.message._reply = self.reply
        if expired:
            log.warning(
                "Agent %s: %s returned after %.3f s, past its time limit of %s s (message %s)",
                self.handling.agent.id, self.where(), time.monotonic() - self.started,
                self.limit, self.message.message_id,
            )
        else:
            self.timer.cancel()
