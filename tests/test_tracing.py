"""OpenTelemetry traces: spans recorded by the SDK's in-memory exporter, trace fields on the wire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Iterator, List

import pytest
import redis
from pydantic import BaseModel

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode  # noqa: E402

from mas_sync import (  # noqa: E402
    Agent,
    AgentMessage,
    Keyring,
    RequestError,
    SigningKey,
    _tracing,
    handler,
)
from mas_sync.testing import wait_until  # noqa: E402

from ._processes import ROOT  # noqa: E402


class _Switched(trace.Tracer):
    """The SDK's tracer while the switch is on, the API's no-op tracer after."""

    def __init__(self, switch: "_Switch", real: Any) -> None:
        self.switch = switch
        self.real = real

    def _tracer(self) -> Any:
        return self.real if self.switch.on else NoOpTracer()

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


class _Switch(trace.TracerProvider):
    """The global provider of the process (set once): traces this module's tests only."""

    def __init__(self, sdk: TracerProvider) -> None:
        self.sdk = sdk
        self.on = True

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _Switched(self, self.sdk.get_tracer(*args, **kwargs))


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK provider that exports to memory, set as the global provider for this module."""
    memory = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    switch = _Switch(sdk)
    trace.set_tracer_provider(switch)
    assert trace.get_tracer_provider() is switch, "another test set the global provider"
    yield memory
    switch.on = False  # the rest of the test session sends no trace fields
    sdk.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def finished(spans: InMemorySpanExporter, name: str, count: int = 1) -> List[Any]:
    """The finished spans called ``name``, once there are ``count`` of them."""
    return wait_until(
        lambda: len(found := [s for s in spans.get_finished_spans() if s.name == name]) >= count
        and found,
        message=f"{count} span(s) {name!r}; have {[s.name for s in spans.get_finished_spans()]}",
    )


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> Any:
        if message.payload.get("fail"):
            raise ValueError("asked to fail")
        if message.expects_reply:
            return {"echo": message.payload["q"]}
        return None


def raw_subscriber(r: redis.Redis, channel: str) -> Any:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=5)  # reads the confirmation
    return pubsub


def next_raw(pubsub: Any) -> str:
    got = wait_until(lambda: pubsub.get_message(timeout=0.1), message="a raw message")
    return got["data"]


def next_message(pubsub: Any) -> dict:
    return json.loads(next_raw(pubsub))


def test_a_request_its_handler_and_the_reply_form_one_trace(make_agent, spans) -> None:
    make_agent("echo", Echo)
    asker = make_agent("asker")
    reply = asker.request("echo", {"q": 7}, timeout=5)
    assert reply.payload == {"echo": 7}

    [request] = finished(spans, "send agent.echo")
    [process] = finished(spans, "process agent.echo")
    [answer] = finished(spans, "send agent.asker")
    assert request.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert answer.kind == SpanKind.PRODUCER
    trace_id = request.context.trace_id
    assert process.context.trace_id == trace_id and answer.context.trace_id == trace_id
    assert request.parent is None  # a new trace
    assert process.parent.span_id == request.context.span_id
    assert answer.parent.span_id == process.context.span_id
    # The request's span lasts until its reply arrived (the replier's span may
    # end a moment after: it ends once the publish returned).
    assert request.start_time <= process.start_time <= answer.start_time <= request.end_time

    correlation_id = request.attributes["messaging.message.conversation_id"]
    assert correlation_id
    assert dict(request.attributes) == {
        "messaging.system": "redis",
        "messaging.destination.name": "agent.echo",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.conversation_id": correlation_id,
        "messaging.message.id": request.attributes["messaging.message.id"],
        "messaging.message.body.size": request.attributes["messaging.message.body.size"],
    }
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == "agent.echo"
    assert process.attributes["messaging.message.id"] == request.attributes["messaging.message.id"]
    assert process.attributes["messaging.message.conversation_id"] == correlation_id
    assert process.attributes["messaging.message.body.size"] == \
        request.attributes["messaging.message.body.size"]
    assert answer.attributes["messaging.destination.name"] == "agent.asker"
    assert answer.attributes["messaging.message.conversation_id"] == correlation_id
    assert answer.attributes["messaging.message.id"] == reply.message_id
    for span in (request, process, answer):
        assert span.status.status_code == StatusCode.UNSET
        assert span.instrumentation_scope.name == "mas_sync"


def test_the_trace_context_travels_in_extra_message_fields(make_agent, spans, r) -> None:
    make_agent("echo", Echo)
    sender = make_agent("sender")
    pubsub = raw_subscriber(r, "agent.echo")
    message_id = sender.send("echo", {"q": 1})
    sent = next_message(pubsub)
    [span] = finished(spans, "send agent.echo")
    context = span.context
    flags = int(context.trace_flags)
    assert flags & 1  # sampled
    assert sent["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    assert "tracestate" not in sent  # empty: not sent
    assert sent["message_id"] == message_id == span.attributes["messaging.message.id"]
    assert "messaging.message.conversation_id" not in span.attributes
    [process] = finished(spans, "process agent.echo")
    assert process.parent.span_id == context.span_id
    pubsub.close()


def test_a_span_in_the_sender_thread_is_the_parent_of_the_send(make_agent, spans) -> None:
    make_agent("echo", Echo)
    sender = make_agent("sender")
    with trace.get_tracer("test").start_as_current_span("outer") as outer:
        sender.send("echo", {"q": 1})
    [send] = finished(spans, "send agent.echo")
    assert send.parent.span_id == outer.get_span_context().span_id


def test_send_many_gives_each_message_a_span(make_agent, spans, r) -> None:
    echo = make_agent("echo", Echo)
    other = make_agent("other", Echo)
    sender = make_agent("sender")
    ids = sender.send_many([("echo", {"n": 1}), ("other", {"n": 2}), ("echo", {"n": 3})])
    wait_until(lambda: echo.stats.handled == 2 and other.stats.handled == 1)
    sends = finished(spans, "send agent.echo", 2) + finished(spans, "send agent.other")
    assert sorted(s.attributes["messaging.message.id"] for s in sends) == sorted(ids)
    assert len({s.context.span_id for s in sends}) == 3
    processes = finished(spans, "process agent.echo", 2) + finished(spans, "process agent.other")
    assert {p.parent.span_id for p in processes} == {s.context.span_id for s in sends}


def test_a_handler_that_raises_records_the_exception(make_agent, spans) -> None:
    make_agent("echo", Echo)
    asker = make_agent("asker")
    with pytest.raises(RequestError):
        asker.request("echo", {"fail": True}, timeout=5)
    [process] = finished(spans, "process agent.echo")
    assert process.status.status_code == StatusCode.ERROR
    assert "ValueError: asked to fail" in process.status.description
    [event] = [e for e in process.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "asked to fail"
    # The error reply is the handler span's child; the request failed.
    [answer] = finished(spans, "send agent.asker")
    assert answer.parent.span_id == process.context.span_id
    [request] = finished(spans, "send agent.echo")
    assert request.status.status_code == StatusCode.ERROR
    assert any(e.attributes["exception.type"].endswith("RequestError") for e in request.events)


class Adder(Agent):
    class Add(BaseModel):
        a: int
        b: int

    @handler("add", model=Add)
    def add(self, message: AgentMessage, body: "Adder.Add") -> Any:
        return {"sum": body.a + body.b}


def test_a_payload_the_handler_model_refuses_is_an_error_of_the_process_span(
    make_agent, spans
) -> None:
    make_agent("adder", Adder)
    asker = make_agent("asker")
    assert asker.request("adder", {"action": "add", "a": 1, "b": 2}, timeout=5).payload == \
        {"sum": 3}
    with pytest.raises(RequestError):
        asker.request("adder", {"action": "add", "a": "one"}, timeout=5)
    good, bad = sorted(finished(spans, "process agent.adder", 2), key=lambda s: s.start_time)
    assert good.status.status_code == StatusCode.UNSET
    assert bad.status.status_code == StatusCode.ERROR
    [event] = [e for e in bad.events if e.name == "exception"]
    assert event.attributes["exception.type"].endswith("ValidationError")


class FailsOnce(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.attempt == 1:
            raise RuntimeError("first attempt fails")


def test_each_attempt_of_a_reliable_agent_is_a_process_span_of_the_send(
    make_agent, spans
) -> None:
    worker = make_agent("worker", FailsOnce, delivery="reliable", retry_delay=0.01)
    make_agent("sender").send("worker", {"n": 1})
    wait_until(lambda: worker.stats.handled == 1, message="the second attempt succeeds")
    [send] = finished(spans, "send agent.worker")
    first, second = sorted(finished(spans, "process agent.worker", 2),
                           key=lambda s: s.start_time)
    assert first.parent.span_id == second.parent.span_id == send.context.span_id
    assert first.status.status_code == StatusCode.ERROR
    assert second.status.status_code == StatusCode.UNSET


def test_a_request_without_reply_ends_its_span_with_the_timeout(make_agent, spans) -> None:
    asker = make_agent("asker")
    with pytest.raises(Exception) as caught:
        asker.request("nobody", {"q": 1}, timeout=0.2)
    [request] = finished(spans, "send agent.nobody")
    assert request.status.status_code == StatusCode.ERROR
    assert type(caught.value).__name__ in request.status.description


def test_malformed_trace_fields_are_ignored_and_refuse_nothing(make_agent, spans, r) -> None:
    echo = make_agent("echo", Echo)
    valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    variants = [
        {"traceparent": "garbage"},
        {"traceparent": 5, "tracestate": ["x"]},
        {"traceparent": None},
        {"traceparent": valid, "tracestate": "vendor=abc"},
    ]
    for n, fields in enumerate(variants):
        r.publish("agent.echo", json.dumps({
            "sender_id": "raw", "target_id": "echo", "payload": {"n": n, "traceparent": valid},
            "timestamp": 1.0, "message_id": f"m{n}", **fields,
        }))
    wait_until(lambda: echo.stats.handled == 4, message="every message is handled")
    assert echo.stats.invalid == 0
    processes = {s.attributes["messaging.message.id"]: s
                 for s in finished(spans, "process agent.echo", 4)}
    for n in range(3):  # a trace of their own (a key of the payload is not a field)
        assert processes[f"m{n}"].parent is None
    traced = processes["m3"]
    assert traced.parent.span_id == 0xB7AD6B7169203331
    assert traced.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert traced.context.trace_state.get("vendor") == "abc"


def test_signatures_cover_the_trace_fields(make_agent, spans, r) -> None:
    key = SigningKey("k1", b"s" * 32)
    echo = make_agent("echo", Echo, keyring=Keyring([key]), require_signed=True)
    sender = make_agent("sender", keyring=Keyring([key]))
    pubsub = raw_subscriber(r, "agent.echo")
    assert sender.request("echo", {"q": 3}, timeout=5).payload == {"echo": 3}
    text = next_raw(pubsub)
    sent = json.loads(text)
    assert sent["traceparent"] and sent["signature"]
    [process] = finished(spans, "process agent.echo")
    assert process.parent is not None
    # The same text with another parent does not verify.
    parent = sent["traceparent"].split("-")[2]
    tampered = text.replace(parent, "1" * 16)
    assert tampered != text
    r.publish("agent.echo", tampered)
    wait_until(lambda: echo.stats.refused_bad_signature == 1, message="tampered message refused")
    pubsub.close()


def test_a_reliable_agent_handles_in_the_senders_trace(make_agent, spans) -> None:
    worker = make_agent("worker", Echo, delivery="reliable", retry_delay=0.01)
    asker = make_agent("asker")
    assert asker.request("worker", {"q": 5}, timeout=5).payload == {"echo": 5}
    [request] = finished(spans, "send agent.worker")
    [process] = finished(spans, "process agent.worker")
    assert process.parent.span_id == request.context.span_id
    assert worker.stats.handled == 1


SCRIPT = """
import json, os, sys
{prelude}
import redis
from mas_sync import Agent, _tracing

