"""The wire contract shared with the async MAS framework.

Every Redis key, pub/sub channel and message field that mas_sync reads or
writes is built here, and nowhere else, so that sync and async agents can share
one deployment. See ``WIRE.md`` of the MAS framework for the contract itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from redis.crc import key_slot

from ._json import check_reserved, check_text, dumps_object, loads_strict

#: Prefix of the registration hash ``agent:{id}``; also the SCAN pattern stem.
AGENT_KEY_PREFIX = "agent:"
#: SCAN pattern that finds registration hashes (and heartbeat keys, to skip).
AGENT_KEY_PATTERN = "agent:*"
#: Suffix that makes the heartbeat key of an agent out of its registration key.
HEARTBEAT_KEY_SUFFIX = ":heartbeat"
#: Channel on which agents announce REGISTER and DEREGISTER.
SYSTEM_CHANNEL = "mas.system"

STATUS_ACTIVE = "ACTIVE"
STATUS_INACTIVE = "INACTIVE"

#: Payload markers of request/reply, as the async framework 0.2.0 sends them.
CORRELATION_ID = "_correlation_id"
EXPECTS_REPLY = "_expects_reply"
IS_REPLY = "_is_reply"
#: mas_sync's own marker: a reply that reports an error instead of a result,
#: ``{"type": ..., "message": ..., "details": [...]}``. Async peers see a key.
ERROR = "_error"
#: Payload keys that only the library sets, and that a caller's payload may
#: not hold. In any message, the request/reply markers would be taken out of
#: the payload by a mas_sync receiver (or make it drop the message, or take it
#: for a request or a reply), and in a request or a reply they would be
#: overwritten.
RESERVED_KEYS = frozenset((CORRELATION_ID, EXPECTS_REPLY, IS_REPLY))
#: Reserved in a reply only, where a mas_sync requester reads it as an error
#: reply; elsewhere it is an ordinary key.
RESERVED_REPLY_KEYS = RESERVED_KEYS | {ERROR}
#: Payload key that names the action, for typed handlers.
ACTION = "action"
#: Extra top-level message fields (mas_sync's own; async peers ignore them):
#: the W3C Trace Context of the sender's span (``send agent.{id}``), set when
#: OpenTelemetry is installed and configured; a receiver's handler span
#: (``process agent.{id}``) is its child. Malformed ones are ignored.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: Longest agent id accepted; Redis allows more, humans and logs do not.
MAX_AGENT_ID_LENGTH = 256

# Characters that break the key scheme (":" separates key parts), SCAN/PSUBSCRIBE
# glob patterns ("*", "?", "[", "]", "\\") or logs (white space, control chars).
_FORBIDDEN_ID_CHARS = re.compile(r"[:*?\[\]\\\s\x00-\x1f\x7f]")


def validate_agent_id(agent_id: object, what: str = "agent id") -> str:
    """Return ``agent_id`` if it is safe to use in keys, channels and patterns.

    Raises:
        TypeError: ``agent_id`` is not a string.
        ValueError: it is empty, too long, holds a character that would
            break the key scheme or a SCAN pattern, or is not valid UTF-8
            text (a lone surrogate).
    """
    if not isinstance(agent_id, str):
        raise TypeError(f"{what} must be a str, not {type(agent_id).__name__}")
    if not agent_id:
        raise ValueError(f"{what} must not be empty")
    if len(agent_id) > MAX_AGENT_ID_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_AGENT_ID_LENGTH} characters")
    bad = _FORBIDDEN_ID_CHARS.search(agent_id)
    if bad:
        raise ValueError(
            f"{what} {agent_id!r} contains {bad.group()!r}; ids may not contain"
            " ':', '*', '?', '[', ']', '\\', white space or control characters"
        )
    if not agent_id.isascii():
        check_text(agent_id, f"{what} {agent_id!r}")
    return agent_id


def validate_capabilities(capabilities: object, what: str = "capabilities") -> List[str]:
    """Return ``capabilities`` as a list of non-empty strings.

    Raises:
        TypeError: not a list/tuple/set of strings (a bare string is refused,
            since ``"nlp"`` would otherwise read as three capabilities).
        ValueError: a capability is empty, or is not valid UTF-8 text (a
            lone surrogate).
    """
    if capabilities is None:
        return []
    if isinstance(capabilities, (str, bytes)) or not isinstance(
        capabilities, (list, tuple, set, frozenset)
    ):
        raise TypeError(
            f"{what} must be a list of strings, not {type(capabilities).__name__}"
        )
    result = []
    for cap in capabilities:
        if not isinstance(cap, str):
            raise TypeError(f"{what} must be strings, got {type(cap).__name__}")
        if not cap:
            raise ValueError(f"{what} must not contain an empty string")
        if not cap.isascii():
            check_text(cap, f"{what}[{len(result)}] {cap!r}")
        result.append(cap)
    return result


# --- keys and channels -------------------------------------------------------


def agent_key(agent_id: str) -> str:
    """Registration hash of an agent: ``agent:{id}``."""
    return f"agent:{agent_id}"


def heartbeat_key(agent_id: str) -> str:
    """Heartbeat string with a TTL: ``agent:{id}:heartbeat``."""
    return agent_key(agent_id) + HEARTBEAT_KEY_SUFFIX


#: Suffix of the key of an agent's counters, ``agent:{id}:stats`` (mas_sync's
#: own: async agents write none, and their scans skip keys with a second ``:``).
STATS_KEY_SUFFIX = ":stats"


def stats_key(agent_id: str) -> str:
    """An agent's counters, one field per run or instance: ``agent:{id}:stats``."""
    return agent_key(agent_id) + STATS_KEY_SUFFIX


