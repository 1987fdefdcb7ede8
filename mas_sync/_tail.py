"""A live, decoded tail of what agents send each other, and of ``mas.system``, read from Redis alone.

For the command line (``mas_sync watch``) and the dashboard. It listens as
any subscriber would: on one server (or behind Sentinel) it subscribes to
the pattern ``agent.*`` (or to the channels of the agents asked for) and to
``mas.system``; on a Cluster, where sharded pub/sub has no patterns, it
subscribes to each registered agent's channel, and to a new agent's as soon
as ``mas.system`` announces it (and at the latest on the next rescan of the
registry). Messages to reliable agents travel in their streams
(``agent.stream:{id}``), which it reads from their end without joining the
consumer group, so it takes nothing from the agents.

It sees what passes while it runs: pub/sub keeps nothing for later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

import redis

from . import _json, _wire
from ._errors import MASConnectionError
from ._redis import REDIS_ERRORS, close_client, is_cluster, make_client
from ._registry import AgentRegistry

log = logging.getLogger(__name__)

#: Seconds between two rescans of the registry (reliable agents' streams; on
#: a Cluster, the agents' channels).
RESCAN_INTERVAL = 2.0
#: Seconds between two reads of the streams of reliable agents.
STREAM_POLL = 0.2
#: Characters of a payload shown in :attr:`TailEvent.summary`.
SUMMARY_LENGTH = 160

KINDS = ("message", "request", "reply", "error", "system")


@dataclass(frozen=True)
class TailEvent:
    """One message or system event, as the tail saw it pass.

    Attributes:
        number: Its running number in this tail (1, 2, 3, ...).
        at: When the tail read it (wall clock).
        kind: ``message``, ``request``, ``reply``, ``error`` (an error
            reply) or ``system`` (a ``mas.system`` event).
        channel: The channel, or the stream key for a reliable agent's
            message.
        sender: The sender's id (for a system event, the agent it is about).
        target: The target's id (None for a system event).
        size: The message's size in bytes, as sent.
        message_id: The message's id.
        correlation_id: The request's id, for requests and replies.
        summary: One line for people: the payload (shortened), or the event.
        payload: The decoded payload (markers removed), or the system event;
            None when the data is not JSON.
    """

    number: int
    at: float
    kind: str
    channel: str
    sender: Optional[str]
    target: Optional[str]
    size: int
    message_id: Optional[str]
    correlation_id: Optional[str]
    summary: str
    payload: Any

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict of this event."""
        return {
            "number": self.number, "at": self.at, "kind": self.kind, "channel": self.channel,
            "sender": self.sender, "target": self.target, "size": self.size,
            "message_id": self.message_id, "correlation_id": self.correlation_id,
            "summary": self.summary, "payload": self.payload,
        }


def decode_event(number: int, at: float, channel: str, data: bytes) -> TailEvent:
    """The event for ``data`` read on ``channel`` (a message, or a ``mas.system`` event).

    Never raises: data that is not a message is shown as it is.
    """
    size = len(data)
    try:
        document = _json.loads_strict(data)
    except (TypeError, ValueError):  # UnicodeDecodeError included
        document = None
    if channel == _wire.SYSTEM_CHANNEL:
        about = document.get("agent_id") if isinstance(document, dict) else None
        summary = _shorten(data)
        if isinstance(document, dict) and isinstance(document.get("type"), str):
            summary = f"{document['type']} {about}"
            if document.get("capabilities"):
                summary += f" {json.dumps(document['capabilities'])}"
        return TailEvent(number, at, "system", channel, _text(about), None, size,
                         None, None, summary, document)
    if not isinstance(document, dict):
        return TailEvent(number, at, "message", channel, None, _target_of(channel), size,
                         None, None, _shorten(data), None)
    payload = document.get("payload")
    kind, correlation_id = "message", None
    if isinstance(payload, dict):
        payload = dict(payload)
        correlation_id = _text(payload.pop(_wire.CORRELATION_ID, None))
        expects_reply = payload.pop(_wire.EXPECTS_REPLY, False)
        is_reply = payload.pop(_wire.IS_REPLY, False)
        if is_reply:
            kind = "error" if isinstance(payload.get(_wire.ERROR), dict) else "reply"
        elif expects_reply:
            kind = "request"
    summary = json.dumps(payload, ensure_ascii=False, default=str)
    if len(summary) > SUMMARY_LENGTH:
        summary = summary[:SUMMARY_LENGTH - 1] + "…"
    return TailEvent(
        number, at, kind, channel, _text(document.get("sender_id")),
        _text(document.get("target_id")) or _target_of(channel), size,
        _text(document.get("message_id")), correlation_id, summary, payload,
    )


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _shorten(data: bytes) -> str:
    text = data[:SUMMARY_LENGTH].decode("utf-8", "backslashreplace")
    return text + ("…" if len(data) > SUMMARY_LENGTH else "")


def _target_of(channel: str) -> Optional[str]:
    for prefix in ("agent.stream:", "agent."):
        if channel.startswith(prefix):
            return channel[len(prefix):]
    return None


