"""Signed messages: the keys an agent holds, and the signature its messages carry.

A signed message is the message JSON as mas_sync frames it, with one more
member at its end, which async peers ignore::

    ...,"signature":{"key":"k2","nonce":"<32 hex>","time":1764121000.25,"hmac":"<64 hex>"}}

``hmac`` is HMAC-SHA256, under the secret of key ``key``, of the message's
text (UTF-8) from its first byte up to the ``"hmac"`` member: every field of
the message, the key id, the nonce and the time. The text is signed exactly
as it travels (pub/sub and streams carry bytes unchanged), so no second JSON
encoding has to agree with the first, and no parser can read into the message
what was not signed: anything after the signature, or a signature that is not
the last member, fails. ``time`` is Redis' clock when the message was signed
(see :class:`RedisClock`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple, Union

import redis

from ._json import check_text, loads_strict
from ._redis import ANY_REDIS_ERROR
from ._wire import validate_agent_id

log = logging.getLogger(__name__)

#: Shortest secret a key may have: 16 bytes (128 bits); 32 random bytes are usual.
MIN_SECRET_BYTES = 16

#: Where a signed message's signature starts.
_MARK = b',"signature":{"key":"'
#: The rest of a signature, to its end (the end of the message).
_TAIL = re.compile(
    rb'([A-Za-z0-9_.\-]{1,256})","nonce":"([0-9a-f]{32})","time":([0-9]{1,12}(?:\.[0-9]{1,9})?)'
    rb',"hmac":"([0-9a-f]{64})"\}\}[ \t\r\n]*\Z'
)


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key: an id that travels with each message, and a secret that never does.

    Args:
        key_id: Names the key in a signature: letters, digits, ``-``, ``_``
            and ``.``, at most 256.
        secret: At least 16 bytes (a ``str`` is taken as UTF-8); 32 random
            bytes (``secrets.token_bytes(32)``) are usual.
        senders: The agent ids the key may sign for; a message that claims
            any other ``sender_id`` is refused (``not_allowed``) even though
            its signature is good. None: any sender (a key shared by the
            whole deployment).

    Raises:
        TypeError, ValueError: a bad argument, named in the message.
    """

    key_id: str
    secret: bytes = field(repr=False)
    senders: Optional[FrozenSet[str]] = None
    #: HMAC-SHA256 keyed with the secret, to copy for each message.
    _hmac: "hmac.HMAC" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key_id = self.key_id
        if not isinstance(key_id, str):
            raise TypeError(f"key_id must be a str, not {type(key_id).__name__}")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,256}", key_id):
            raise ValueError(
                f"key_id {key_id!r} must be 1 to 256 letters, digits, '-', '_' or '.'"
            )
        secret = self.secret
        if isinstance(secret, str):
            check_text(secret, "secret")
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
        secret = bytes(secret)
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the secret of key {key_id!r} has {len(secret)} bytes; at least"
                f" {MIN_SECRET_BYTES} are needed"
            )
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "_hmac", hmac.new(secret, digestmod=hashlib.sha256))
        senders = self.senders
        if senders is not None:
            if isinstance(senders, (str, bytes)):
                raise TypeError("senders must be a collection of agent ids, not one string")
            try:
                ids = frozenset(validate_agent_id(s, "a sender id of a key") for s in senders)
            except TypeError as exc:
                if "sender id" in str(exc):
                    raise
                raise TypeError(
                    f"senders must be a collection of agent ids, not {type(senders).__name__}"
                ) from None
            object.__setattr__(self, "senders", ids)

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under this key."""
        mac = self._hmac.copy()
        mac.update(data)
        return mac.digest()

    def may_sign_for(self, sender_id: str) -> bool:
        """Whether this key may sign messages from ``sender_id``."""
        return self.senders is None or sender_id in self.senders


class Keyring:
    """The signing keys an agent holds: one to sign with, all of them to verify with.

    Several agents may share one keyring (say, every agent of a process), and
    it may change while they run, from any thread: that is how a key is
    rotated without refusing a message. Once every agent holds the new key
    (:meth:`add`), each switches to signing with it (:meth:`use`); once no
    message signed with the old key is in flight (the signature window has
    passed), the old key is retired (:meth:`retire`).

    Args:
        keys: The keys; at most one per id.
        sign_with: The id of the key that signs; by default the first of
            ``keys``. None with no keys: nothing is signed, and signed
            messages cannot be verified.

    Raises:
        TypeError, ValueError: a bad argument, named in the message.
    """

    def __init__(self, keys: Iterable[SigningKey] = (), sign_with: Optional[str] = None) -> None:
        if isinstance(keys, SigningKey):
            keys = (keys,)
        held: Dict[str, SigningKey] = {}
        for key in keys:
            if not isinstance(key, SigningKey):
                raise TypeError(f"keys must be SigningKey objects, not {type(key).__name__}")
            if key.key_id in held:
                raise ValueError(f"two keys have the id {key.key_id!r}")
            held[key.key_id] = key
        if sign_with is None and held:
            sign_with = next(iter(held))
        if sign_with is not None and sign_with not in held:
            raise ValueError(f"sign_with names {sign_with!r}, which is not one of the keys")
        self._lock = threading.Lock()
        # Replaced whole, never changed: readers take both without the lock.
        self._state: Tuple[Dict[str, SigningKey], Optional[SigningKey]] = (
            held, held.get(sign_with) if sign_with is not None else None
        )

    def __repr__(self) -> str:
        keys, signer = self._state
        return (f"<Keyring keys={sorted(keys)!r}"
                f" sign_with={signer.key_id if signer else None!r}>")

    @property
    def key_ids(self) -> FrozenSet[str]:
        """The ids of the keys held."""
        return frozenset(self._state[0])

    @property
    def signing_key(self) -> Optional[SigningKey]:
        """The key that signs, or None."""
        return self._state[1]

    def get(self, key_id: str) -> Optional[SigningKey]:
        """The key with id ``key_id``, or None."""
        return self._state[0].get(key_id)

    def add(self, key: SigningKey) -> None:
        """Hold one more key (to verify with, until :meth:`use` signs with it).

        Raises:
            TypeError: ``key`` is not a SigningKey.
            ValueError: another key has its id.
        """
        if not isinstance(key, SigningKey):
            raise TypeError(f"key must be a SigningKey, not {type(key).__name__}")
        with self._lock:
            keys, signer = self._state
            if key.key_id in keys and keys[key.key_id] != key:
                raise ValueError(f"a different key with the id {key.key_id!r} is held")
            self._state = (dict(keys, **{key.key_id: key}), signer or key)

    def use(self, key_id: str) -> None:
        """Sign with key ``key_id`` from now on (ValueError: no such key)."""
        with self._lock:
            keys, _ = self._state
            if key_id not in keys:
                raise ValueError(f"no key {key_id!r} is held")
            self._state = (keys, keys[key_id])

    def retire(self, key_id: str) -> None:
        """Drop key ``key_id``: messages signed with it are refused from now on.

        Raises:
            ValueError: no such key, or it is the key that signs (switch
                first, with :meth:`use`).
        """
        with self._lock:
            keys, signer = self._state
            if key_id not in keys:
                raise ValueError(f"no key {key_id!r} is held")
            if signer is not None and signer.key_id == key_id:
                raise ValueError(f"key {key_id!r} signs; use() another one before retiring it")
            self._state = ({k: v for k, v in keys.items() if k != key_id}, signer)


class RedisClock:
    """Redis' clock, as read from this host: ``time.time()`` plus an offset.

    The offset is measured with ``TIME`` (half the round trip taken off) when
    first needed and again every ``resync`` seconds, by whichever thread
    asks; a failure keeps the last offset. Signers and verifiers on hosts
    whose clocks disagree agree on Redis' time.

    Args:
        client: The run's command client.
        resync: Seconds between measurements.
        wall: This host's clock (default ``time.time``).
    """

    def __init__(
        self, client: redis.Redis, resync: float = 60.0,
        wall: Optional[Callable[[], float]] = None,
    ) -> None:
        self._client = client
        self._resync = resync
        self._wall: Callable[[], float] = wall if wall is not None else lambda: time.time()
        self._offset = 0.0
        self._measured_at: Optional[float] = None
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the epoch, on Redis' clock."""
        measured_at = self._measured_at
        if (measured_at is None or time.monotonic() - measured_at > self._resync) \
                and self._lock.acquire(blocking=measured_at is None):
            try:
                self.measure()
            finally:
                self._lock.release()
        return self._wall() + self._offset

    def measure(self) -> None:
        """Measure the offset again (a Redis failure keeps the last one)."""
        try:
            before = self._wall()
            seconds, micros = self._client.time()
            after = self._wall()
        except ANY_REDIS_ERROR as exc:
            log.warning("Could not read Redis' clock (keeping the last offset): %s", exc)
            self._measured_at = time.monotonic()
            return
        self._offset = seconds + micros / 1e6 - (before + after) / 2
        self._measured_at = time.monotonic()


