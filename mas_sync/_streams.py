"""The reliable transport: the agent's inbox is a Redis stream read through a consumer group.

A reliable agent reads ``agent.stream:{id}`` through the group ``agents`` as
the consumer ``{id}-{instance}``, and still listens on ``agent.{id}`` (by a
:class:`~mas_sync._pubsub.PubSubTransport`) for peers that publish. Each
entry read is handed to the run with a :class:`Receipt`: the worker that
handles the message acknowledges it, tries it again, or moves it to the
dead-letter stream ``agent.dlq:{id}``. An entry stays in the group's pending
list until then, so a crash loses nothing: a restarted instance takes back
its own pending entries at once, and any instance takes those idle for
``visibility_timeout`` seconds (XAUTOCLAIM).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

from . import _wire
from ._errors import MASConnectionError, RedisCommandError
from ._options import AgentOptions
from ._pubsub import PubSubTransport
from ._redis import ANY_REDIS_ERROR, REDIS_ERRORS, close_client, make_client, redact_text
from ._redis import retire_connections
from ._scripts import load_script
from ._transport import Batch, Direct, TransportEvents

log = logging.getLogger(__name__)

#: Most entries one read (or one claim) takes.
READ_COUNT = 100
#: Longest a read blocks, in ms; a stop waits for it at most this long.
BLOCK_MS = 250
#: Seconds between two claim passes (XAUTOCLAIM of idle entries, the touch
#: that keeps this instance's own entries from looking idle, and a trim), at
#: most; a quarter of ``visibility_timeout`` (not under 0.05 s) when that is
#: shorter, so that an entry idle that long is taken within a quarter of it more.
CLAIM_INTERVAL = 1.0
#: Longest, in ms, that the reader lets acknowledgements gather before it
#: sends them in one XACK.
ACK_DELAY_MS = 5
#: Seconds the reader waits after a read that found entries (fewer than a
#: full batch) before it reads again, so that messages trickling in one at a
#: time are read several at once: fewer round trips for Redis and the
#: process, for at most this much more latency.
READ_LINGER = 0.001
#: Seconds between two passes that delete the consumers of instances gone.
CONSUMER_CLEANUP_INTERVAL = 60.0
#: Seconds without a read after which a consumer that holds nothing is gone.
CONSUMER_GONE_AFTER = 300.0
#: Seconds between two tries of a reader that lost Redis, at most.
MAX_BACKOFF = 2.0

Entry = Tuple[bytes, Optional[Dict[bytes, bytes]]]


def _id_order(raw_id: Optional[bytes]) -> Tuple[int, int]:
    """A stream entry id as a sort key (an entry Redis 6.2 answered nil for first)."""
    if raw_id is None:
        return (-1, -1)
    ms, _, seq = raw_id.partition(b"-")
    return int(ms), int(seq or 0)


#: The field of a requeued entry that holds its agent's word (see :data:`_wire.VOUCH`).
_VOUCH = _wire.VOUCH.encode()

class Receipt:
    """One delivery of a stream entry to this instance: how its handler settles it
    (a :class:`~mas_sync._transport.Receipt`).

    Attributes:
        entry_id: The entry's id in the stream.
        data: The message JSON (the entry's ``envelope``).
        vouch: The agent's word for an entry it requeued (the entry's
            ``vouch``), or None.
        attempts: Deliveries of the entry so far, this one included, as
            Redis counts them (crashes and other instances count).
    """

    __slots__ = ("transport", "entry_id", "data", "attempts", "vouch", "handling")

    def __init__(self, transport: "StreamTransport", entry_id: str, data: bytes,
                 attempts: int, vouch: Optional[bytes] = None) -> None:
        self.transport = transport
        self.entry_id = entry_id
        self.data = data
        self.attempts = attempts
        self.vouch = vouch
        self.handling = False  # a worker handles it (see _hand_over)

    @property
    def max_attempts(self) -> int:
        """Deliveries after which a failing message goes to the dead-letter stream."""
        return self.transport.max_attempts

    def ack(self) -> None:
        """The message was handled (and a request answered): remove it from the pending list."""
        # Held (and not taken back) until the XACK is out: see _Acks.
        self.transport.acks.add(self.entry_id)

    def dead_letter(self, error: str) -> None:
        """Move the message, with ``error`` and its attempts, to ``agent.dlq:{id}``; then ack it."""
        self.transport.dead_letter(self, error)

    def release(self) -> None:
        """Leave the entry pending (not handled here): it is delivered again later."""
        self.transport.release(self)

    def retry(self) -> bool:
        """Wait the backoff of this attempt, then take the entry again for one more attempt.

        Returns:
            True: handle it again (``attempts`` went up by one). False: the
            agent stops, or the entry is gone (acknowledged elsewhere); it is
            left as it is.
        """
        return self.transport.retry(self)


class _Acks:
    """Acknowledges entries in batches.

    A worker that acknowledges while other messages wait for a worker, or
    while the reader is between two reads, leaves its entry for later (up to
    :data:`READ_COUNT` of them): the reader sends them all, in one XACK,
    once they have gathered for :data:`ACK_DELAY_MS` (it reads with no
    longer a block meanwhile). A worker that finds none waiting while the
    reader is blocked in a read sends them itself. A stream of messages is
    thus acknowledged a batch at a time, not a round trip per message. An
    entry waits a few milliseconds to be acknowledged, except one left to a
    batch just as the reader began a read that blocks (no new entries): it
    waits for that read to end, :data:`BLOCK_MS` at most, or for the next
    worker to finish.

    Args:
        client: The run's command client.
        stream: The agent's stream.
        agent_id: Whose (for the log).
        waiting: How many messages wait for a worker (more than 0 also while
            the reader is between two reads).
        sent: Called with the ids of each XACK once it is answered (or
            failed): until then their entries are still pending in Redis,
            and the reader must not take them back as unhandled.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        agent_id: str,
        waiting: Callable[[], int],
        sent: Callable[[List[str]], None],
    ) -> None:
        self._client = client
        self._stream = stream
        self._agent_id = agent_id
        self._waiting = waiting
        self._sent = sent
        self._lock = threading.Lock()
        self._ids: List[str] = []
        self._flushing = False
        self._since = 0.0  # when the oldest entry waiting was added

    def add(self, entry_id: str) -> None:
        """Acknowledge ``entry_id``: now, or with the next batch if messages wait."""
        with self._lock:
            if not self._ids:
                self._since = time.monotonic()
            self._ids.append(entry_id)
            if self._flushing or (len(self._ids) < READ_COUNT and self._waiting() > 0):
                return  # the flushing thread takes it along, or the next batch does
            self._flushing = True
        self._send()

    def block_ms(self, longest: int) -> int:
        """How long the reader may block in a read: until those waiting are due."""
        if not self._ids:
            return longest
        left = ACK_DELAY_MS - (time.monotonic() - self._since) * 1000
        return max(1, min(longest, int(left)))

    def due(self) -> bool:
        """Whether those waiting have gathered long enough to be sent."""
        return bool(self._ids) and time.monotonic() - self._since >= ACK_DELAY_MS / 1000

    def flush(self) -> None:
        """Send what waits to be acknowledged (unless another thread is sending)."""
        with self._lock:
            if self._flushing or not self._ids:
                return
            self._flushing = True
        self._send()

    def _send(self) -> None:
        while True:
            with self._lock:
                ids, self._ids = self._ids, []
                if not ids:
                    self._flushing = False
                    return
            try:
                self._client.xack(self._stream, _wire.CONSUMER_GROUP, *ids)
                self._sent(ids)
            except ANY_REDIS_ERROR as exc:
                self._sent(ids)  # pending still: delivered again, so no longer held
                log.warning(
                    "Agent %s: could not acknowledge %d messages (they will be delivered"
                    " again): %s", self._agent_id, len(ids), exc,
                )
            except BaseException:
                with self._lock:
                    self._flushing = False
                raise