def state_key(agent_id: str) -> str:
    """State hash of an agent: ``agent.state:{id}``."""
    return f"agent.state:{agent_id}"


def agent_channel(agent_id: str) -> str:
    """Pub/sub channel on which an agent receives messages: ``agent.{id}``."""
    return f"agent.{agent_id}"


# --- reliable delivery (the layout of the async framework's 0.3 series) ------

#: The consumer group through which the instances of a reliable agent read its stream.
CONSUMER_GROUP = "agents"
#: The field of a stream entry that holds the message JSON, as pub/sub carries it.
ENVELOPE = "envelope"
#: The registration field that says how an agent receives: ``reliable`` for a
#: stream; pub/sub when the field is missing (as async 0.2 agents register).
DELIVERY_FIELD = "delivery"
DELIVERY_RELIABLE = "reliable"
#: Prefix of the registration fields of a reliable agent's instances,
#: ``instance:{name}``, each ``{expiry in ms on Redis's clock} {token}``
#: (mas_sync's own: async agents neither write nor read them).
INSTANCE_FIELD_PREFIX = "instance:"


def live_instances(fields: Mapping[bytes, bytes], now_ms: int) -> int:
    """How many ``instance:{name}`` fields of a registration hash expire after ``now_ms``.

    ``fields`` is the hash as HGETALL returns it (bytes); ``now_ms`` is
    Redis's clock (TIME) in milliseconds. Each field holds
    ``{expiry in ms} {token}``; one that does not parse counts as expired.
    """
    prefix = INSTANCE_FIELD_PREFIX.encode("ascii")
    live = 0
    for name, value in fields.items():
        if name.startswith(prefix):
            expiry = _INSTANCE_EXPIRY.match(value)
            if expiry is not None and int(expiry.group(1)) > now_ms:
                live += 1
    return live


_INSTANCE_EXPIRY = re.compile(rb"([0-9]+) ")


def instance_field(instance: str) -> str:
    """The registration field of one instance of a reliable agent: ``instance:{name}``."""
    return f"{INSTANCE_FIELD_PREFIX}{instance}"


def stream_key(agent_id: str) -> str:
    """The inbox stream of a reliable agent: ``agent.stream:{id}``."""
    return f"agent.stream:{agent_id}"


def dlq_key(agent_id: str) -> str:
    """The dead-letter stream of a reliable agent: ``agent.dlq:{id}``."""
    return f"agent.dlq:{agent_id}"


def consumer_name(agent_id: str, instance: str) -> str:
    """The consumer of one instance in the group ``agents``: ``{id}-{instance}``."""
    return f"{agent_id}-{instance}"


_STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?\Z")


def is_stream_id(text: str) -> bool:
    """Whether ``text`` is a stream entry id (``<ms>-<seq>``, or ``<ms>``)."""
    return bool(_STREAM_ID.match(text))


def seen_key(agent_id: str, message_id: str) -> str:
    """mas_sync's mark of a message that an agent handled: ``mas_sync:seen:{id}:{message_id}``."""
    return f"mas_sync:seen:{agent_id}:{message_id}"


#: Field of a stream entry that its agent requeued from its dead letters: the
#: agent's signed word for the envelope (see :func:`mas_sync._signing.vouch`).
VOUCH = "vouch"


def nonce_key(agent_id: str, nonce: str) -> str:
    """A signed message's nonce, as one receiver saw it: ``mas_sync:nonce:{<id>}:<nonce>``.

    The braces make the id a hash tag: all the nonces of one agent are in one
    Redis Cluster slot, so that one script records many at once. (An id
    holding ``}`` would end the tag early, or leave it empty: the tag is then
    the id's SHA-1 instead.)
    """
    tag = agent_id if "}" not in agent_id else hashlib.sha1(agent_id.encode()).hexdigest()
    return f"mas_sync:nonce:{{{tag}}}:{nonce}"


def rate_key(agent_id: str, sender_id: str) -> str:
    """The rate limit that an agent applies to one sender: ``mas_sync:rate:{id}:{sender}``."""
    return f"mas_sync:rate:{agent_id}:{sender_id}"


def breaker_key(target_id: str) -> str:
    """The shared circuit breaker of requests to ``target_id``: ``mas_sync:breaker:{target}``."""
    return f"mas_sync:breaker:{target_id}"


def dead_letter_fields(
    envelope: bytes, error: str, attempts: int, consumer: str, entry_id: str
) -> Dict[str, Any]:
    """The fields of a dead letter in ``agent.dlq:{id}``.

    ``envelope`` is the message JSON as it was sent; ``error`` why it was
    given up (the handler's last exception, or why it could not be read);
    ``attempts`` its deliveries; ``consumer`` the instance that gave it up;
    ``entry_id`` its id in the agent's stream; ``failed_at`` the time.
    """
    return {
        ENVELOPE: envelope,
        "error": error,
        "attempts": str(attempts),
        "consumer": consumer,
        "entry_id": entry_id,
        "failed_at": repr(time.time()),
    }


#: Prefix of the private channels on which a stopping agent wakes its own
#: listener; mas_sync alone uses them and no peer ever subscribes there.
WAKE_CHANNEL_PREFIX = "mas_sync:wake:"


def wake_channel(channel: str) -> str:
    """A fresh private channel, ``mas_sync:wake:{<tag>}:<random hex>``, for ``channel``'s listener.

    The hash tag puts it in the same Redis Cluster slot as ``channel``, so
    that one sharded pub/sub connection (on the node that owns that slot)
    reads both.
    """
    return f"{WAKE_CHANNEL_PREFIX}{{{_wake_tag(channel)}}}:{uuid.uuid4().hex}"


def wake_channel_pattern(channel: str) -> str:
    """The glob pattern of every :func:`wake_channel` of ``channel``: ``mas_sync:wake:{<tag>}:*``.

    For ACL rules (``&`` channel patterns). The tag holds no glob character
    when ``channel`` is an agent's channel or ``mas.system``.
    """
    return f"{WAKE_CHANNEL_PREFIX}{{{_wake_tag(channel)}}}:*"


def _wake_tag(channel: str) -> str:
    """The hash tag of ``channel``'s wake-up channels: in the same Cluster slot as ``channel``."""
    tag = _hashed_part(channel)
    if "}" in tag:  # cannot be wrapped in braces: find another tag in the slot
        slot = key_slot(channel.encode())
        tag = next(str(n) for n in itertools.count() if key_slot(str(n).encode()) == slot)
    return tag


def _hashed_part(name: str) -> str:
    """The part of ``name`` that Redis Cluster hashes: its hash tag if it has one."""
    start = name.find("{")
    if start != -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1:end]
    return name