def sign(text: str, key: SigningKey, now: float) -> str:
    """``text``, a framed message (a JSON object), with a signature by ``key`` at its end."""
    assert text.endswith("}")
    head = '%s,"signature":{"key":"%s","nonce":"%s","time":%.6f' % (
        text[:-1], key.key_id, os.urandom(16).hex(), now
    )
    return '%s,"hmac":"%s"}}' % (head, key.mac(head.encode("utf-8")).hex())


class Signature:
    """What a message's signature says, once its HMAC checked out."""

    __slots__ = ("key", "nonce", "time")

    def __init__(self, key: SigningKey, nonce: str, time: float) -> None:
        self.key = key
        self.nonce = nonce
        self.time = time


class Refused(Exception):
    """A message that is not admitted: ``reason`` (one of :data:`REASONS`), and why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: Why a message is refused, as counted in :class:`~mas_sync.AgentStats`.
REASONS = ("unsigned", "bad_signature", "stale", "replayed", "not_allowed", "rate_limited")


def vouch(envelope: bytes, agent_id: str, key: SigningKey, now: float) -> str:
    """An agent's signed word for a message it puts back in its own stream (a requeue).

    A small signed JSON object naming the agent and the SHA-256 of the
    envelope: the entry's time and nonce are judged by it, not by the
    envelope's own signature (which must still verify).
    """
    text = '{"sender_id":%s,"envelope_sha256":"%s"}' % (
        json.dumps(agent_id), hashlib.sha256(envelope).hexdigest()
    )
    return sign(text, key, now)


def read_vouch(data: bytes, envelope: bytes, agent_id: str, keyring: Keyring) -> Signature:
    """The checked vouch ``data`` of ``envelope``, by a key that may sign for ``agent_id``.

    Raises:
        Refused: ``bad_signature``: not a vouch of this envelope by this agent.
    """
    signature = read_signature(data, keyring)
    try:
        said = loads_strict(data)
    except ValueError:
        said = None
    if (signature is None or not isinstance(said, dict)
            or said.get("sender_id") != agent_id
            or said.get("envelope_sha256") != hashlib.sha256(envelope).hexdigest()
            or not signature.key.may_sign_for(agent_id)):
        raise Refused("bad_signature", "the requeued entry's vouch is not this agent's")
    return signature


def read_signature(data: Union[bytes, str], keyring: Keyring) -> Optional[Signature]:
    """The checked signature of the raw message ``data``; None when it carries none.

    A message is signed when a well-formed signature is its last member;
    anything else (no signature, one in the wrong place or of the wrong
    form) is an unsigned message.

    Raises:
        Refused: ``bad_signature``: by a key not held, or its HMAC does not
            match the message.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    start = data.rfind(_MARK)
    tail = None if start == -1 else _TAIL.match(data, start + len(_MARK))
    if tail is None:
        return None  # no signature ends the message: unsigned
    key_id, nonce, when, mac = tail.groups()
    key = keyring.get(key_id.decode("ascii"))
    if key is None:
        raise Refused(
            "bad_signature", f"signed with key {key_id.decode()!r}, which this agent does not hold"
        )
    signed = data[: tail.start(4) - 9]  # up to ',"hmac":"'
    if not hmac.compare_digest(key.mac(signed).hex().encode(), mac):
        raise Refused("bad_signature", f"the HMAC does not match the message (key {key.key_id!r})")
    return Signature(key, nonce.decode("ascii"), float(when))
