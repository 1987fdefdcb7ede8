"""Requests that do not block: futures resolved by the listener, and scatter-gather.

A request started here is registered in the run's table of pending requests
(:mod:`._requests`) with a callback instead of an event: the listener that
takes its reply off the channel resolves its ``concurrent.futures.Future``,
and the run's timers (:mod:`._timers`) fail it at its deadline. Whoever takes
the request out of the table (the reply, the deadline, a stop, a failed send,
a cancel) settles it, once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _json, _tracing, _wire
from ._breakers import Ticket
from ._errors import MASError, RequestTimeout
from ._message import AgentMessage
from ._outbox import Outbox, error_reply
from ._requests import _Pending
from ._timers import Timer, Timers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatherResult:
    """What :meth:`~mas_sync.Agent.request_many` gathered.

    Attributes:
        targets: The agents asked, in the order they were asked.
        replies: The replies that came in time, by agent.
        errors: Why each other agent gave no reply, by agent:
            :class:`~mas_sync.RequestTimeout` (no reply in time),
            :class:`~mas_sync.RequestError` (an error reply),
            :class:`~mas_sync.CircuitOpenError` (its breaker is open: not
            asked), or the error of sending the request to it.
    """

    targets: Tuple[str, ...]
    replies: Dict[str, AgentMessage] = field(default_factory=dict)
    errors: Dict[str, MASError] = field(default_factory=dict)

    @property
    def timed_out(self) -> List[str]:
        """The agents that did not answer in time, in the order asked."""
        return [t for t in self.targets if isinstance(self.errors.get(t), RequestTimeout)]

    @property
    def failed(self) -> List[str]:
        """The agents that answered with an error or could not be asked, in the order asked."""
        return [t for t in self.targets
                if t in self.errors and not isinstance(self.errors[t], RequestTimeout)]


class _Request:
    """One request whose reply settles a future."""

    __slots__ = ("target_id", "correlation_id", "body", "future", "ticket", "timer", "span",
                 "started", "timeout")

    def __init__(self, target_id: str, correlation_id: str, body: str, timeout: float) -> None:
        self.target_id = target_id
        self.correlation_id = correlation_id
        self.body = body
        self.timeout = timeout
        self.future: "concurrent.futures.Future[AgentMessage]" = concurrent.futures.Future()
        self.ticket: Optional[Ticket] = None
        self.timer: Optional[Timer] = None
        self.span: Any = None
        self.started = 0.0


class RequestFutures:
    """Starts requests whose replies resolve futures (see :meth:`mas_sync.Agent.request_future`).

    Args:
        outbox: The run's outbox: framing, transport, call policy, table of
            pending requests, breakers and pace.
        timers: The run's timers, which fail a request at its deadline.
    """

    def __init__(self, outbox: Outbox, timers: Timers) -> None:
        self.outbox = outbox
        self.timers = timers

    def start(
        self,
        targets: Sequence[str],
        payload: Dict[str, Any],
        timeout: float,
        deadline: Optional[float] = None,
    ) -> List["concurrent.futures.Future[AgentMessage]"]:
        """Send one request per target, all in one round trip when no pace holds them.

        Returns once Redis accepted the requests (after their turns, with a
        ``send_rate``), with a future per target, in order; any failure after
        the payload's check (an open breaker, a send that failed, no reply in
        time) is in its future.

        Args:
            deadline: When the futures fail (``time.monotonic()``); None:
                ``timeout`` from now.

        Raises:
            TypeError, ValueError: the payload cannot be sent (nothing is).
            AgentNotRunningError: the agent is stopped (nothing is sent).
        """
        return [request.future for request in self._start(targets, payload, timeout, deadline)]

    def gather(
        self, targets: Sequence[str], payload: Dict[str, Any], timeout: float, deadline: float
    ) -> GatherResult:
        """Ask every target, and wait until all answered or ``deadline`` passed (see
        :meth:`mas_sync.Agent.request_many`)."""
        requests = self._start(targets, payload, timeout, deadline) if targets else []
        concurrent.futures.wait(
            [request.future for request in requests],
            timeout=max(0.0, deadline - time.monotonic()),
        )
        result = GatherResult(tuple(targets))
        for request in requests:
            future = request.future
            if not future.done():
                self._expired(request)  # its timer is a hair late: the same, now
            error = future.exception()  # done, or about to be by whoever took it
            if error is None:
                result.replies[request.target_id] = future.result()
            else:
                result.errors[request.target_id] = error  # type: ignore[assignment]
        return result

    # -- internals -------------------------------------------------------------

    def _start(
        self,
        targets: Sequence[str],
        payload: Dict[str, Any],
        timeout: float,
        deadline: Optional[float],
    ) -> List["_Request"]:
        outbox = self.outbox
        if deadline is None:
            deadline = time.monotonic() + timeout
        requests = []
        for target_id in targets:
            correlation_id = str(uuid.uuid4())
            body = _json.dumps_object(_wire.request_payload(payload, correlation_id))
            requests.append(_Request(target_id, correlation_id, body, timeout))
        if outbox.calls.closed:
            raise outbox.calls.not_running()
        ready: List[Tuple[float, _Request]] = []
        for request in requests:
            turn = self._admit(request, deadline)
            if turn is not None:
                ready.append((turn, request))
        done = 0
        while done < len(ready):
            turn = ready[done][0]
            if turn > time.monotonic():
                try:
                    outbox._wait_turn(turn)
                except MASError as exc:  # stopped meanwhile: the rest is not sent
                    for _, request in ready[done:]:
                        self._settle(request, None, exc)
                    break
            now = time.monotonic()
            upto = done + 1
            while upto < len(ready) and ready[upto][0] <= now:
                upto += 1
            self._send([request for _, request in ready[done:upto]], deadline)
            done = upto
        return requests

    def _admit(self, request: _Request, deadline: float) -> Optional[float]:
        """Its turn (0.0 unpaced) and its breaker's ticket; None with its future failed."""
        outbox = self.outbox
        target_id = request.target_id
        turn = 0.0
        if outbox.throttle is not None:
            reserved = outbox.throttle.reserve(target_id, deadline)
            if reserved is None:
                request.future.set_exception(outbox.late_turn(target_id, request.timeout))
                return None
            turn = reserved
        if outbox.breakers is not None:
            try:
                request.ticket = outbox.breakers.admit(target_id, request.timeout, deadline)
            except MASError as exc:
                request.future.set_exception(exc)
                return None
        return turn

    def _send(self, requests: List[_Request], deadline: float) -> None:
        """Frame, register and send ``requests`` in one round trip; failures go to their futures."""
        outbox = self.outbox
        batch = []
        sent = []
        traced = _tracing.ENABLED and _tracing.on()
        for request in requests:
            try:
                outbox.requests.add(
                    request.correlation_id, request.target_id,
                    lambda pending, request=request: self._answered(request, pending),
                )
            except MASError as exc:  # stopped meanwhile
                self._settle(request, None, exc)
                continue
            request.future.add_done_callback(
                lambda future, request=request: self._cancelled(request, future)
            )
            request.timer = self.timers.call_at(
                deadline, lambda request=request: self._expired(request)
            )
            if traced:
                request.span = _tracing.start_send(request.target_id, request.correlation_id)
            _, data = outbox.frame(
                request.target_id, request.body, sender_instance=outbox.instance,
                span=request.span,
            )
            batch.append((request.target_id, data))
            sent.append(request)
            request.started = time.perf_counter()
        if not batch:
            return
        try:
            refusals: Sequence[Optional[Exception]] = outbox.calls.run(
                outbox.transport.send, batch, deadline=deadline
            )
        except MASError as exc:
            for request in sent:
                if outbox.requests.take(request.correlation_id) is not None:
                    self._settle(request, None, exc)
            return
        for request, refusal in zip(sent, refusals):
            if refusal is not None and outbox.requests.take(request.correlation_id) is not None:
                self._settle(request, None, outbox.calls.refused(refusal))

    def _answered(self, request: _Request, pending: _Pending) -> None:
        """Listener (or stopping) thread: the reply, or the stop's error, is in."""
        try:
            self._settle(request, pending.reply, pending.error)
        except Exception:  # pragma: no cover - a defect; the listener goes on
            log.exception("Agent %s: settling request %s failed",
                          self.outbox.agent_id, request.correlation_id)

    def _expired(self, request: _Request) -> None:
        """Timers' thread: the deadline passed."""
        outbox = self.outbox
        if outbox.requests.take(request.correlation_id) is not None:
            self._settle(request, None, outbox.no_reply(
                request.target_id, request.timeout, request.correlation_id
            ))

    def _cancelled(self, request: _Request, future: "concurrent.futures.Future[Any]") -> None:
        """The future is done: if by a cancel, its pending slot is freed now."""
        if future.cancelled() and self.outbox.requests.take(request.correlation_id) is not None:
            self._settle(request, None, None)

    def _settle(
        self, request: _Request, reply: Optional[AgentMessage], error: Optional[BaseException]
    ) -> None:
        """Resolve the future of a request taken out of the table (only its taker calls this)."""
        outbox = self.outbox
        if request.timer is not None:
            request.timer.cancel()
        if reply is not None:
            if outbox.counters is not None:
                outbox.counters.time("request", time.perf_counter() - request.started)
            error = error_reply(request.target_id, request.correlation_id, reply)
        future = request.future
        going = future.set_running_or_notify_cancel()
        if not going:  # cancelled: says nothing of the target
            error = concurrent.futures.CancelledError()

        def resolve() -> None:
            if request.span is not None:
                _tracing.end(request.span, error)
            if not going:
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)  # type: ignore[arg-type]

        breakers, ticket = outbox.breakers, request.ticket
        if ticket is not None and breakers is not None:
            if ticket.shared:
                # A call to Redis, so not in the listener's (or the clock's)
                # thread; the future is resolved once the breaker has it, as
                # request() raises after it: a caller that asks again at once
                # finds the breaker open.
                def record_then_resolve() -> None:
                    try:
                        breakers.record(ticket, error)
                    finally:
                        resolve()

                if self.timers.defer(record_then_resolve):
                    return
            else:
                breakers.record(ticket, error)
        resolve()