def agent_id_from_key(key: str) -> Optional[str]:
    """The id in a registration key ``agent:{id}``, or None for other keys.

    Heartbeat keys (``agent:{id}:heartbeat``) and anything else under the
    ``agent:`` prefix that is not a registration hash give None.
    """
    if not key.startswith(AGENT_KEY_PREFIX):
        return None
    agent_id = key[len(AGENT_KEY_PREFIX):]
    if not agent_id or ":" in agent_id:
        return None
    return agent_id


# --- registration ------------------------------------------------------------


def registration_fields(
    agent_id: str, capabilities: List[str], metadata: Mapping[str, Any], token: str
) -> Dict[str, str]:
    """Fields of the ``agent:{id}`` hash for an agent that registers now."""
    return {
        "id": agent_id,
        "capabilities": json.dumps(list(capabilities)),
        "metadata": dumps_object(metadata, "metadata"),
        "status": STATUS_ACTIVE,
        "token": token,
        "registered_at": str(time.time()),
    }


def heartbeat_value() -> str:
    """Value of the heartbeat key: the time of the beat."""
    return str(time.time())


def register_event(agent_id: str, capabilities: List[str]) -> str:
    """The REGISTER announcement published on ``mas.system``."""
    return json.dumps(
        {"type": "REGISTER", "agent_id": agent_id, "capabilities": list(capabilities)}
    )


def deregister_event(agent_id: str) -> str:
    """The DEREGISTER announcement published on ``mas.system``."""
    return json.dumps({"type": "DEREGISTER", "agent_id": agent_id})


