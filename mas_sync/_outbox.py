"""The send side of a run: message ids, numbering, framing, requests and replies."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel

from . import _json, _tracing, _wire
from ._breakers import Breakers
from ._calls import CallGate
from ._coalesce import Coalescer
from ._errors import MASConnectionError, RequestError, RequestTimeout
from ._message import AgentMessage
from ._rates import RateLimit, Throttle
from ._requests import PendingRequests
from ._stats import Counters, Numbering
from ._transport import Transport

#: What one call hands to Redis: its message ids, its framed messages, and
#: whether they are published whatever their targets read (replies).
Entry = Tuple[List[str], List[Tuple[str, str]], bool]


class Outbox:
    """Frames one run's messages and hands them to its transport, under its call policy.

    Every message gets an id (``{run}-{n}``) and, per target, the next
    sequence number, so that receivers can count what they missed. Callable
    from any thread at once: the messages of calls made at once go to Redis
    together, in one pipeline (:mod:`._coalesce`), and each call returns once
    Redis accepted its own. Requests go on their own, within their
    deadline. Payloads arrive here already checked and encoded
    (:func:`~mas_sync._json.dumps_object`), except a reply's.

    Args:
        agent_id: The sender.
        transport: What carries the framed messages.
        calls: The run's call policy (retries, and the stop's gate).
        requests: The run's table of requests waiting for a reply.
        instance: The instance of a reliable agent, named in its requests so
            that the reply reaches it (not another instance); None otherwise.
        sign: Signs each framed message (see :func:`~mas_sync._signing.sign`);
            None sends them unsigned.
        breakers: The circuit breakers of the run's requests; None for none.
        send_rate: The pace of ``send()``, ``send_many()`` and ``request()``
            toward each target (replies are not paced); None for none.
        counters: Where the round trips of requests are timed; None for nowhere.
    """

    def __init__(
        self,
        agent_id: str,
        transport: Transport,
        calls: CallGate,
        requests: PendingRequests,
        instance: Optional[str] = None,
        sign: Optional[Callable[[str], str]] = None,
        breakers: Optional[Breakers] = None,
        send_rate: Optional[RateLimit] = None,
        counters: Optional[Counters] = None,
    ) -> None:
        self.agent_id = agent_id
        self.counters = counters
        self.sign = sign
        self.breakers = breakers
        self.instance = instance
        self.transport = transport
        self.calls = calls
        self.requests = requests
        self.run_id = uuid.uuid4().hex[:16]
        self._message_numbers = itertools.count(1)  # next() is atomic in CPython
        self.numbering = Numbering()
        self.throttle = Throttle(send_rate) if send_rate is not None else None
        self._pipeline: Coalescer[Entry] = Coalescer(self._flush, self._interrupted)

    def close(self) -> None:
        """The run stops: senders waiting for their turn raise AgentNotRunningError."""
        if self.throttle is not None:
            self.throttle.close()

    def _wait_turn(self, turn: float) -> None:
        """Wait for a turn of the throttle; raise if the run stops meanwhile."""
        assert self.throttle is not None
        if not self.throttle.wait_until(turn):
            raise self.calls.not_running()

    def frame(
        self,
        target_id: str,
        body: str,
        sender_instance: Optional[str] = None,
        target_instance: Optional[str] = None,
        span: Any = None,
    ) -> Tuple[str, str]:
        """A new message id, and the message to send, numbered for ``target_id``.

        A message sent in the PRODUCER ``span`` carries its trace context
        (signed with the rest).
        """
        message_id = f"{self.run_id}-{next(self._message_numbers)}"
        traceparent, tracestate = _tracing.fields(span) if span is not None else (None, None)
        data = _wire.frame_message(
            self.agent_id,
            target_id,
            body,
            message_id,
            seq=self.numbering.next(target_id),
            sender_run=self.run_id,
            sender_instance=sender_instance,
            target_instance=target_instance,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        if self.sign is not None:
            data = self.sign(data)
        if span is not None:
            _tracing.framed(span, message_id, data)
        return message_id, data

    def send(self, target_id: str, body: str) -> str:
        """Send one encoded payload (in its turn, with a ``send_rate``); returns its message id."""
        if self.throttle is not None:
            self._wait_turn(self.throttle.take(target_id))
        if _tracing.ENABLED and _tracing.on():
            with _tracing.sending(target_id) as span:
                return self._send(target_id, body, span)
        return self._send(target_id, body)

    def _send(self, target_id: str, body: str, span: Any = None) -> str:
        def entry() -> Entry:
            message_id, data = self.frame(target_id, body, span=span)
            return [message_id], [(target_id, data)], False

        return self._pipeline.submit(entry)[0][0]

    def _flush(self, entries: Sequence[Entry]) -> List[Optional[BaseException]]:
        """Send the entries of the calls made at once in one go; per entry, its error or None."""
        if len(entries) == 1:
            _, batch, direct = entries[0]
            return [self._refusal(self.calls.run(self.transport.send, batch, direct))]
        batch = []
        flags: List[bool] = []
        for _, messages, direct in entries:
            batch.extend(messages)
            flags.extend([direct] * len(messages))
        refusals = self.calls.run(self.transport.send, batch, flags)
        errors = []
        first = 0
        for _, messages, _ in entries:
            errors.append(self._refusal(refusals[first:first + len(messages)]))
            first += len(messages)
        return errors

    def _refusal(self, refusals: Sequence[Optional[Exception]]) -> Optional[BaseException]:
        """The error of a call, from what Redis refused of its messages (None: nothing)."""
        for refusal in refusals:
            if refusal is not None:
                return self.calls.refused(refusal)
        return None

    def _interrupted(self, error: BaseException) -> BaseException:
        return MASConnectionError(
            f"agent {self.agent_id!r}: the send of this message, in one pipeline with"
            f" others, was interrupted ({type(error).__name__}): it may have been sent"
        )

    def send_many(self, checked: Sequence[Tuple[str, str]]) -> List[str]:
        """Send ``(target_id, body)`` pairs in one round trip; returns their ids, in order.

        With a ``send_rate``, in order, in as many round trips as it takes:
        each time, the messages whose turn has come.
        """
        if self.throttle is not None:
            return self._send_paced(checked)
        return self._send_batch(checked)

    def _send_batch(self, checked: Sequence[Tuple[str, str]]) -> List[str]:
        """Frame the messages, and send them in one round trip (a PRODUCER span each)."""
        if not checked:
            return []
        if _tracing.ENABLED and _tracing.on():
            return self._send_batch_traced(checked)
        return self._submit_batch(checked, None)

    def _send_batch_traced(self, checked: Sequence[Tuple[str, str]]) -> List[str]:
        spans = [_tracing.start_send(target_id) for target_id, _ in checked]
        error: Optional[BaseException] = None
        try:
            return self._submit_batch(checked, spans)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for span in spans:
                _tracing.end(span, error)

    def _submit_batch(
        self, checked: Sequence[Tuple[str, str]], spans: Optional[List[Any]]
    ) -> List[str]:
        """Frame the messages (each in its PRODUCER span, if any) as one entry of a pipeline."""
        def entry() -> Entry:
            ids = []
            batch = []
            for n, (target_id, body) in enumerate(checked):
                message_id, data = self.frame(
                    target_id, body, span=spans[n] if spans is not None else None
                )
                ids.append(message_id)
                batch.append((target_id, data))
            return ids, batch, False

        return self._pipeline.submit(entry)[0]

    def _send_paced(self, checked: Sequence[Tuple[str, str]]) -> List[str]:
        throttle = self.throttle
        assert throttle is not None
        turns = [throttle.take(target_id) for target_id, _ in checked]
        ids: List[str] = []
        done = 0
        while done < len(checked):
            self._wait_turn(turns[done])
            now = time.monotonic()
            upto = done + 1
            while upto < len(checked) and turns[upto] <= now:
                upto += 1
            ids.extend(self._send_batch(checked[done:upto]))
            done = upto
        return ids

    def request(self, target_id: str, payload: Dict[str, Any], timeout: float) -> AgentMessage:
        """Send a request and wait for its reply, as :meth:`mas_sync.Agent.request` says."""
        deadline = time.monotonic() + timeout
        correlation_id = str(uuid.uuid4())
        body = _json.dumps_object(_wire.request_payload(payload, correlation_id))
        if self.throttle is not None:
            # Its turn counts against the timeout: one that comes too late is
            # not taken, and the request fails now rather than at its deadline.
            # (Before the breaker: our own pace says nothing of the target.)
            turn = self.throttle.reserve(target_id, deadline)
            if turn is None:
                raise self.late_turn(target_id, timeout)
            self._wait_turn(turn)
        breakers = self.breakers
        if breakers is None:
            return self._request(target_id, body, correlation_id, timeout, deadline)
        # After the payload's checks (bad input takes no trial's turn), before
        # the message is numbered (a refused request leaves no gap).
        ticket = breakers.admit(target_id, timeout, deadline)
        error: Optional[BaseException] = None
        try:
            return self._request(target_id, body, correlation_id, timeout, deadline)
        except BaseException as exc:
            error = exc
            raise
        finally:
            breakers.record(ticket, error)

    def _request(
        self, target_id: str, body: str, correlation_id: str, timeout: float, deadline: float
    ) -> AgentMessage:
        if _tracing.ENABLED and _tracing.on():
            # The request's span lasts until its reply (or its failure).
            with _tracing.sending(target_id, correlation_id) as span:
                return self._round_trip(target_id, body, correlation_id, timeout, deadline, span)
        return self._round_trip(target_id, body, correlation_id, timeout, deadline)

    def _round_trip(
        self,
        target_id: str,
        body: str,
        correlation_id: str,
        timeout: float,
        deadline: float,
        span: Any = None,
    ) -> AgentMessage:
        _, data = self.frame(target_id, body, sender_instance=self.instance, span=span)
        pending = self.requests.add(correlation_id, target_id)
        try:
            started = time.perf_counter()
            refusal = self._refusal(
                self.calls.run(self.transport.send, [(target_id, data)], deadline=deadline)
            )
            if refusal is not None:
                raise refusal
            assert pending.event is not None
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                raise self.no_reply(target_id, timeout, correlation_id)
        finally:
            self.requests.discard(correlation_id)
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        assert reply is not None
        if self.counters is not None:
            self.counters.time("request", time.perf_counter() - started)
        error = error_reply(target_id, correlation_id, reply)
        if error is not None:
            raise error
        return reply

    def late_turn(self, target_id: str, timeout: float) -> RequestTimeout:
        """The error of a request whose turn (``send_rate``) comes after its timeout."""
        assert self.throttle is not None
        return RequestTimeout(
            f"agent {self.agent_id!r}: the turn to send to {target_id!r} comes after"
            f" the request's timeout of {timeout} s (send_rate {self.throttle.limit})"
        )

    def no_reply(self, target_id: str, timeout: float, correlation_id: str) -> RequestTimeout:
        """The error of a request without a reply in time."""
        return RequestTimeout(
            f"agent {self.agent_id!r}: no reply from {target_id!r} within {timeout} s"
            f" (request {correlation_id})"
        )

    def reply(self, message: AgentMessage, payload: Dict[str, Any], error: bool = False) -> str:
        """Answer the request ``message`` with ``payload``; returns the reply's id.

        The reply function of every message this run receives (a weak
        reference to it: see :func:`~mas_sync._message.weak_reply_sender`).

        Raises:
            TypeError, ValueError: as :meth:`mas_sync.AgentMessage.reply`.
            AgentNotRunningError, MASConnectionError: as a send.
        """
        if self.calls.closed:
            raise self.calls.not_running()
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        if not isinstance(payload, dict):
            raise TypeError(f"a reply must be a dict (a JSON object), not {type(payload).__name__}")
        assert message.correlation_id is not None
        body = _json.dumps_object(
            _wire.reply_payload(payload, message.correlation_id, error=error), "reply"
        )
        if _tracing.ENABLED and _tracing.on():
            with _tracing.sending(message.sender_id, message.correlation_id) as span:
                return self._reply(message, body, span)
        return self._reply(message, body)

    def _reply(self, message: AgentMessage, body: str, span: Any = None) -> str:
        # Straight to the requester's channel, whatever its delivery: only the
        # run that waits can use a reply, and it listens there.
        def entry() -> Entry:
            message_id, data = self.frame(
                message.sender_id, body, target_instance=message.sender_instance, span=span
            )
            return [message_id], [(message.sender_id, data)], True

        message_id = self._pipeline.submit(entry)[0][0]
        message._replied = True
        return message_id


def error_reply(target_id: str, correlation_id: str, reply: AgentMessage) -> Optional[RequestError]:
    """The error a reply stands for, when it is an error reply (``_error``); else None."""
    error = reply.payload.get(_wire.ERROR)
    if not isinstance(error, dict):
        return None
    return RequestError(
        f"{target_id!r} answered request {correlation_id} with an error:"
        f" {error.get('type')}: {error.get('message')}",
        reply=reply,
        kind=str(error.get("type")),
        details=error.get("details") or [],
    )
