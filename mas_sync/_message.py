"""The agent message, as it travels between sync and async agents."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import _wire

if TYPE_CHECKING:  # pragma: no cover
    from ._agent import Agent


class AgentMessage(BaseModel):
    """One message from one agent to another.

    The fields are exactly those of the async framework's ``AgentMessage``;
    unknown fields sent by newer peers are ignored.

    Attributes:
        sender_id: Id of the agent that sent the message.
        target_id: Id of the agent it was sent to.
        payload: The message body, a JSON object.
        timestamp: The sender's ``time.time()`` when it sent the message.
        message_id: A unique id chosen by the sender.
        seq: mas_sync senders number their messages to each target 1, 2, 3,
            ...; None from other senders.
        sender_run: Id of the sender's run that numbered the message.
    """

    model_config = ConfigDict(extra="ignore")

    sender_id: str
    target_id: str
    payload: Dict[str, Any]
    timestamp: float = Field(default_factory=time.time)
    message_id: str = Field(default_factory=_wire.new_message_id)
    seq: Optional[int] = None
    sender_run: Optional[str] = None

    _agent: Optional["Agent"] = PrivateAttr(default=None)
    _correlation_id: Optional[str] = PrivateAttr(default=None)
    _expects_reply: bool = PrivateAttr(default=False)
    _is_reply: bool = PrivateAttr(default=False)
    _replied: bool = PrivateAttr(default=False)

    def _take_markers(self) -> None:
        """Move the request/reply markers out of the payload (raises ValueError)."""
        self._correlation_id, self._expects_reply, self._is_reply = _wire.split_markers(
            self.payload
        )

    @property
    def correlation_id(self) -> Optional[str]:
        """The id that ties a request to its reply; None for a plain message."""
        return self._correlation_id or self.payload.get(_wire.CORRELATION_ID)

    @property
    def expects_reply(self) -> bool:
        """True when the sender waits for a reply (it used ``request()``)."""
        return self._expects_reply or bool(self.payload.get(_wire.EXPECTS_REPLY, False))

    @property
    def is_reply(self) -> bool:
        """True when this message is the reply to an earlier request."""
        return self._is_reply or bool(self.payload.get(_wire.IS_REPLY, False))

    def reply(self, payload: Dict[str, Any]) -> str:
        """Send ``payload`` back to the sender as the reply to this request.

        Safe to call from any thread while the receiving agent runs.

        Returns:
            The message id of the reply.

        Raises:
            RuntimeError: this message is not a request, or was not received
                by a running agent.
            TypeError, ValueError: ``payload`` is not a JSON object.
        """
        if self._agent is None:
            raise RuntimeError("only a message received by an agent can be replied to")
        if not self.expects_reply or not self.correlation_id:
            raise RuntimeError(
                f"message {self.message_id} from {self.sender_id!r} is not a request;"
                " use agent.send() to answer it"
            )
        return self._agent._mas_reply(self, payload)
