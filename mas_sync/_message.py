"""The agent message, as it travels between sync and async agents."""

from __future__ import annotations

import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import _wire
from ._errors import AgentNotRunningError, CannotReplyError

#: What a received message replies through: ``send(message, payload)``.
ReplySender = Callable[["AgentMessage", Dict[str, Any]], str]


class AgentMessage(BaseModel):
    """One message from one agent to another.

    The fields are exactly those of the async framework's ``AgentMessage``;
    unknown fields sent by newer peers are ignored.

    A message is a value: it pickles, and ``copy.copy()``, ``copy.deepcopy()``
    and ``model_copy()`` copy it, with the same fields (``model_dump()``) and
    the same request markers (``expects_reply``, ``correlation_id``); a copy
    compares equal to its original. What a copy does not get is the means to
    reply: only the message an agent received (and handed to its handler) can
    :meth:`reply`, and only in the process that received it (not in a child
    forked after), so that a request is answered once. That message holds a
    weak reference to the reply function of the agent's run that received it
    (see :meth:`reply`), never the agent; the reference is not pickled.

    Attributes:
        sender_id: Id of the agent that sent the message.
        target_id: Id of the agent it was sent to.
        payload: The message body, a JSON object.
        timestamp: The sender's ``time.time()`` when it sent the message.
        message_id: A unique id chosen by the sender.
        seq: mas_sync senders number their messages to each target 1, 2, 3,
            ...; None from other senders.
        sender_run: Id of the sender's run that numbered the message.
        sender_instance: In a request from a reliable agent, the instance
            that waits for the reply; None otherwise.
        target_instance: In a reply, the instance of a reliable requester
            that the reply is for (its other instances ignore it).
    """

    model_config = ConfigDict(extra="ignore")

    sender_id: str
    target_id: str
    payload: Dict[str, Any]
    timestamp: float = Field(default_factory=time.time)
    message_id: str = Field(default_factory=_wire.new_message_id)
    seq: Optional[int] = None
    sender_run: Optional[str] = None
    sender_instance: Optional[str] = None
    target_instance: Optional[str] = None

    # Set by the run that received the message; never pickled or copied.
    _reply: Optional[ReplySender] = PrivateAttr(default=None)
    _correlation_id: Optional[str] = PrivateAttr(default=None)
    _expects_reply: bool = PrivateAttr(default=False)
    _is_reply: bool = PrivateAttr(default=False)
    _replied: bool = PrivateAttr(default=False)
    _receipt: Any = PrivateAttr(default=None)  # a stream delivery's (see _streams.Receipt)
    _attempt: int = PrivateAttr(default=1)
    _checked: Any = PrivateAttr(default=None)  # what its receiver found (see _admission.Checked)
    # With tracing on, the trace fields are kept under "_mas_trace" in
    # __pydantic_private__ (see _tracing.read): undeclared, since each
    # declared private attribute costs every message more than 0.5 µs.

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # The private attributes above, read straight from their dict:
            # pydantic's own lookup costs every read microseconds.
            private = self.__pydantic_private__
            if private is not None and name in private:
                return private[name]
            return super().__getattr__(name)

    def __eq__(self, other: object) -> bool:
        # Equal fields and request markers; the means to reply is not compared,
        # so a message equals its copies.
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (
            type(self) is type(other)
            and self.__dict__ == other.__dict__
            and self._markers() == other._markers()  # type: ignore[attr-defined]
        )

    def _markers(self) -> Any:
        return self._correlation_id, self._expects_reply, self._is_reply

    def __getstate__(self) -> Dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private:
            state["__pydantic_private__"] = dict(
                private, _reply=None, _receipt=None, _checked=None
            )
        return state

    def __copy__(self) -> "AgentMessage":
        copied = super().__copy__()
        copied._reply = None
        copied._receipt = None
        copied._checked = None
        return copied

    def __deepcopy__(self, memo: Optional[Dict[int, Any]] = None) -> "AgentMessage":
        memo = {} if memo is None else memo
        if self._reply is not None:
            memo[id(self._reply)] = None  # deep-copied as None: copies do not reply
        for private in (self._receipt, self._checked):
            if private is not None:  # deep-copied as None: a key's secret is never copied
                memo[id(private)] = None
        return super().__deepcopy__(memo)

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
    def attempt(self) -> int:
        """Which delivery of the message this is: 1, or more when a reliable agent
        receives it again (its handler raised, or an instance crashed with it)."""
        return self._attempt

    @property
    def is_reply(self) -> bool:
        """True when this message is the reply to an earlier request."""
        return self._is_reply or bool(self.payload.get(_wire.IS_REPLY, False))

    def reply(self, payload: Dict[str, Any]) -> str:
        """Send ``payload`` back to the sender as the reply to this request.

        Safe to call from any thread while the receiving agent runs. Only the
        message the agent received can reply, not a copy or an unpickled one.

        Returns:
            The message id of the reply.

        Raises:
            CannotReplyError: this message is not a request, or it was not
                received by an agent (made by hand, copied or unpickled), or
                it was received by another process (before a ``fork()``).
                Also a ``RuntimeError``.
            AgentNotRunningError: the agent that received it has stopped.
            TypeError, ValueError: ``payload`` is not a JSON object, holds a
                string that is not valid UTF-8 text (a lone surrogate), or
                holds a reserved key: ``_correlation_id``, ``_expects_reply``,
                ``_is_reply`` (set by the library) or ``_error`` (which the
                library sets on the error replies of a failed handler).
                Nothing is sent.
        """
        if not self.expects_reply or not self.correlation_id:
            raise CannotReplyError(
                f"message {self.message_id} from {self.sender_id!r} is not a request;"
                " use agent.send() to answer it"
            )
        send = self._reply
        if send is None:
            raise CannotReplyError(
                f"message {self.message_id} from {self.sender_id!r} was not received by an"
                " agent (a copy or an unpickled message cannot reply); reply to the"
                " message the handler was given"
            )
        return send(self, payload)


def weak_reply_sender(send: ReplySender) -> ReplySender:
    """A reply sender that calls the bound method ``send`` without keeping its object alive.

    It works only in the process that made it: a child made by ``fork()``
    has a copy of the message, not the message its agent received.

    Raises (when called):
        AgentNotRunningError: the agent that ``send`` belongs to is gone.
        CannotReplyError: called in another process.
    """
    ref = weakref.WeakMethod(send)
    pid = os.getpid()

    def reply(message: AgentMessage, payload: Dict[str, Any]) -> str:
        if os.getpid() != pid:
            raise CannotReplyError(
                f"message {message.message_id} from {message.sender_id!r} was received by"
                f" process {pid}; only that process can reply to it"
            )
        bound = ref()
        if bound is None:
            raise AgentNotRunningError("the agent that received this message is gone")
        return bound(message, payload)

    return reply


def _init_private(message: AgentMessage, context: Any, /) -> None:
    """Give a new message its private attributes' defaults (pydantic's own way, made quick)."""
    if message.__pydantic_private__ is None:
        object.__setattr__(message, "__pydantic_private__", dict(_PRIVATE_DEFAULTS))


# Each is None, False or 1: a copy of the dict is a fresh set of defaults.
_PRIVATE_DEFAULTS: Dict[str, Any] = {
    name: attr.get_default() for name, attr in AgentMessage.__private_attributes__.items()
}
assert all(value in (None, False, 1) for value in _PRIVATE_DEFAULTS.values())
AgentMessage.model_post_init = _init_private  # type: ignore[method-assign,assignment]
