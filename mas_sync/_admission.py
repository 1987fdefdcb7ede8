"""Which messages reach an agent's handlers: signatures, freshness, nonces, senders, rates.

Every check is opt-in (see :class:`mas_sync.Agent`: ``keyring``,
``require_signed``, ``accept_from``, ``accept_capabilities``,
``rate_limit``); an agent that asks for none has no :class:`Admission` at
all. A refused message never reaches a handler: it is counted by reason
(:data:`~._signing.REASONS`), logged once per sender and reason, a refused
request gets an error reply, and a refused stream entry goes to the
dead-letter stream.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import redis

from . import _wire
from ._message import AgentMessage
from ._redis import ANY_REDIS_ERROR
from ._registry import AgentRegistry
from ._scripts import load_script
from ._signing import Keyring, RedisClock, Refused, Signature, read_signature, read_vouch
from ._stats import Counters

log = logging.getLogger(__name__)

#: Seconds for which a sender's capabilities, as registered, are trusted.
CAPABILITIES_TTL = 5.0
#: Senders whose capabilities are kept at once; the cache starts over beyond.
MAX_CACHED_SENDERS = 10_000
#: (sender, reason) pairs logged per run; further refusals are counted only.
MAX_LOGGED = 1000


class Checked:
    """What the checks found about one received message (kept on it as ``_checked``)."""

    __slots__ = ("signature", "vouch", "refusal", "fresh")

    def __init__(self) -> None:
        self.signature: Optional[Signature] = None  # a signature whose HMAC verified
        self.vouch: Optional[Signature] = None  # of a requeued entry: the agent's, verified
        self.refusal: Optional[Refused] = None  # why its signature failed
        self.fresh: Optional[bool] = None  # its nonce was new; None: not yet recorded


class Admission:
    """The checks of one run, and the refusals they make. Thread-safe.

    :meth:`read` runs on the transport's thread (no Redis call); :meth:`verify`
    and :meth:`admit` on the workers.

    Args:
        agent_id: The receiving agent.
        client: The run's command client.
        registry: For ``accept_capabilities``.
        keyring: Keys to verify with; None verifies nothing.
        require_signed: Refuse what is not signed by a key held.
        window: Seconds by which a signature's time may differ from Redis'
            clock (or, for a stream entry, from when it entered the stream).
        accept_from: Sender ids accepted (with ``accept_capabilities``: or).
        accept_capabilities: Senders registered with any of these are accepted.
        allow_rate: ``allow(sender_id) -> bool``: the sender's rate limit, or None.
        clock: Redis' clock, shared with the run's signer.
        counters: The agent's counters, for the refusals.
        shared_channel: The agent is reliable: its instances share its channel.
    """

    def __init__(
        self,
        agent_id: str,
        client: redis.Redis,
        registry: AgentRegistry,
        keyring: Optional[Keyring],
        require_signed: bool,
        window: float,
        accept_from: Optional[FrozenSet[str]],
        accept_capabilities: Optional[FrozenSet[str]],
        allow_rate: Optional[Callable[[str], bool]],
        clock: RedisClock,
        counters: Counters,
        shared_channel: bool = False,
    ) -> None:
        self.agent_id = agent_id
        self._counters = counters
        self.shared_channel = shared_channel
        self._client = client
        self._registry = registry
        self.keyring = keyring
        self.require_signed = require_signed
        self.window = window
        self._nonce_ttl_ms = int(window * 2000) + 1000
        self._nonces = client.register_script(load_script("nonces"))
        self.accept_from = accept_from
        self.accept_capabilities = accept_capabilities
        self.allow_rate = allow_rate
        self.clock = clock
        self._capabilities: Dict[str, Tuple[float, FrozenSet[str]]] = {}
        self._lock = threading.Lock()
        self._logged: Set[Tuple[str, str]] = set()

    # -- on the transport's thread ---------------------------------------------

    def read(self, data: bytes, message: AgentMessage, receipt: Any = None) -> None:
        """Check the signature of ``message`` (received as ``data``) and keep what it says.

        A stream entry that the agent requeued carries its vouch (see
        :func:`~._signing.vouch`), checked here too.

        Never raises: a bad signature is kept on the message, to be refused
        by :meth:`verify` (or :meth:`check_reply`).
        """
        keyring = self.keyring
        if keyring is None:
            return
        checked = Checked()
        try:
            checked.signature = read_signature(data, keyring)
            vouch = getattr(receipt, "vouch", None)
            if vouch is not None and checked.signature is not None:
                checked.vouch = read_vouch(vouch, data, self.agent_id, keyring)
        except Refused as refusal:
            checked.refusal = refusal
        message._checked = checked

    def check_reply(self, message: AgentMessage) -> Optional[Refused]:
        """What is wrong with a reply (signature, freshness, key); None: accept it.

        A reply's nonce is not recorded: a reply is of use once, to the
        request that waits for it.
        """
        try:
            self._check_signature(message, message._checked, None)
        except Refused as refusal:
            return refusal
        return None

    # -- on the workers --------------------------------------------------------

    def verify(self, message: AgentMessage) -> None:
        """The checks that need no Redis call but the sender's capabilities.

        Raises:
            Refused: ``unsigned``, ``bad_signature``, ``stale`` or ``not_allowed``.
        """
        private = message.__pydantic_private__
        self._check_signature(message, private["_checked"], private["_receipt"])
        accept_from, capabilities = self.accept_from, self.accept_capabilities
        if accept_from is None and capabilities is None:
            return
        sender_id = message.sender_id
        if accept_from is not None and sender_id in accept_from:
            return
        if capabilities is not None and capabilities & self._capabilities_of(sender_id):
            return
        raise Refused("not_allowed", f"this agent does not accept messages from {sender_id!r}")

    def record_nonces(self, messages: Sequence[AgentMessage]) -> None:
        """Record the nonces of the signed ``messages``, in one script call (transport's thread).

        Called with the messages that arrived together, before they are
        queued, so that a burst costs one round trip, not one per message.
        """
        batch = []
        for message in messages:
            checked = message.__pydantic_private__["_checked"]
            if checked is not None and checked.signature is not None and checked.fresh is None:
                batch.append((message, checked))
        if batch:
            self._record_nonces(batch)

    def admit(self, message: AgentMessage) -> None:
        """The checks that cost Redis calls: the nonce (unless recorded already), then the rate.

        Raises:
            Refused: ``replayed`` or ``rate_limited``.
        """
        checked = message.__pydantic_private__["_checked"]
        if checked is not None and checked.signature is not None:
            if checked.fresh is None:
                self._record_nonces([(message, checked)])
            if not checked.fresh:
                raise Refused(
                    "replayed", f"nonce {(checked.vouch or checked.signature).nonce} was"
                    f" seen before (message {message.message_id})"
                )
        allow_rate = self.allow_rate
        if allow_rate is not None and not allow_rate(message.sender_id):
            raise Refused("rate_limited", f"{message.sender_id!r} sends faster than its limit")

    def _record_nonces(self, batch: List[Tuple[AgentMessage, "Checked"]]) -> None:
        """Record the nonce of each message, in one call; set ``fresh`` (False: a replay)."""
        keys, tokens = [], []
        for message, checked in batch:
            # A requeued entry: the nonce of the requeue.
            nonce = (checked.vouch or checked.signature).nonce
            keys.append(_wire.nonce_key(self.agent_id, nonce))
            receipt = message.__pydantic_private__["_receipt"]
            if receipt is not None:
                # A stream entry delivered again (a retry, another instance)
                # is the same entry: its id is the token.
                tokens.append(receipt.entry_id)
            elif self.shared_channel:
                # Every instance of a reliable agent hears what is published
                # on its channel: they agree on the token, and the check for
                # duplicates decides which one handles the message.
                tokens.append(f"m:{message.message_id}")
            else:
                tokens.append("")  # every other delivery is a new one
        try:
            fresh = self._nonces(keys=keys, args=[self._nonce_ttl_ms] + tokens)
        except ANY_REDIS_ERROR as exc:
            # The signatures and times held: the messages are handled, and
            # the failure is logged (a replay within the window would pass
            # while Redis refuses the nonces).
            log.warning(
                "Agent %s: could not record the nonces of %d messages (accepting them): %s",
                self.agent_id, len(batch), exc,
            )
            fresh = [1] * len(batch)
        for (_, checked), new in zip(batch, fresh):
            checked.fresh = bool(new)

    def count(self, message: AgentMessage, refusal: Refused, what: str = "message") -> None:
        """Count a refusal of ``message`` (a ``what``) by reason; log the first per sender and reason."""
        reason = refusal.reason
        self._counters.add(f"refused_{reason}")
        if self._first(message.sender_id, reason):
            log.warning(
                "Agent %s: refused %s %s from %s (%s): %s; further refusals of %s"
                " for this reason are counted, not logged",
                self.agent_id, what, message.message_id, message.sender_id, reason,
                refusal.detail, message.sender_id,
            )

    def _first(self, sender_id: str, reason: str) -> bool:
        """True the first time ``(sender_id, reason)`` is refused in this run."""
        pair = (sender_id, reason)
        with self._lock:
            if pair in self._logged or len(self._logged) > MAX_LOGGED:
                return False
            self._logged.add(pair)
            if len(self._logged) > MAX_LOGGED:
                log.warning(
                    "Agent %s: %d senders and reasons refused; further refusals are"
                    " counted, not logged", self.agent_id, MAX_LOGGED,
                )
            return True

    # -- the parts -------------------------------------------------------------

    def _check_signature(self, message: AgentMessage, checked: Optional["Checked"],
                         receipt: Any) -> None:
        signature = None
        if checked is not None:
            if checked.refusal is not None:
                raise checked.refusal
            signature = checked.signature
        if signature is None:
            if self.require_signed:
                raise Refused("unsigned", "this agent accepts signed messages only")
            return
        key = signature.key
        if key.senders is not None and message.sender_id not in key.senders:
            raise Refused(
                "not_allowed", f"key {key.key_id!r} may not sign for {message.sender_id!r}"
            )
        if checked.vouch is not None:
            signature = checked.vouch  # requeued: judged by the time of the requeue
        now = self.clock.now()
        if receipt is not None:
            # Judged by when it entered the stream (Redis' clock, in its id):
            # a message that waited for a stopped agent is not stale. (An id
            # in the future, which XADD can be told to use, is not believed.)
            now = min(now, int(receipt.entry_id.split("-", 1)[0]) / 1000.0)
        if abs(now - signature.time) > self.window:
            raise Refused(
                "stale", f"signed {now - signature.time:+.1f} s from now on Redis' clock"
                f" (the window is {self.window:g} s)"
            )

    def _capabilities_of(self, sender_id: str) -> FrozenSet[str]:
        now = time.monotonic()
        cached = self._capabilities.get(sender_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = self._registry.get_agent(sender_id)
        except ANY_REDIS_ERROR as exc:
            log.warning(
                "Agent %s: could not read the registration of %s: %s", self.agent_id, sender_id, exc
            )
            return cached[1] if cached is not None else frozenset()
        found = frozenset(record["capabilities"]) if record is not None else frozenset()
        with self._lock:
            if len(self._capabilities) >= MAX_CACHED_SENDERS:
                self._capabilities.clear()
            self._capabilities[sender_id] = (now + CAPABILITIES_TTL, found)
        return found