url = os.environ["MAS_TEST_REDIS_URL"]

class Echo(Agent):
    def on_message(self, message):
        if message.payload.get("fail"):
            raise ValueError("asked to fail")
        return {{"echo": message.payload["q"]}}

raw = redis.Redis.from_url(url)
pubsub = raw.pubsub(ignore_subscribe_messages=True)
pubsub.subscribe("agent.echo")
pubsub.get_message(timeout=5)
options = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)
with Echo("echo", redis_url=url, **options), Agent("asker", redis_url=url, **options) as asker:
    reply = asker.request("echo", {{"q": 1}}, timeout=5)
    try:
        asker.request("echo", {{"q": 2, "fail": True}}, timeout=5)
        failed = False
    except Exception:
        failed = True
    sent = None
    while sent is None:
        sent = pubsub.get_message(timeout=5)
print(json.dumps({{
    "enabled": _tracing.ENABLED, "reply": reply.payload, "failed": failed,
    "fields": sorted(json.loads(sent["data"])),
    "otel_loaded": any(name.startswith("opentelemetry") and sys.modules[name] is not None
                       for name in sys.modules),
}}))
"""


def run_script(redis_url: str, prelude: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT.format(prelude=prelude))],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env=dict(os.environ, MAS_TEST_REDIS_URL=redis_url),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


BASE_FIELDS = ["message_id", "payload", "sender_id", "sender_run", "seq", "target_id", "timestamp"]


def test_with_the_api_but_no_sdk_nothing_breaks_and_no_fields_are_sent(redis_url) -> None:
    result = run_script(redis_url, "")
    assert result["enabled"] is True
    assert result["reply"] == {"echo": 1} and result["failed"] is True
    assert result["fields"] == BASE_FIELDS


def test_without_opentelemetry_messages_carry_no_trace_fields(redis_url) -> None:
    result = run_script(redis_url, "sys.modules['opentelemetry'] = None")
    assert result["enabled"] is False
    assert result["otel_loaded"] is False
    assert result["reply"] == {"echo": 1} and result["failed"] is True
    assert result["fields"] == BASE_FIELDS


PLUGIN = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

memory = InMemorySpanExporter()


def pytest_configure(config):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)


def pytest_unconfigure(config):
    sends = [s for s in memory.get_finished_spans() if s.name.startswith("send ")]
    print("traced sends:", len(sends))
"""


def test_async_peers_ignore_the_trace_fields(tmp_path) -> None:
    pytest.importorskip("mas", reason="mas-framework 0.2.0 is not installed")
    (tmp_path / "traced_plugin.py").write_text(PLUGIN)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "traced_plugin", "-p", "no:cacheprovider",
         os.path.join(ROOT, "tests", "test_interop.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
    sends = int(out.stdout.split("traced sends:")[1].split()[0])
    assert sends > 10, out.stdout[-2000:]


def test_tracing_is_on_when_opentelemetry_is_installed() -> None:
    assert _tracing.ENABLED is True