class Tail:
    """Reads what passes between agents, from a thread of its own, into a ring buffer.

    Args:
        redis_url: The deployment (any URL form of mas_sync).
        agent_ids: Only what is sent to these agents (and the system events
            about them); None for every agent.
        maxlen: Events kept; the oldest are dropped first.
        on_event: Called with each event, in the tail's thread (it must not
            block; what it raises is logged).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        redis_url: str,
        agent_ids: Optional[Sequence[str]] = None,
        *,
        maxlen: int = 1000,
        on_event: Optional[Callable[[TailEvent], None]] = None,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, not {maxlen!r}")
        self.redis_url = redis_url
        self.agent_ids: Optional[List[str]] = (
            None if agent_ids is None else [_wire.validate_agent_id(a) for a in agent_ids]
        )
        self.on_event = on_event
        self._events: Deque[TailEvent] = deque(maxlen=maxlen)
        self._number = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._client: Optional[redis.Redis] = None
        self._thread: Optional[threading.Thread] = None
        self._streams: Dict[str, str] = {}  # stream key -> last id read
        self._channels: Set[str] = set()  # subscribed agent channels (Cluster, or ids given)
        self._rescan_at = 0.0
        self._since = "0-0"
        self.error: Optional[BaseException] = None

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        """Connect and start reading (returns at once; the thread subscribes).

        Raises:
            ValueError: ``redis_url`` is not a Redis URL.
            MASConnectionError: Redis cannot be reached.
        """
        client = make_client(self.redis_url, 4, decode=False, client_name="mas_sync-tail")
        try:
            client.ping()
        except REDIS_ERRORS as exc:
            close_client(client)
            raise MASConnectionError(f"cannot reach Redis for the tail: {exc}") from exc
        self._client = client
        # Stream entries are read from the tail's start on: their ids are
        # Redis's clock in ms.
        self._since = f"{AgentRegistry(client)._server_ms()}-0"
        self._thread = threading.Thread(target=self._run, name="mas-tail", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and close the connections; waits at most ``timeout`` s for the thread."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._client is not None:
            close_client(self._client)

    def __enter__(self) -> "Tail":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- reading the buffer ----------------------------------------------------

    def events(self, after: int = 0) -> Tuple[int, List[TailEvent]]:
        """The events numbered above ``after`` still kept, and the number of the newest event."""
        with self._changed:
            return self._number, [e for e in self._events if e.number > after]

    def wait(self, after: int = 0, timeout: float = 1.0) -> Tuple[int, List[TailEvent]]:
        """As :meth:`events`, waiting up to ``timeout`` s for one numbered above ``after``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._number <= after and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._number, [e for e in self._events if e.number > after]

    # -- the thread ------------------------------------------------------------

    def _add(self, channel: str, data: bytes) -> None:
        with self._changed:
            event = decode_event(self._number + 1, time.time(), channel, data)
            if event.kind == "system" and self.agent_ids is not None \
                    and event.sender not in self.agent_ids:
                return
            self._number += 1
            self._events.append(event)
            self._changed.notify_all()
        if event.kind == "system" and isinstance(event.payload, dict) \
                and event.payload.get("type") == "REGISTER":
            self._rescan_at = 0.0  # a new agent: its stream or channel, at once
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("Tail: on_event raised")

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
            except REDIS_ERRORS as exc:
                if self._stop.is_set():
                    break
                log.warning("Tail: lost Redis (%s); reconnecting", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # pragma: no cover - reported, and the thread ends
                self.error = exc
                log.exception("Tail: failed")
                break

    def _listen(self) -> None:
        client = self._client
        assert client is not None
        cluster = is_cluster(client)
        pubsub = client.pubsub()
        self._channels = set()
        try:
            if cluster:
                pubsub.ssubscribe(_wire.SYSTEM_CHANNEL)
            elif self.agent_ids is None:
                pubsub.psubscribe(_wire.agent_channel("*"))
                pubsub.subscribe(_wire.SYSTEM_CHANNEL)
            else:
                pubsub.subscribe(_wire.SYSTEM_CHANNEL,
                                 *(_wire.agent_channel(a) for a in self.agent_ids))
            self._rescan_at = 0.0
            next_poll = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= self._rescan_at:
                    self._rescan(client, pubsub if cluster else None)
                    self._rescan_at = now + RESCAN_INTERVAL
                if now >= next_poll:
                    self._poll_streams(client)
                    next_poll = now + STREAM_POLL
                if cluster:
                    message = pubsub.get_sharded_message(timeout=0.05)
                else:
                    message = pubsub.get_message(timeout=0.05)
                while message is not None:
                    if message.get("type") in ("message", "pmessage", "smessage"):
                        channel = message["channel"]
                        if isinstance(channel, bytes):
                            channel = channel.decode("utf-8", "backslashreplace")
                        self._add(channel, message["data"])
                    if cluster:
                        message = pubsub.get_sharded_message(timeout=0.0)
                    else:
                        message = pubsub.get_message(timeout=0.0)
        finally:
            try:
                pubsub.close()
            except Exception:  # pragma: no cover - the connection is gone anyway
                pass

    def _rescan(self, client: redis.Redis, pubsub: Any) -> None:
        """Find reliable agents' streams, and on a Cluster subscribe to new agents' channels."""
        from ._overview import list_agents

        wanted = None if self.agent_ids is None else set(self.agent_ids)
        for view in list_agents(client, include_inactive=True):
            if wanted is not None and view.id not in wanted:
                continue
            if view.delivery == "reliable":
                key = _wire.stream_key(view.id)
                if key not in self._streams:
                    self._streams[key] = self._since
            channel = _wire.agent_channel(view.id)
            if pubsub is not None and channel not in self._channels:
                pubsub.ssubscribe(channel)
                self._channels.add(channel)
        if pubsub is not None and wanted is not None:
            for agent_id in wanted:  # asked for, but not registered (yet)
                channel = _wire.agent_channel(agent_id)
                if channel not in self._channels:
                    pubsub.ssubscribe(channel)
                    self._channels.add(channel)

    def _poll_streams(self, client: redis.Redis) -> None:
        for key, last in list(self._streams.items()):
            entries = client.xrange(key, min=last if last == self._since else f"({last}",
                                    count=500)
            for entry_id, fields in entries:
                self._add(key, fields.get(_wire.ENVELOPE.encode(), b""))
                last = entry_id.decode()
            self._streams[key] = last