def parse_registration(
    key: bytes,
    agent_id: Optional[bytes],
    capabilities: Optional[bytes],
    metadata: Optional[bytes],
) -> Dict[str, Any]:
    """Read the fields of the registration hash ``key``, as Redis holds them.

    Returns:
        ``{"id", "capabilities", "metadata"}``. A missing ``capabilities``
        field reads as ``[]``, a missing ``metadata`` as ``{}``.

    Raises:
        ValueError: not a registration anyone can read, with the reason: no
            ``id``, an ``id`` that is not UTF-8 or does not name ``key``,
            ``capabilities`` that are not a strict JSON list of strings,
            ``metadata`` that is not a strict JSON object.
    """
    if not agent_id:
        raise ValueError("it has no id")
    try:
        text_id = agent_id.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("its id is not UTF-8") from None
    if agent_key(text_id).encode("utf-8") != key:
        raise ValueError(f"its id {text_id[:100]!r} names another key")
    try:
        caps = loads_strict(capabilities or b"[]")
    except ValueError as exc:
        raise ValueError(f"its capabilities are not JSON: {exc}") from None
    if not isinstance(caps, list) or not all(isinstance(cap, str) for cap in caps):
        raise ValueError("its capabilities are not a list of strings")
    try:
        meta = loads_strict(metadata or b"{}")
    except ValueError as exc:
        raise ValueError(f"its metadata is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError("its metadata is not a JSON object")
    return {"id": text_id, "capabilities": caps, "metadata": meta}


def shown_key(key: bytes) -> str:
    """``key`` as text for a log line: bytes that are not UTF-8 escaped, cut at 200."""
    return key[:200].decode("utf-8", "backslashreplace")


# --- agent messages ----------------------------------------------------------


_quote = json.encoder.encode_basestring_ascii  # what json.dumps does to a str


def new_message_id() -> str:
    """A unique message id."""
    return uuid.uuid4().hex


def encode_message(
    sender_id: str,
    target_id: str,
    payload: Mapping[str, Any],
    message_id: Optional[str] = None,
    timestamp: Optional[float] = None,
) -> str:
    """Encode one agent message as the JSON text that is published.

    Raises:
        TypeError, ValueError: the payload is not a JSON object (see
            :func:`dumps_object`).
    """
    return frame_message(sender_id, target_id, dumps_object(payload), message_id, timestamp)


def frame_message(
    sender_id: str,
    target_id: str,
    body: str,
    message_id: Optional[str] = None,
    timestamp: Optional[float] = None,
    seq: Optional[int] = None,
    sender_run: Optional[str] = None,
    sender_instance: Optional[str] = None,
    target_instance: Optional[str] = None,
    traceparent: Optional[str] = None,
    tracestate: Optional[str] = None,
) -> str:
    """Wrap ``body``, a payload already serialized by :func:`dumps_object`.

    ``seq`` and ``sender_run`` are mas_sync's own fields (the sender's
    sequence number for this target, and the id of the sender's run); so are
    ``sender_instance`` (in a request from a reliable agent: the instance
    that waits for the reply), ``target_instance`` (in the reply: that
    instance) and ``traceparent``/``tracestate`` (see :data:`TRACEPARENT`).
    Async peers ignore them.
    """
    extra = "" if seq is None else ',"seq":%d,"sender_run":%s' % (seq, _quote(sender_run or ""))
    if sender_instance is not None:
        extra += ',"sender_instance":%s' % _quote(sender_instance)
    if target_instance is not None:
        extra += ',"target_instance":%s' % _quote(target_instance)
    if traceparent is not None:
        extra += ',"traceparent":%s' % _quote(traceparent)
        if tracestate:
            extra += ',"tracestate":%s' % _quote(tracestate)
    return '{"sender_id":%s,"target_id":%s,"payload":%s,"timestamp":%r,"message_id":%s%s}' % (
        _quote(sender_id),
        _quote(target_id),
        body,
        time.time() if timestamp is None else float(timestamp),
        _quote(message_id or new_message_id()),
        extra,
    )


def split_markers(payload: Dict[str, Any]) -> Tuple[Optional[str], bool, bool]:
    """Remove the request/reply markers from ``payload``, in place.

    Returns:
        ``(correlation_id, expects_reply, is_reply)``.

    Raises:
        ValueError: a correlation id that is not a non-empty string.
    """
    correlation_id = payload.pop(CORRELATION_ID, None)
    expects_reply = bool(payload.pop(EXPECTS_REPLY, False))
    is_reply = bool(payload.pop(IS_REPLY, False))
    if correlation_id is not None and (not isinstance(correlation_id, str) or not correlation_id):
        raise ValueError(f"{CORRELATION_ID} must be a non-empty string, not {correlation_id!r}")
    if (expects_reply or is_reply) and correlation_id is None:
        raise ValueError(f"a request or reply without {CORRELATION_ID}")
    return correlation_id, expects_reply, is_reply


def request_payload(payload: Mapping[str, Any], correlation_id: str) -> Dict[str, Any]:
    """``payload`` with the markers of a request.

    Raises:
        ValueError: ``payload`` holds a key of :data:`RESERVED_KEYS`.
    """
    check_reserved(payload, "payload", RESERVED_KEYS)
    return {**payload, CORRELATION_ID: correlation_id, EXPECTS_REPLY: True}


def reply_payload(
    payload: Mapping[str, Any], correlation_id: str, error: bool = False
) -> Dict[str, Any]:
    """``payload`` with the markers of the reply to request ``correlation_id``.

    Args:
        payload: What the replier passed, or (``error=True``) an
            :func:`error_payload` made by the library.
        correlation_id: The request's.
        error: ``payload`` is the library's error reply, whose ``_error`` key
            is allowed.

    Raises:
        ValueError: ``payload`` holds a key of :data:`RESERVED_REPLY_KEYS`.
    """
    check_reserved(payload, "reply", RESERVED_KEYS if error else RESERVED_REPLY_KEYS)
    return {**payload, CORRELATION_ID: correlation_id, IS_REPLY: True}


def error_payload(kind: str, message: str, details: Optional[List[Any]] = None) -> Dict[str, Any]:
    """The payload of an error reply."""
    return {ERROR: {"type": kind, "message": message, "details": details or []}}


# --- state -------------------------------------------------------------------


def encode_state_value(value: object) -> str:
    """Encode one state field as the async framework stores it.

    Dicts and lists become JSON; every other value becomes ``str(value)``.

    Raises:
        TypeError, ValueError: a dict or list that is not JSON-serializable.
    """
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, allow_nan=False)
        except TypeError as exc:
            raise TypeError(f"state value is not JSON-serializable: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"state value is not valid JSON: {exc}") from None
    return str(value)
