"""The worker side of a run: call the agent's handler for a message, and answer a failed request."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Protocol

from pydantic import ValidationError

from . import _wire
from ._handlers import HandlerSpec, action_of, body_of
from ._inbox import first_error
from ._message import AgentMessage
from ._outbox import Outbox
from ._stats import Counters

log = logging.getLogger(__name__)


class AgentHooks(Protocol):
    """What a run needs of its agent: its handlers and hooks (see :class:`mas_sync.Agent`)."""

    id: str
    _mas_handlers: Dict[str, HandlerSpec]

    def get_metadata(self) -> Dict[str, Any]: ...

    def on_message(self, message: AgentMessage) -> None: ...

    def on_error(self, message: Optional[AgentMessage], error: Exception) -> None: ...

    def on_stop(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


class Handling:
    """Runs in the worker threads: routes each message to its handler, and reports failures.

    A message whose ``payload["action"]`` names a typed handler goes to it
    (validated into its model first); any other to ``on_message``. A handler
    that raises is logged, counted, passed to ``on_error``, and a waiting
    requester gets an error reply instead of a timeout.

    Args:
        agent: Whose handlers.
        counters: The agent's counters.
        outbox: Where replies go.
    """

    def __init__(self, agent: AgentHooks, counters: Counters, outbox: Outbox) -> None:
        self.agent = agent
        self.counters = counters
        self.outbox = outbox

    def handle(self, message: AgentMessage) -> None:
        """Call the handler of ``message``; never raises."""
        agent = self.agent
        spec = agent._mas_handlers.get(action_of(message) or "")
        try:
            if spec is None:
                result = agent.on_message(message)
            elif spec.model is None:
                result = getattr(agent, spec.method)(message)
            else:
                try:
                    body = spec.model.model_validate(body_of(message))
                except ValidationError as exc:
                    self.reject(message, spec, exc)
                    return
                result = getattr(agent, spec.method)(message, body)
            if result is not None and message.expects_reply and not message._replied:
                message.reply(result)
        except Exception as exc:
            self.counters.add("handler_errors")
            where = f"{spec.method}()" if spec is not None else "on_message"
            log.exception(
                "Agent %s: %s failed for message %s from %s",
                agent.id, where, message.message_id, message.sender_id,
            )
            self.reply_error(message, "handler_error", f"{type(exc).__name__}: {exc}")
            try:
                agent.on_error(message, exc)
            except Exception:
                log.exception("Agent %s: on_error raised", agent.id)
        else:
            self.counters.add("handled")

    def reject(self, message: AgentMessage, spec: HandlerSpec, exc: ValidationError) -> None:
        """A payload that does not fit the handler's model: log, count, tell the requester."""
        agent = self.agent
        self.counters.add("rejected")
        log.warning(
            "Agent %s: rejected message %s from %s: payload does not fit %s for action %r: %s",
            agent.id, message.message_id, message.sender_id,
            spec.model.__name__ if spec.model else "?", spec.action, first_error(exc),
        )
        details = json.loads(exc.json(include_url=False, include_input=False))
        self.reply_error(
            message,
            "validation_error",
            f"payload does not fit {spec.model.__name__ if spec.model else '?'}"
            f" for action {spec.action!r}",
            details,
        )

    def reply_error(
        self, message: AgentMessage, kind: str, text: str, details: Optional[List[Any]] = None
    ) -> None:
        """Tell a requester that its request failed, instead of letting it time out."""
        if not message.expects_reply or message._replied:
            return
        try:
            self.outbox.reply(message, _wire.error_payload(kind, text, details), error=True)
        except Exception as exc:
            log.warning(
                "Agent %s: could not send the error reply to %s: %s",
                self.agent.id, message.sender_id, exc,
            )