class StreamTransport:
    """Moves one run's messages with at-least-once delivery into the agent (Redis Streams).

    Sending is the pub/sub transport's (each target gets its stream or its
    channel). Receiving is a reader thread (``{name}-reader``) on the stream,
    plus the pub/sub listener on ``agent.{id}``.

    Args: as :class:`~mas_sync._pubsub.PubSubTransport`, and
        options: The agent's settings (instance, attempts, timeouts).
    """

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        agent_id: str,
        events: TransportEvents,
        thread_name: str,
        probe_interval: float,
        client_name: str,
        *,
        options: AgentOptions,
    ) -> None:
        self._url = url
        self._agent_id = agent_id
        self._events = events
        self.pubsub = PubSubTransport(
            client, url, agent_id, events, thread_name, probe_interval, client_name
        )
        assert options.instance is not None
        self.stream = _wire.stream_key(agent_id)
        self.consumer = _wire.consumer_name(agent_id, options.instance)
        self.max_attempts = options.max_attempts
        self._max_pending = options.max_pending
        self._visibility_ms = int(options.visibility_timeout * 1000)
        self._retry_delay = options.retry_delay
        self._maxlen = options.stream_maxlen
        self._visibility = options.visibility_timeout
        self._claim_interval = min(CLAIM_INTERVAL, max(0.05, options.visibility_timeout / 4))
        self._block_ms = max(1, min(BLOCK_MS, int(options.command_timeout * 500)))
        self._raw_args = (options.max_workers + 2, options.command_timeout, client_name)
        self._raw: Optional[redis.Redis] = None
        self.acks = _Acks(client, self.stream, agent_id, self._waiting, self._settle_ids)
        self._client = client
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: Dict[str, Receipt] = {}
        self._reading = False
        self._reading_at_stop = False
        self._own_left = False  # entries this consumer holds and does not handle
        # Entries the queue refused (released), by id: the attempts they had. Taken
        # back, they keep that count: a refusal is no delivery.
        self._released: Dict[str, int] = {}
        self._next_cleanup = 0.0
        self._claim_from = "0-0"
        self._in_read = False
        self.thread = threading.Thread(
            target=self._loop, name=thread_name.rsplit("-", 1)[0] + "-reader", daemon=True
        )

    def _waiting(self) -> int:
        """Messages that wait for a worker; at least 1 while the reader is between reads.

        While the reader is not blocked in its read, it sends what waits to
        be acknowledged before its next read: a worker need not.
        """
        if not self._in_read:
            return 1
        return self._max_pending - self._events.room()

    # -- Transport -------------------------------------------------------------

    def send(self, batch: Batch, direct: Direct = False) -> List[Optional[Exception]]:
        """As :meth:`PubSubTransport.send`."""
        return self.pubsub.send(batch, direct)

    def start(self) -> None:
        """Make the stream and group if needed, listen on the channel, start the reader."""
        size, timeout, client_name = self._raw_args
        # Entries are read as bytes: one that is not UTF-8 is a bad message,
        # to dead-letter, not an error that stops the reader.
        self._raw = make_client(
            self._url, size, decode=False, timeout=timeout, client_name=client_name
        )
        self._trim = self._raw.register_script(load_script("trim_stream"))
        try:
            self._ensure_group()
        except REDIS_ERRORS as exc:
            raise MASConnectionError(
                f"agent {self._agent_id!r}: cannot reach Redis to read"
                f" {self.stream}: {redact_text(str(exc), self._url)}"
            ) from exc
        except redis.RedisError as exc:
            raise RedisCommandError(
                f"agent {self._agent_id!r}: Redis refused the consumer group of"
                f" {self.stream}: {redact_text(str(exc), self._url)}"
            ) from exc
        self.pubsub.start()
        self.thread.start()

    @property
    def receiving(self) -> bool:
        """True while both the stream and the channel are read."""
        return self._reading and self.pubsub.receiving

    def moved(self) -> None:
        """Resubscribe on the new master; the reader's next read reconnects."""
        self.pubsub.moved()
        if self._raw is not None:
            retire_connections(self._raw)

    def stop(self, client: Any, deadline: float) -> None:
        """Stop reading (the reader ends after its current read) and listening."""
        self._reading_at_stop = self._reading
        self._stop.set()
        self.pubsub.stop(client, deadline)
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Hand over what was not handled, and close the reader's connections.

        Called once the workers are done. The entries this consumer still
        holds (queued when the stop came, or handed back) are marked idle
        for ``visibility_timeout``: the next claim pass of any instance,
        a new one included, takes them at once. Those a handler still
        handles (past the stop's timeout) are left as they are: taken
        after ``visibility_timeout``, as any slow handler's. Skipped when
        Redis was already unreachable.
        """
        if self._raw is None:
            return
        try:
            self.acks.flush()
            if self._reading_at_stop:
                self._hand_over()
        except ANY_REDIS_ERROR as exc:
            log.warning("Agent %s: could not hand over its pending entries (they are taken"
                        " after visibility_timeout): %s", self._agent_id, exc)
        finally:
            close_client(self._raw)

    def _hand_over(self) -> None:
        with self._lock:
            busy = {entry_id.encode() for entry_id, receipt in self._inflight.items()
                    if receipt.handling}
        start = "-"
        while True:
            pending = self._bytes.xpending_range(
                self.stream, _wire.CONSUMER_GROUP, start, "+", READ_COUNT, self.consumer
            )
            idle = [p["message_id"] for p in pending if p["message_id"] not in busy]
            if idle:
                self._bytes.xclaim(
                    self.stream, _wire.CONSUMER_GROUP, self.consumer, 0,
                    idle, idle=self._visibility_ms, justid=True,
                )
            if len(pending) < READ_COUNT:
                return
            start = "(" + pending[-1]["message_id"].decode()

    def threads(self) -> List[threading.Thread]:
        """The listener and the reader, once started."""
        return self.pubsub.threads() + ([self.thread] if self.thread.ident is not None else [])

    @property
    def bytes_client(self) -> Optional[redis.Redis]:
        """The client of raw bytes that reads the stream (None before start())."""
        return self._raw

    @property
    def _bytes(self) -> redis.Redis:
        raw = self._raw
        assert raw is not None, "start() makes the reader's client"
        return raw

    # -- what receipts do --------------------------------------------------------

    def settle(self, receipt: Receipt) -> None:
        """The entry is no longer handled here."""
        self._settle_ids([receipt.entry_id])

    def _settle_ids(self, entry_ids: List[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                self._inflight.pop(entry_id, None)

    def release(self, receipt: Receipt) -> None:
        """The queue had no room for the entry: the reader takes it back once it has."""
        with self._lock:
            self._inflight.pop(receipt.entry_id, None)
            self._released[receipt.entry_id] = receipt.attempts
        self._own_left = True

    def dead_letter(self, receipt: Receipt, error: str) -> None:
        """Add the entry to the dead-letter stream, then acknowledge it."""
        fields = _wire.dead_letter_fields(
            receipt.data, error, receipt.attempts, self.consumer, receipt.entry_id
        )
        try:
            self._bytes.xadd(
                _wire.dlq_key(self._agent_id), fields, maxlen=self._maxlen, approximate=True
            )
        except ANY_REDIS_ERROR as exc:
            log.warning(
                "Agent %s: could not dead-letter entry %s (it stays pending): %s",
                self._agent_id, receipt.entry_id, exc,
            )
            self.settle(receipt)
            return
        log.warning(
            "Agent %s: entry %s moved to %s after %d attempts: %s",
            self._agent_id, receipt.entry_id, _wire.dlq_key(self._agent_id),
            receipt.attempts, error,
        )
        self.acks.add(receipt.entry_id)

    def retry(self, receipt: Receipt) -> bool:
        delay = min(self._retry_delay * 2 ** (receipt.attempts - 1), self._visibility)
        if self._stop.wait(delay):
            self.settle(receipt)
            return False
        try:
            claimed = self._bytes.xclaim(
                self.stream, _wire.CONSUMER_GROUP, self.consumer, 0, [receipt.entry_id]
            )
        except ANY_REDIS_ERROR as exc:
            log.warning(
                "Agent %s: could not take entry %s again (it stays pending): %s",
                self._agent_id, receipt.entry_id, exc,
            )
            self.settle(receipt)
            return False
        if not claimed or claimed[0][1] is None:
            self.settle(receipt)
            return False
        receipt.attempts += 1
        return True

    # -- the reader --------------------------------------------------------------

    def _ensure_group(self) -> None:
        try:
            self._bytes.xgroup_create(self.stream, _wire.CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _loop(self) -> None:
        events = self._events
        setup = True
        failing = False  # Redis lost, logged once
        refused = False  # Redis refused to let it read, logged once
        backoff = 0.05
        next_claim = 0.0
        claiming = False
        while not self._stop.is_set():
            try:
                if setup:
                    self._ensure_group()
                    self._own_left = True
                    setup = False
                    self._reading = True
                    if failing:
                        failing = False
                        log.info("Agent %s: reading %s again", self._agent_id, self.stream)
                        events.reconnected()
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + self._claim_interval
                    self._touch()
                    self._trim(keys=[self.stream], args=[_wire.CONSUMER_GROUP, self._maxlen])
                    claiming, self._claim_from = True, "0-0"
                if claiming and events.room() > 0:
                    claiming = self._claim_idle()
                if self.acks.due():
                    self.acks.flush()
                room = events.room()
                if room <= 0:
                    self._stop.wait(0.005)
                    continue
                if self._own_left:  # older than any new entry: first
                    self._own_left = False  # (set again by an entry refused meanwhile)
                    if not self._take_own_pending(room):
                        self._own_left = True
                    continue
                self._in_read = True
                try:
                    reply = self._bytes.xreadgroup(
                        _wire.CONSUMER_GROUP, self.consumer, {self.stream: ">"},
                        count=min(room, READ_COUNT),
                        block=self.acks.block_ms(self._block_ms),
                    )
                finally:
                    self._in_read = False
                backoff = 0.05
                if refused:
                    refused = False
                    log.info("Agent %s: reading %s again", self._agent_id, self.stream)
                got = 0
                for _, entries in reply or ():
                    got += len(entries)
                    self._deliver(entries, None)
                if 0 < got < READ_COUNT:
                    # Messages are trickling in: let a few gather for the next read.
                    self._stop.wait(READ_LINGER)
            except REDIS_ERRORS as exc:
                self._reading = False
                setup = True
                if not failing:
                    failing = True
                    log.warning("Agent %s: lost Redis while reading %s: %s",
                                self._agent_id, self.stream, exc)
                    events.disconnected()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except redis.ResponseError as exc:
                setup = True
                if "NOGROUP" not in str(exc):  # the stream was deleted: make it again
                    if not refused:  # once until a read succeeds (NOREPLICAS, an ACL, ...)
                        refused = True
                        log.warning("Agent %s: Redis refused to let it read %s: %s",
                                    self._agent_id, self.stream, exc)
                        events.restarted(exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as exc:  # pragma: no cover - a defect; keep reading
                log.exception("Agent %s: the reader failed; starting again", self._agent_id)
                setup = True
                events.restarted(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._reading = False

    def _take_own_pending(self, room: int) -> bool:
        """Take back what this consumer holds and does not handle, ``room`` entries at most.

        At start (a restarted instance), after an outage, and after the queue
        refused an entry. Returns False when ``room`` ran out first.
        """
        with self._lock:
            held = set(self._inflight)
        start = "-"
        while not self._stop.is_set():
            pending = self._bytes.xpending_range(
                self.stream, _wire.CONSUMER_GROUP, start, "+", READ_COUNT, self.consumer
            )
            ids = [p["message_id"] for p in pending if p["message_id"].decode() not in held]
            if ids:
                ids = ids[:room]
                room -= len(ids)
                counts = {p["message_id"]: p["times_delivered"] + 1 for p in pending}
                entries = self._claim_own(ids, counts)
                # Deleted from the stream while pending: nothing to handle. Redis 7
                # leaves such entries out and drops them from the pending list;
                # Redis 6.2 answers nil for each (no id) and keeps them pending.
                claimed = {entry_id for entry_id, fields in entries if fields is not None}
                gone = [entry_id for entry_id in ids if entry_id not in claimed]
                if gone:
                    self._bytes.xack(self.stream, _wire.CONSUMER_GROUP, *gone)
                self._deliver(entries, counts)
                if room <= 0:
                    return False
            if len(pending) < READ_COUNT:
                with self._lock:
                    self._released.clear()  # all taken back, or no longer pending
                return True
            start = "(" + pending[-1]["message_id"].decode()
        return True

    def _claim_own(self, ids: List[bytes], counts: Dict[bytes, int]) -> List[Entry]:
        """Take back entries of this consumer, in order; ``counts`` gets their attempts.

        An entry that the queue refused keeps the delivery count it had (XCLAIM
        ``RETRYCOUNT``): only a delivery that reached no handler for another
        reason (a crash, an outage) counts again.
        """
        with self._lock:
            kept = {raw_id: self._released.pop(raw_id.decode()) for raw_id in ids
                    if raw_id.decode() in self._released}
        counts.update(kept)
        entries: List[Entry] = []
        fresh = [raw_id for raw_id in ids if raw_id not in kept]
        if fresh:
            entries += self._bytes.xclaim(
                self.stream, _wire.CONSUMER_GROUP, self.consumer, 0, fresh
            )
        for count in sorted(set(kept.values())):
            entries += self._bytes.xclaim(
                self.stream, _wire.CONSUMER_GROUP, self.consumer, 0,
                [raw_id for raw_id, n in kept.items() if n == count], retrycount=count,
            )
        if kept:
            entries.sort(key=lambda entry: _id_order(entry[0]))
        return entries

    def _touch(self) -> None:
        """Keep this instance's entries from looking idle; now and then, forget gone consumers."""
        with self._lock:
            held = list(self._inflight)
        if held:
            self._bytes.xclaim(
                self.stream, _wire.CONSUMER_GROUP, self.consumer, self._visibility_ms // 2,
                held, justid=True,
            )
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CONSUMER_CLEANUP_INTERVAL
            self._forget_gone_consumers()

    def _claim_idle(self) -> bool:
        """Take the entries idle elsewhere, a page at a time, as long as the workers have room.

        Returns:
            True when the workers ran out of room before the pending list was
            scanned to its end: the reader then reads no new entries, and
            goes on claiming once there is room, so that the entries of a
            crashed instance do not wait behind newer ones.
        """
        while True:
            room = self._events.room()
            if room <= 0:
                return True
            cursor, entries, *_ = self._bytes.xautoclaim(
                self.stream, _wire.CONSUMER_GROUP, self.consumer, self._visibility_ms,
                start_id=self._claim_from, count=min(room, READ_COUNT),
            )
            self._claim_from = cursor.decode() if isinstance(cursor, bytes) else cursor
            kept = [entry for entry in entries if entry[1] is not None]
            # Redis 6.2 answers nil for an entry deleted while pending, and the
            # claim makes it this consumer's: taking back its own drops it.
            if len(kept) < len(entries):
                self._own_left = True
            entries = kept
            if entries:
                pipe = self._bytes.pipeline(transaction=False)
                for entry_id, _ in entries:
                    pipe.xpending_range(self.stream, _wire.CONSUMER_GROUP, entry_id, entry_id, 1)
                counts = {p[0]["message_id"]: p[0]["times_delivered"]
                          for p in pipe.execute() if p}
                log.info("Agent %s: took %d idle entries of %s",
                         self._agent_id, len(entries), self.stream)
                self._events.reclaimed(len(entries))
                self._deliver(entries, counts)
            if self._claim_from == "0-0":
                return False

    def _forget_gone_consumers(self) -> None:
        """Delete the consumers of instances long gone that hold nothing.

        Every instance name makes a consumer (the default names change with
        each process); one that holds no entry and has not read for
        :data:`CONSUMER_GONE_AFTER` (a live one reads every few hundred ms)
        is removed. One that holds entries stays until they are claimed.
        """
        gone_ms = int(max(CONSUMER_GONE_AFTER, 2 * self._visibility) * 1000)
        for consumer in self._bytes.xinfo_consumers(self.stream, _wire.CONSUMER_GROUP):
            name = consumer["name"]
            if (consumer["pending"] == 0 and consumer["idle"] > gone_ms
                    and name != self.consumer.encode()):
                self._bytes.xgroup_delconsumer(self.stream, _wire.CONSUMER_GROUP, name)

    def _deliver(self, entries: Sequence[Entry], counts: Optional[Dict[bytes, int]]) -> None:
        events = self._events
        for raw_id, fields in entries:
            if fields is None:
                continue  # deleted from the stream while pending
            entry_id = raw_id.decode()
            attempts = counts.get(raw_id, 1) if counts is not None else 1
            # An entry without the field reads as an empty message: invalid,
            # so it is dead-lettered like any message that cannot be read.
            data = fields.get(_wire.ENVELOPE.encode(), b"")
            with self._lock:
                if entry_id in self._inflight:
                    continue  # being handled here already
                receipt = self._inflight[entry_id] = Receipt(
                    self, entry_id, data, attempts, fields.get(_VOUCH)
                )
            events.received(data, receipt)
        if events.batches:
            events.flush()
