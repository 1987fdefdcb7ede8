"""The receive side of a run: size check, parsing, markers, gap counting, routing replies."""

from __future__ import annotations

import logging
import threading
from typing import List, Optional, Union

from pydantic import ValidationError

from . import _tracing
from ._admission import Admission
from ._message import AgentMessage, ReplySender, weak_reply_sender
from ._requests import PendingRequests
from ._stats import Counters, GapTracker
from ._transport import Receipt
from ._workers import OrderedPool

log = logging.getLogger(__name__)

#: Messages held for :meth:`Inbox.flush` at most: a longer batch is flushed at once.
MAX_HELD = 100


class Inbox:
    """Takes apart each raw message that reaches the agent, and sends it on its way.

    A reply goes to the request that waits for it (never to a handler);
    anything else is queued for the workers, in order per sender, or dropped
    and counted when ``max_pending`` messages already wait. :meth:`receive`
    runs on the transport's thread, and never blocks on a handler.

    Args:
        agent_id: Whose messages, for log lines.
        max_message_bytes: Larger messages are dropped unread.
        max_pending: The workers' queue bound, for log lines.
        pool: The workers that run the handlers.
        requests: The run's requests waiting for replies.
        counters: The agent's counters.
        gaps: The agent's gap tracker.
        reply: The run's reply function; each message gets a weak reference to it.
        instance: A reliable agent's instance: replies meant for another
            instance of the agent (each hears them on ``agent.{id}``) are
            ignored. None for a pub/sub agent.
        admission: Checks signatures (see :mod:`._admission`): here, of
            every message, before a reply is given to its request or any
            other message is queued; None checks nothing. With a keyring,
            the messages that arrive together are held until the transport
            calls :meth:`flush`, and their nonces recorded in one call.
    """

    def __init__(
        self,
        agent_id: str,
        max_message_bytes: int,
        max_pending: int,
        pool: OrderedPool,
        requests: PendingRequests,
        counters: Counters,
        gaps: GapTracker,
        reply: ReplySender,
        instance: Optional[str] = None,
        admission: Optional[Admission] = None,
    ) -> None:
        self.agent_id = agent_id
        self.admission = admission
        #: Whether messages are held until :meth:`flush`.
        self.holds = admission is not None and admission.keyring is not None
        self._held: List[AgentMessage] = []
        self._held_lock = threading.Lock()
        self.max_message_bytes = max_message_bytes
        self.max_pending = max_pending
        self.pool = pool
        self.requests = requests
        self.counters = counters
        self.gaps = gaps
        self.instance = instance
        self._reply = weak_reply_sender(reply)
        self._overflowing = 0

    def receive(self, data: bytes, receipt: Optional[Receipt] = None) -> None:
        """Parse one raw message and route or queue it.

        A message read from a stream comes with its ``receipt``: one that
        cannot be read goes to the dead-letter stream (nothing is lost), one
        that finds the queue full stays pending, to be delivered again.
        """
        agent_id = self.agent_id
        self.counters.add("received")
        if len(data) > self.max_message_bytes:
            self.counters.add("invalid")
            log.warning(
                "Agent %s: dropped a message of %d bytes (max_message_bytes is %d)",
                agent_id, len(data), self.max_message_bytes,
            )
            if receipt is not None:
                self.counters.add("dead_lettered")
                receipt.dead_letter(f"larger than max_message_bytes ({self.max_message_bytes})")
            return
        try:
            message = parse_message(data)
        except (ValidationError, ValueError) as exc:
            self.counters.add("invalid")
            log.warning(
                "Agent %s: dropped an invalid message %.200r: %s",
                agent_id, data, first_error(exc),
            )
            if receipt is not None:
                self.counters.add("dead_lettered")
                receipt.dead_letter(f"not a valid agent message: {first_error(exc)}")
            return
        message._reply = self._reply
        admission = self.admission
        if admission is not None:
            admission.read(data, message, receipt)
        if message.seq is not None and message.sender_run is not None:
            self.gaps.observe(message.sender_id, message.sender_run, message.seq)
        if message.is_reply:
            if receipt is not None:
                receipt.ack()  # a reply is of use to a waiting request only
            target_instance = message.target_instance
            if target_instance is not None and target_instance != self.instance:
                return  # for another instance of this agent
            if admission is not None:
                refusal = admission.check_reply(message)
                if refusal is not None:
                    admission.count(message, refusal, "reply")
                    return
            # Replies go to the thread waiting in request(), never to on_message.
            assert message.correlation_id is not None
            if not self.requests.resolve(message.correlation_id, message):
                self.counters.add("replies_dropped")
                log.warning(
                    "Agent %s: dropped reply %s from %s: no request %s waits for it"
                    " from that agent (late, or not from the agent asked)",
                    agent_id, message.message_id, message.sender_id, message.correlation_id,
                )
            return
        if receipt is not None:
            message._receipt, message._attempt = receipt, receipt.attempts
        if self.holds:
            with self._held_lock:
                self._held.append(message)
                full = len(self._held) >= MAX_HELD
            if full:
                self.flush()
            return
        self.queue(message, receipt)

    def flush(self) -> None:
        """Record the nonces of the messages held (one Redis call), then queue them, in order."""
        with self._held_lock:
            held, self._held = self._held, []
        if not held:
            return
        assert self.admission is not None
        self.admission.record_nonces(held)
        for message in held:
            self.queue(message, message._receipt)

    def queue(self, message: AgentMessage, receipt: Optional[Receipt]) -> None:
        """Queue ``message`` for the workers; what the queue has no room for is dropped or left."""
        agent_id = self.agent_id
        if self.pool.submit(message.sender_id, message):
            if self._overflowing:
                log.warning(
                    "Agent %s: queue has room again; %d messages were dropped",
                    agent_id, self._overflowing,
                )
                self._overflowing = 0
            return
        if receipt is not None:
            receipt.release()  # delivered again later: nothing is dropped
            return
        self.counters.add("dropped_overflow")
        if not self._overflowing:
            log.warning(
                "Agent %s: %d messages wait for a worker (max_pending); dropping"
                " message %s from %s and those that follow until there is room",
                agent_id, self.max_pending, message.message_id, message.sender_id,
            )
        self._overflowing += 1


def parse_message(data: Union[bytes, str]) -> AgentMessage:
    """The message in ``data``, its request/reply markers taken out of the payload.

    Its trace fields (``traceparent``, ``tracestate``) are kept for the
    handler's span when tracing is on; malformed ones are ignored.

    Raises:
        ValidationError, ValueError: not a valid agent message.
    """
    message = AgentMessage.model_validate_json(data)
    message._take_markers()
    if _tracing.ENABLED and _tracing.on():
        _tracing.read(data, message)
    return message


def first_error(exc: Exception) -> str:
    """The first problem a parse or validation error names, in one line."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "message"
        return f"{where}: {err.get('msg')}"
    return str(exc)

