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
    """

    model_config = ConfigDict(extra="ignore")

    sender_id: str
    target_id: str
    payload: Dict[str, Any]
    timestamp: float = Field(default_factory=time.time)
    message_id: str = Field(default_factory=_wire.new_message_id)

    _agent: Optional["Agent"] = PrivateAttr(default=None)

    @property
    def expects_reply(self) -> bool:
        """True when the sender waits for a reply (it used ``request()``)."""
        return bool(self.payload.get(_wire.EXPECTS_REPLY, False))

    @property
    def is_reply(self) -> bool:
        """True when this message is the reply to an earlier request."""
        return bool(self.payload.get(_wire.IS_REPLY, False))
