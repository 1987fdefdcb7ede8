"""OpenTelemetry traces of messages: a PRODUCER span per message sent, a CONSUMER span per handling.

Used only when ``opentelemetry-api`` is installed (the ``tracing`` extra);
otherwise :data:`ENABLED` is False and the callers never come here (one
``if`` per message). With the API installed but no tracer provider set (no
SDK configured), :func:`on` is False: no span is made, and messages carry no
trace fields.

The spans follow the OpenTelemetry messaging semantic conventions:

- ``send agent.{id}`` (kind PRODUCER) around each message sent: ``send()``,
  each message of ``send_many()``, a ``request()`` (until its reply arrives,
  or it fails) and each reply. Its context travels in the message's
  ``traceparent``/``tracestate`` fields (W3C Trace Context, injected by the
  global propagator; see :data:`mas_sync._wire.TRACEPARENT`).
- ``process agent.{id}`` (kind CONSUMER) around each handler call, its parent
  taken from the message's fields; ERROR, with the exception recorded, when
  the handler raises (or its model refuses the payload). Replies sent inside
  the handler are its children, so that a request, the handler that answers
  it and the reply form one trace.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict

from . import _wire

if TYPE_CHECKING:  # pragma: no cover
    from ._message import AgentMessage

log = logging.getLogger(__name__)

try:  # Tried once, here; every caller then tests ENABLED.
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ImportError:
    _trace = None  # type: ignore[assignment]

#: Whether opentelemetry-api is importable: the one test the hot paths make.
ENABLED: bool = _trace is not None

#: ``messaging.system`` of every span.
SYSTEM = "redis"

_tracer: Any = None


_provider_set = False
_UNKNOWN = object()
#: A provider named by OTEL_PYTHON_TRACER_PROVIDER is loaded by the API on first use.
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def on() -> bool:
    """Whether a tracer provider is set (an SDK is configured): checked per message.

    Call only when :data:`ENABLED`. The global provider is set once per
    process, so a yes is kept.
    """
    global _provider_set
    if not _provider_set:
        # The API's own get_tracer_provider() looks up an environment variable
        # on each call (most of a microsecond); its global is read instead,
        # where this version of the API has it and the variable is not set.
        provider = getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN)
        if provider is _UNKNOWN or _PROVIDER_FROM_ENV:
            provider = _trace.get_tracer_provider()
        _provider_set = provider is not None and not isinstance(
            provider, (ProxyTracerProvider, NoOpTracerProvider)
        )
    return _provider_set


def tracer() -> Any:
    """The tracer ``mas_sync`` (the API's proxy until a provider is set)."""
    global _tracer
    if _tracer is None:
        from . import __version__

        _tracer = _trace.get_tracer("mas_sync", __version__)
    return _tracer


def _attributes(
    target_id: str, operation: str, conversation_id: Optional[str]
) -> Dict[str, Union[str, int]]:
    attributes: Dict[str, Union[str, int]] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": _wire.agent_channel(target_id),
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if conversation_id:
        attributes["messaging.message.conversation_id"] = conversation_id
    return attributes


def sending(target_id: str, conversation_id: Optional[str] = None) -> Any:
    """A context manager: the PRODUCER span ``send agent.{target_id}``, current inside.

    An exception that leaves it is recorded, and the span's status is ERROR.
    """
    return tracer().start_as_current_span(
        f"send {_wire.agent_channel(target_id)}",
        kind=SpanKind.PRODUCER,
        attributes=_attributes(target_id, "send", conversation_id),
    )


def start_send(target_id: str, conversation_id: Optional[str] = None) -> Any:
    """The PRODUCER span of one message of a batch, not made current; end it with :func:`end`."""
    return tracer().start_span(
        f"send {_wire.agent_channel(target_id)}",
        kind=SpanKind.PRODUCER,
        attributes=_attributes(target_id, "send", conversation_id),
    )


def end(span: Any, error: Optional[BaseException] = None) -> None:
    """End a span of :func:`start_send`, recording ``error`` if there was one."""
    if error is not None:
        failed(span, error)
    span.end()


def fields(span: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(traceparent, tracestate)`` of ``span``, by the global propagator; Nones for none."""
    if not span.get_span_context().is_valid:
        return None, None  # no SDK: nothing to propagate
    carrier: Dict[str, str] = {}
    _propagate.inject(carrier, context=_trace.set_span_in_context(span))
    return carrier.get(_wire.TRACEPARENT), carrier.get(_wire.TRACESTATE)


def framed(span: Any, message_id: str, data: str) -> None:
    """Name the message a PRODUCER span sends: its id and size."""
    if span.is_recording():
        span.set_attribute("messaging.message.id", message_id)
        span.set_attribute("messaging.message.body.size", len(data.encode("utf-8")))


#: Where :func:`read` keeps a message's trace fields and size, in its private
#: attributes (undeclared: see :class:`mas_sync._message.AgentMessage`).
_KEY = "_mas_trace"


class _TraceFields(BaseModel):
    """The trace fields of a message; any other field is skipped, any type accepted."""

    model_config = ConfigDict(extra="ignore")

    traceparent: Any = None
    tracestate: Any = None


def read(data: Union[bytes, str], message: "AgentMessage") -> None:
    """Keep the trace fields of the raw message ``data`` on ``message``, for its CONSUMER span.

    Fields that are not strings are ignored (nothing is refused for them);
    a ``traceparent`` that does not parse is ignored by the propagator.
    """
    carrier: Optional[Dict[str, str]] = None
    marker = b'"traceparent"' if isinstance(data, bytes) else '"traceparent"'
    if marker in data:  # type: ignore[operator]
        try:
            found = _TraceFields.model_validate_json(data)
        except ValueError:  # pragma: no cover - parsed once already
            found = None
        if found is not None and isinstance(found.traceparent, str):
            carrier = {_wire.TRACEPARENT: found.traceparent}
            if isinstance(found.tracestate, str):
                carrier[_wire.TRACESTATE] = found.tracestate
    message.__pydantic_private__[_KEY] = (carrier, len(data))  # type: ignore[index]


def processing(agent_id: str, message: "AgentMessage") -> Any:
    """A context manager: the CONSUMER span ``process agent.{agent_id}`` of ``message``, current inside.

    Its parent is the context in the message's trace fields (a new trace
    when there are none). Handler failures are caught before they leave it:
    report them with :func:`failed`.
    """
    private = message.__pydantic_private__
    trace = private.get(_KEY) if private else None
    carrier, size = trace if trace is not None else (None, None)
    context = _propagate.extract(carrier) if carrier else _trace.set_span_in_context(
        _trace.INVALID_SPAN  # a root span: not the worker thread's current context
    )
    attributes = _attributes(agent_id, "process", message.correlation_id)
    attributes["messaging.message.id"] = message.message_id
    if size is not None:
        attributes["messaging.message.body.size"] = size
    return tracer().start_as_current_span(
        f"process {_wire.agent_channel(agent_id)}",
        context=context,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def failed(span: Any, error: BaseException) -> None:
    """Record ``error`` on ``span`` and set its status to ERROR."""
    if span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
