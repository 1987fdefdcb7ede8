"""Typed handlers: route messages by the action in their payload to methods."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Type, TypeVar

from pydantic import BaseModel

from . import _wire
from ._checks import check_seconds
from ._message import AgentMessage

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__mas_handler__"


@dataclass(frozen=True)
class HandlerSpec:
    """One typed handler of an agent class."""

    action: str
    method: str
    model: Optional[Type[BaseModel]]
    timeout: Optional[float] = None


def handler(
    action: str, *, model: Optional[Type[BaseModel]] = None, timeout: Optional[float] = None
) -> Callable[[F], F]:
    """Route messages whose ``payload["action"]`` is ``action`` to the decorated method.

    With a pydantic ``model`` (given here, or read from the annotation of the
    method's second parameter), the payload, less its ``"action"`` key, is
    validated into the model first and the method is called as
    ``method(message, body)``; without one, as ``method(message)``.

    A payload that fails validation never reaches the method: it is logged
    and counted in ``stats.rejected``, and a requester gets an error reply,
    so that its ``request()`` raises :class:`~mas_sync.RequestError` at once.
    When the message is a request, a dict (or pydantic model) returned by the
    method is sent back as the reply. Messages whose action has no handler go
    to ``on_message``.

    The method runs in a worker thread, like ``on_message``. ``timeout``
    (seconds) is its time limit, instead of the agent's ``handler_timeout``:
    a call still running past it is logged with its stack and counted, and a
    requester gets an error reply at once (``RequestError`` with ``kind
    "handler_timeout"``); the call itself is not interrupted (see README,
    Behaviours).

    Example::

        class Calculator(Agent):
            @handler("add")
            def add(self, message: AgentMessage, body: AddRequest) -> dict:
                return {"sum": body.a + body.b}
    """
    if not isinstance(action, str) or not action:
        raise TypeError("handler() takes the action name, a non-empty str")
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"handler model must be a pydantic BaseModel class, not {model!r}")
    if timeout is not None:
        check_seconds("handler timeout", timeout)
        timeout = float(timeout)

    def decorate(func: F) -> F:
        setattr(func, _MARK, (action, model, timeout))
        return func

    return decorate


def collect_handlers(cls: type) -> Dict[str, HandlerSpec]:
    """The typed handlers of ``cls`` and its bases, by action.

    Raises:
        TypeError: one class declares two handlers for the same action.
    """
    found: Dict[str, HandlerSpec] = {}
    for klass in reversed(cls.__mro__):
        own: Dict[str, HandlerSpec] = {}
        for name, attr in vars(klass).items():
            mark = getattr(attr, _MARK, None)
            if mark is None:
                continue
            action, model, timeout = mark
            if action in own:
                raise TypeError(
                    f"{klass.__name__} has two handlers for action {action!r}:"
                    f" {own[action].method}() and {name}()"
                )
            own[action] = HandlerSpec(
                action, name, model or _model_from_signature(attr), timeout
            )
        found.update(own)
    return found


def _model_from_signature(func: Callable[..., Any]) -> Optional[Type[BaseModel]]:
    """The model a handler asks for in its third parameter ``(self, message, body)``.

    Raises:
        TypeError: the handler takes a body whose model cannot be told.
    """
    params = list(inspect.signature(func).parameters.values())
    if len(params) < 3:
        return None
    body = params[2]
    try:
        hint = typing.get_type_hints(func).get(body.name)
    except Exception:  # a forward reference that does not resolve at module level
        hint = None
    if isinstance(hint, type) and issubclass(hint, BaseModel) and hint is not AgentMessage:
        return hint
    raise TypeError(
        f"handler {func.__qualname__}() takes {body.name!r}, but its pydantic model"
        f" cannot be read from the annotation; pass it as @handler(..., model=Model)"
    )


def action_of(message: AgentMessage) -> Optional[str]:
    """The action named in the payload, if it is a string."""
    action = message.payload.get(_wire.ACTION)
    return action if isinstance(action, str) else None


def body_of(message: AgentMessage) -> Dict[str, Any]:
    """The payload to validate: without its action key."""
    return {k: v for k, v in message.payload.items() if k != _wire.ACTION}
