"""Which messages an agent has already handled: by ``message_id``, over a window of time.

Two uses. Every instance of a reliable agent hears what peers publish on
``agent.{id}``: the first instance to mark such a message handles it, the
others leave it. And with ``dedupe_window``, a message handled once (by any
instance) is not handled again within the window: a redelivery after a
crash, or a sender that sent it twice, is acknowledged unhandled.
"""

from __future__ import annotations

import logging
from typing import Optional

import redis

from . import _wire
from ._message import AgentMessage
from ._redis import ANY_REDIS_ERROR

log = logging.getLogger(__name__)

#: Seconds for which the instances of a reliable agent remember who took a
#: message published on their shared channel.
CHANNEL_CLAIM_SECONDS = 60.0


class Seen:
    """Marks and checks the messages of one agent. Thread-safe.

    A mark is the key ``mas_sync:seen:{id}:{message_id}`` with a TTL. Redis
    failures never stop a message: it is handled (at least once holds).

    Args:
        client: The run's command client.
        agent_id: Whose messages.
        window: ``dedupe_window``: seconds a handled message is remembered;
            None remembers nothing.
        shared_channel: The agent is reliable: its instances share its channel.
        claim: Seconds at least for which the instances remember who took a
            message published on their channel (default and least
            :data:`CHANNEL_CLAIM_SECONDS`).
    """

    def __init__(
        self, client: redis.Redis, agent_id: str, window: Optional[float], shared_channel: bool,
        claim: float = 0.0,
    ) -> None:
        self._client = client
        self._agent_id = agent_id
        self._window_ms = None if window is None else max(1, int(window * 1000))
        self._shared_channel = shared_channel
        claim = max(window or 0.0, CHANNEL_CLAIM_SECONDS, claim)
        self._claim_ms = int(claim * 1000)

    @property
    def active(self) -> bool:
        """Whether there is anything to check at all."""
        return self._window_ms is not None or self._shared_channel

    def take(self, message: AgentMessage) -> bool:
        """True: handle ``message``. False: it was handled (or taken) already."""
        key = _wire.seen_key(self._agent_id, message.message_id)
        try:
            if message._receipt is None and self._shared_channel:
                return bool(self._client.set(key, "1", nx=True, px=self._claim_ms))
            if self._window_ms is None:
                return True
            return not self._client.exists(key)
        except ANY_REDIS_ERROR as exc:
            log.warning(
                "Agent %s: could not check whether message %s was handled (handling it): %s",
                self._agent_id, message.message_id, exc,
            )
            return True

    def done(self, message: AgentMessage) -> None:
        """``message`` was handled: remember it for the window."""
        if self._window_ms is None:
            return
        try:
            self._client.set(
                _wire.seen_key(self._agent_id, message.message_id), "1", px=self._window_ms
            )
        except ANY_REDIS_ERROR as exc:
            log.warning(
                "Agent %s: could not mark message %s handled: %s",
                self._agent_id, message.message_id, exc,
            )
