"""A thread that reads one pub/sub channel on a connection of its own."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional

import redis

from . import _wire
from ._errors import MASConnectionError
from ._redis import (
    ANY_REDIS_ERROR,
    COMMAND_TIMEOUT,
    REDIS_ERRORS,
    DeadConnection,
    close_client,
    is_cluster,
    make_client,
    publish,
    redact_text,
    redact_url,
)

log = logging.getLogger(__name__)

#: Seconds one read blocks; bounds how late the thread notices a stop when
#: the wake-up cannot be published.
POLL_INTERVAL = 1.0
#: Longest pause between two attempts to resubscribe after a lost connection.
MAX_BACKOFF = 5.0
#: Failures in a row, other than a lost connection (Redis refusing to
#: subscribe, an unexpected error), after which the listener gives up.
MAX_FAILURES = 5
#: Bytes the thread asks of the socket per read. The thread spends its life
#: blocked in a read that holds a buffer of this size (redis-py's default is
#: 32 KiB): with a thousand agents in a process, that is 28 MiB saved; a
#: larger message just takes more reads.
READ_SIZE = 4096


class ChannelListener:
    """Owns a daemon thread that subscribes to ``channel`` and passes on each message.

    The thread alone owns its PubSub object, as redis-py requires. It reads
    with a bounded wait, so it notices :meth:`stop` promptly; to make it
    return at once, the same connection also subscribes to a private wake-up
    channel (:func:`~mas_sync._wire.wake_channel`, in the same cluster slot)
    on which :meth:`stop` publishes. Nothing is ever published on
    ``channel`` itself, so its other subscribers see only real messages.
    When Redis refuses the wake-up channel (an ACL that does not allow
    :func:`~mas_sync._wire.wake_channel_pattern`), a warning says so once and the thread reads
    without it: a stop then waits for the end of the current bounded read.

    Watchdog: when nothing has arrived for ``probe_interval`` seconds, the
    thread sends PING on its own connection; when neither the answer nor any
    message arrives within ``probe_timeout``, the connection is taken for
    dead (a half-open socket, say) and replaced. A lost connection is logged
    once, retried with capped exponential backoff and jitter, and logged again
    once resubscribed. redis-py's own silent retries are off for this
    connection, so that no outage goes unnoticed.

    Supervision: any other failure (Redis refusing the subscription, say for
    want of permission, or an unexpected error, ``on_data`` raising included)
    is logged and the thread starts over with the same backoff; after
    ``MAX_FAILURES`` of them in a row, with no subscription in between, it
    gives up and calls ``on_fatal``. A lost connection never makes it give
    up: Redis may come back.

    Args:
        url: The Redis URL.
        channel: The channel to read.
        on_data: Called in the listener thread with each message's raw bytes.
            It must not block for long and must not raise.
        on_idle: Called in the listener thread after one or more
            ``on_data`` calls, once the connection holds no further message
            (the thread is about to wait) and ``idle_after`` has passed since
            the first of them; None: not called.
        on_tick: Called in the listener thread each time the connection
            holds no further message: after a burst, and after each bounded
            wait (at least every ``min(1, probe_timeout)`` seconds while the
            channel is quiet). It returns the seconds within which it wants
            to be called again (shortening the next wait), or None. None:
            not called.
        name: The thread name.
        owner: Who owns the listener, for log lines.
        on_disconnect: Called in the listener thread when the connection is lost.
        on_reconnect: Called in the listener thread after each resubscription.
        on_restart: Called in the listener thread with the error, before it
            starts over after a failure that is not a lost connection.
        on_fatal: Called in the listener thread with the last error when it
            gives up; the thread ends after it returns.
        probe_interval: Seconds of silence before a PING.
        probe_timeout: Seconds to wait for the answer to a PING.
        client_name: The connection's name in ``CLIENT LIST``.
        idle_after: Seconds to wait for more messages after the first one
            that ``on_idle`` has not seen yet, so that it sees them together
            (at the cost of that much latency); 0: none.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        on_data: Callable[[bytes], None],
        name: str,
        owner: str,
        on_idle: Optional[Callable[[], None]] = None,
        on_disconnect: Optional[Callable[[], None]] = None,
        on_reconnect: Optional[Callable[[], None]] = None,
        on_restart: Optional[Callable[[BaseException], None]] = None,
        on_fatal: Optional[Callable[[BaseException], None]] = None,
        probe_interval: float = 5.0,
        probe_timeout: float = 2.0,
        client_name: Optional[str] = None,
        idle_after: float = 0.0,
        on_tick: Optional[Callable[[], Optional[float]]] = None,
    ) -> None:
        self.url = url
        self.channel = channel
        self._on_data = on_data
        self._on_idle = on_idle
        self._idle_after = idle_after
        self._on_tick = on_tick
        self._owner = owner
        self._on_disconnect = on_disconnect
        self._on_reconnect = on_reconnect
        self._on_restart = on_restart
        self._on_fatal = on_fatal
        self._failures = 0  # failures in a row, lost connections aside
        self._receiving = False
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._client = make_client(
            url, 1, decode=False, client_name=client_name, read_size=READ_SIZE
        )
        # Redis Cluster: sharded pub/sub (SSUBSCRIBE), on the node that owns
        # the channel's slot.
        self._sharded = is_cluster(self._client)
        self._stop = threading.Event()
        self._kick = threading.Event()  # cuts a backoff short: stop() or reset()
        self._ready = threading.Event()
        self._subscribed = False  # confirmed at least once
        self._lost = False  # between a lost connection and its resubscription
        self._backoff = 0.1
        self._reset = False
        self._wake_channel = _wire.wake_channel(channel)
        self._wake_bytes = self._wake_channel.encode()
        self._use_wake = True  # until Redis refuses the wake-up channel
        self._wake_confirmed = False  # in the current subscription
        self._channel = channel.encode()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def launch(self) -> None:
        """Start the thread, which connects and subscribes, without waiting for it.

        For a caller with other work to do meanwhile; :meth:`start` then waits
        for the confirmation (and :meth:`stop` undoes it).
        """
        if self.thread.ident is None:
            self.thread.start()

    def start(self) -> None:
        """Start the thread (unless :meth:`launch` did) and return once subscribed.

        Raises:
            MASConnectionError: the subscription failed; the thread has ended
                and the connection is closed.
        """
        self.launch()
        if not self._ready.wait(COMMAND_TIMEOUT) or self.error is not None:
            self._stop.set()
            self.thread.join(COMMAND_TIMEOUT)
            self._close()
            raise MASConnectionError(
                f"{self._owner}: could not subscribe to {self.channel!r} at"
                f" {redact_url(self.url)}:"
                f" {redact_text(str(self.error), self.url) if self.error else 'timed out'}"
            ) from self.error

    @property
    def receiving(self) -> bool:
        """True while the subscription is confirmed and not known to be lost."""
        return self._receiving and not self._stop.is_set()

    def reset(self) -> None:
        """Ask the thread to drop its connection and subscribe again (any thread).

        A thread waiting to retry after a lost connection retries at once.
        """
        self._reset = True
        self._kick.set()

    def stop(self, publisher: Optional[redis.Redis], deadline: float) -> bool:
        """Stop reading, wake the thread through ``publisher``, join it until ``deadline``.

        Returns:
            True when the thread has ended.
        """
        self._stop.set()
        self._kick.set()
        if publisher is not None and self._use_wake and self.thread.is_alive():
            try:
                publish(publisher, self._wake_channel, b"stop")
            except ANY_REDIS_ERROR:
                pass  # the thread notices the stop within POLL_INTERVAL anyway
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            return False
        self._close()
        return True

    def _close(self) -> None:
        try:
            close_client(self._client)
        except Exception:  # pragma: no cover - closing is best effort
            log.debug("%s: error closing the pub/sub client", self._owner, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                # One command per channel, the wake-up channel first: a refusal
                # that comes before its confirmation is about it, and once
                # ``channel`` is confirmed, stop() can wake the thread.
                subscribe = pubsub.ssubscribe if self._sharded else pubsub.subscribe
                self._wake_confirmed = False
                if self._use_wake:
                    subscribe(self._wake_channel)
                subscribe(self.channel)
                self._read(pubsub)
            except REDIS_ERRORS as exc:
                self._receiving = False
                if self._stop.is_set():
                    break
                if not self._subscribed:
                    self.error = exc  # start() reports it
                    self._ready.set()
                    break
                if not self._lost:
                    self._lost = True
                    log.warning(
                        "%s: lost the subscription to %s (%s); reconnecting",
                        self._owner, self.channel, exc,
                    )
                    if self._on_disconnect is not None:
                        self._on_disconnect()
                self._pause()
            except Exception as exc:
                self._receiving = False
                if self._stop.is_set():
                    break
                if self._refuses_wake(exc):
                    continue  # at once, without the wake-up channel
                if not self._subscribed:
                    self.error = exc
                    self._ready.set()
                    break
                self._failures += 1
                if self._failures >= MAX_FAILURES:
                    log.error(
                        "%s: listener failed %d times in a row, last with %r; giving up",
                        self._owner, self._failures, exc,
                    )
                    self.error = exc
                    if self._on_fatal is not None:
                        self._on_fatal(exc)
                    break
                log.exception("%s: listener failed; starting it again", self._owner)
                if self._on_restart is not None:
                    self._on_restart(exc)
                self._pause()
            except BaseException as exc:  # SystemExit, KeyboardInterrupt in this thread
                self._receiving = False
                self.error = exc
                self._ready.set()
                raise
            finally:
                try:
                    pubsub.close()
                except Exception:  # pragma: no cover - the connection is gone anyway
                    pass

    def _refuses_wake(self, exc: Exception) -> bool:
        """True, once, when ``exc`` is Redis refusing the wake-up channel; stop using it."""
        if not (
            self._use_wake
            and not self._wake_confirmed
            and isinstance(exc, redis.exceptions.NoPermissionError)
        ):
            return False
        self._use_wake = False
        pattern = _wire.wake_channel_pattern(self._channel.decode())
        log.warning(
            "%s: Redis refuses the wake-up channel (%s); allow the channels"
            " %s (ACL: &%s, as python -m mas_sync acl prints) for a prompt stop(),"
            " which otherwise takes up to %s s",
            self._owner, exc, pattern, pattern, POLL_INTERVAL,
        )
        return True

    def _pause(self) -> None:
        """Wait before the next attempt: backoff with jitter, cut short by stop() or reset()."""
        if self._kick.wait(self._backoff * (0.5 + random.random())):
            self._kick.clear()
            self._reset = False
            self._backoff = 0.1
        else:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _read(self, pubsub: redis.client.PubSub) -> None:
        """Read until stopped; raise a Redis error when the connection is lost."""
        last_seen = time.monotonic()
        probe_sent: Optional[float] = None
        poll = min(POLL_INTERVAL, self._probe_timeout)
        on_idle, on_tick = self._on_idle, self._on_tick
        delivered = False  # on_data was called since on_idle (on_tick) last was
        hold = self._idle_after if on_idle is not None else 0.0
        held_until = 0.0  # with a hold: on_idle is called by then at the latest
        tick_wait = poll
        while not self._stop.is_set():
            if self._reset:
                self._reset = False
                self._kick.clear()
                raise DeadConnection("reset requested")
            if not delivered:
                wait = tick_wait
            elif hold:
                wait = max(0.0, held_until - time.monotonic())
            else:
                wait = 0.0
            if self._sharded:
                message = pubsub.get_sharded_message(timeout=wait)
            else:
                message = pubsub.get_message(timeout=wait)
            now = time.monotonic()
            if message is None and on_tick is not None:
                wish = on_tick()
                tick_wait = poll if wish is None else min(poll, max(0.01, wish))
            if message is None and delivered:
                delivered = False
                if on_idle is not None:
                    on_idle()
                continue
            if message is None:
                if self._sharded:
                    continue  # redis-py watches the shard connections itself
                if probe_sent is not None:
                    if now - probe_sent > self._probe_timeout:
                        raise DeadConnection(f"no answer to PING within {self._probe_timeout} s")
                elif now - last_seen > self._probe_interval:
                    pubsub.ping()
                    probe_sent = now
                continue
            last_seen = now
            probe_sent = None
            kind = message["type"]
            if isinstance(kind, bytes):
                kind = kind.decode()
            if message["channel"] != self._channel:
                if message["channel"] == self._wake_bytes:
                    self._wake_confirmed = True  # or the wake-up: the loop checks the stop
                continue  # (a PONG has no channel)
            if kind == "message" or kind == "smessage":
                if not delivered and hold:
                    held_until = now + hold
                self._on_data(message["data"])
                delivered = on_idle is not None or on_tick is not None
            elif kind == "subscribe" or kind == "ssubscribe":
                self._subscribed = True
                self._receiving = True
                self._failures = 0
                self._ready.set()
                self._backoff = 0.1
                if self._lost:
                    self._lost = False
                    log.info("%s: resubscribed to %s", self._owner, self.channel)
                    if self._on_reconnect is not None:
                        self._on_reconnect()
