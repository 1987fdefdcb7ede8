"""The seam between an agent's run and how its messages travel (pub/sub, or streams).

A run frames its messages (:mod:`._outbox`) and takes apart what arrives
(:mod:`._inbox`); a transport only moves bytes. It hands framed messages to
Redis for their targets, and passes each raw message that arrives for the
agent to :meth:`TransportEvents.received`, on a thread of its own. The run
knows a transport only through :class:`Transport`.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional, Protocol, Sequence, Tuple, Union

#: Framed messages to send: ``(target_id, data)`` pairs.
Batch = Sequence[Tuple[str, str]]
#: Whether messages go to their targets' channels whatever the targets read:
#: one flag for a batch, or one per message.
Direct = Union[bool, Sequence[bool]]


class Receipt(Protocol):
    """One delivery of a message that must be settled: what a stream transport hands over.

    Attributes:
        entry_id: The entry's id in the stream (Redis' clock when it was added).
        data: The message JSON.
        attempts: Deliveries so far, this one included.
        max_attempts: Deliveries after which a failing message is given up.
        vouch: Of an entry that its agent requeued: the agent's signed word
            for it (see :func:`mas_sync._signing.vouch`); None otherwise.
        handling: True while a worker handles it (set by the worker): a stop
            leaves such an entry with this instance, not handing it over.
    """

    entry_id: str
    data: bytes
    vouch: Optional[bytes]
    attempts: int
    max_attempts: int
    handling: bool

    def ack(self) -> None:
        """Handled (and a request answered): never deliver it again."""

    def dead_letter(self, error: str) -> None:
        """Given up, for ``error``: keep it apart, and never deliver it again."""

    def release(self) -> None:
        """Not handled here: deliver it again later."""

    def retry(self) -> bool:
        """Wait the backoff, then take it again for one more attempt (False: leave it)."""


class TransportEvents(Protocol):
    """What a transport tells its run; each is called on the transport's own thread."""

    def received(self, data: bytes, receipt: Optional[Receipt] = None) -> None:
        """One raw message for the agent. Must not block for long, nor raise.

        ``receipt`` comes with a message read from a stream: whoever handles
        the message settles it (acknowledge, try again, dead-letter).
        """

    def flush(self) -> None:
        """The messages passed so far are all there is for now: the transport is about to wait.

        Called after a batch of :meth:`received` (a stream read, or a pub/sub
        connection whose buffer ran dry) when :attr:`batches` is true.
        """

    #: Whether the run wants :meth:`flush` calls (they cost the transport a
    #: look at its connection after each message that ends a batch).
    batches: bool

    def room(self) -> int:
        """How many more messages the workers take now (a stream is read no faster)."""

    def reclaimed(self, n: int) -> None:
        """``n`` entries left by another consumer (crashed, or stopped) were taken."""

    def disconnected(self) -> None:
        """The connection that receives was lost (or found dead)."""

    def reconnected(self) -> None:
        """Receiving again after an outage; messages sent meanwhile may be lost."""

    def restarted(self, error: BaseException) -> None:
        """Receiving failed for another reason than a lost connection, and starts over."""

    def failed(self, error: BaseException) -> None:
        """Receiving cannot go on: the agent must stop."""


class Transport(Protocol):
    """How one run's messages leave for their targets and reach the agent."""

    def send(self, batch: Batch, direct: Direct = False) -> List[Optional[Exception]]:
        """Hand framed messages to Redis; returns once Redis answered every one.

        Each goes to its target's stream when the target reads one (see
        :mod:`._routes`), else to its channel; ``direct`` publishes them
        (replies: only the run waiting for one can use it).

        Runs in the caller's thread, inside the run's call policy
        (:class:`~mas_sync._calls.CallGate`): it raises redis-py's errors
        for a failure of the whole batch.

        Returns:
            Per message, None, or the error Redis refused that one with.
        """

    def start(self) -> None:
        """Start receiving; returns once messages for the agent are received.

        Raises:
            MASConnectionError: Redis could not be reached.
            RedisCommandError: Redis refused what receiving needs (an ACL).
        """

    @property
    def receiving(self) -> bool:
        """True while messages for the agent are received (not in an outage)."""

    def moved(self) -> None:
        """Redis' master moved (a Sentinel failover): reconnect to the new one."""

    def stop(self, client: Any, deadline: float) -> None:
        """Stop receiving: nothing reaches ``received`` once this returns (by ``deadline``).

        ``client`` is a Redis client whose timeouts fit the stop's.
        """

    def close(self) -> None:
        """Close what the transport opened; after :meth:`stop`, once the workers are done."""

    def threads(self) -> List[threading.Thread]:
        """The threads the transport started, for joins and ownership checks."""
