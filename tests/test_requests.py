"""Request/reply between sync agents, typed handlers, and send_many."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional

import pytest
from pydantic import BaseModel

from mas_sync import (
    Agent,
    AgentMessage,
    AgentNotRunningError,
    RequestError,
    RequestTimeout,
    handler,
)
from mas_sync.testing import wait_until

from .conftest import read_message


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"echo": message.payload})


class Silent(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: List[AgentMessage] = []

    def on_message(self, message: AgentMessage) -> None:
        self.seen.append(message)


def pending_count(agent: Agent) -> int:
    return len(agent._mas_run.requests)


def test_request_returns_the_reply_without_markers(make_agent) -> None:
    make_agent("echo", cls=Echo)
    asker = make_agent("asker")
    reply = asker.request("echo", {"q": 1}, timeout=5)
    assert reply.sender_id == "echo" and reply.target_id == "asker"
    assert reply.payload == {"echo": {"q": 1}}
    assert reply.is_reply and reply.correlation_id
    assert pending_count(asker) == 0


def test_request_markers_follow_the_async_wire_format(make_agent, r) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("agent.nobody")
    try:
        asker = make_agent("asker")
        with pytest.raises(RequestTimeout):
            asker.request("nobody", {"q": 1}, timeout=0.2)
        message = read_message(pubsub)
        payload = json.loads(message["data"])["payload"]
        assert payload["q"] == 1
        assert payload["_expects_reply"] is True
        assert isinstance(payload["_correlation_id"], str)
    finally:
        pubsub.close()


def test_timeout_is_a_timeout_error_and_a_late_reply_is_dropped(make_agent, r, caplog) -> None:
    release = threading.Event()

    class Slow(Agent):
        def on_message(self, message: AgentMessage) -> None:
            release.wait(5)
            message.reply({"late": True})

    make_agent("slow", cls=Slow)
    asker = make_agent("asker", cls=Silent)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        asker.request("slow", {}, timeout=0.3)
    assert isinstance(info.value, RequestTimeout)
    assert 0.3 <= time.monotonic() - started < 2
    assert pending_count(asker) == 0
    release.set()
    wait_until(lambda: asker.stats.replies_dropped == 1, 5, message="late reply dropped")
    assert asker.seen == []  # never handed to on_message
    assert "dropped reply" in caplog.text


def test_only_the_agent_asked_can_resolve_a_request(make_agent, r) -> None:
    spoof_sent = threading.Event()
    agents: Dict[str, Agent] = {}

    class Careful(Agent):
        def on_message(self, message: AgentMessage) -> None:
            # A third agent copies the correlation id and answers first.
            r.publish(
                "agent.asker",
                json.dumps({
                    "sender_id": "mallory", "target_id": "asker", "timestamp": time.time(),
                    "message_id": "spoof",
                    "payload": {"forged": True, "_correlation_id": message.correlation_id,
                                "_is_reply": True},
                }),
            )
            spoof_sent.set()
            # The forged reply is read, and dropped, before the genuine one is sent.
            wait_until(lambda: agents["asker"].stats.replies_dropped == 1, 5)
            message.reply({"genuine": True})

    make_agent("bob", cls=Careful)
    asker = agents["asker"] = make_agent("asker", cls=Silent)
    reply = asker.request("bob", {}, timeout=5)
    assert spoof_sent.is_set()
    assert reply.sender_id == "bob" and reply.payload == {"genuine": True}
    assert asker.stats.replies_dropped == 1
    assert asker.seen == []


def test_stop_fails_waiting_requests_at_once(make_agent) -> None:
    make_agent("silent", cls=Silent)
    asker = make_agent("asker")
    errors: List[BaseException] = []
    waiting = threading.Event()

    def ask() -> None:
        waiting.set()
        try:
            asker.request("silent", {}, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    assert waiting.wait(5)
    wait_until(lambda: pending_count(asker) == 1, 5)
    started = time.monotonic()
    asker.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3
    assert isinstance(errors[0], AgentNotRunningError)
    assert "stopped while waiting for a reply from 'silent'" in str(errors[0])


def test_request_inside_on_message_with_one_worker_does_not_deadlock(make_agent) -> None:
    make_agent("oracle", cls=Echo, max_workers=1)

    class Middle(Agent):
        def on_message(self, message: AgentMessage) -> None:
            inner = self.request("oracle", {"from": "middle"}, timeout=5)
            message.reply({"relayed": inner.payload})

    make_agent("middle", cls=Middle, max_workers=1)
    asker = make_agent("asker")
    reply = asker.request("middle", {"x": 1}, timeout=10)
    assert reply.payload == {"relayed": {"echo": {"from": "middle"}}}


@pytest.mark.slow
def test_many_threads_requesting_at_once_get_their_own_replies(make_agent) -> None:
    make_agent("echo", cls=Echo, max_workers=4)
    asker = make_agent("asker", max_workers=4)
    threads_n, per_thread = 32, 200
    wrong: List[Any] = []
    failures: List[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def ask(t: int) -> None:
        try:
            barrier.wait(10)
            for i in range(per_thread):
                token = {"t": t, "i": i}
                reply = asker.request("echo", token, timeout=20)
                if reply.payload != {"echo": token}:
                    wrong.append((token, reply.payload))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=ask, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not failures
    assert not wrong
    assert pending_count(asker) == 0
    assert asker.stats.replies_dropped == 0


def test_reply_to_a_plain_message_is_refused(make_agent) -> None:
    errors: List[BaseException] = []
    done = threading.Event()

    class Replier(Agent):
        def on_message(self, message: AgentMessage) -> None:
            try:
                message.reply({"x": 1})
            except RuntimeError as exc:
                errors.append(exc)
            done.set()

    make_agent("replier", cls=Replier)
    make_agent("sender").send("replier", {"plain": True})
    assert done.wait(5)
    assert "not a request" in str(errors[0])
    with pytest.raises(RuntimeError):
        AgentMessage(sender_id="a", target_id="b", payload={}).reply({})


def test_request_argument_errors(make_agent) -> None:
    idle = make_agent("idle", start=False)
    with pytest.raises(AgentNotRunningError):
        idle.request("x", {})
    asker = make_agent("asker")
    with pytest.raises(ValueError):
        asker.request("x", {}, timeout=0)
    with pytest.raises(TypeError):
        asker.request("x", ["not", "a", "dict"])
    with pytest.raises(ValueError):
        asker.request("bad:id", {})
    assert pending_count(asker) == 0


def test_handler_exception_reaches_the_requester(make_agent) -> None:
    class Broken(Agent):
        def on_message(self, message: AgentMessage) -> None:
            raise KeyError("missing thing")

    make_agent("broken", cls=Broken)
    asker = make_agent("asker")
    started = time.monotonic()
    with pytest.raises(RequestError) as info:
        asker.request("broken", {}, timeout=10)
    assert time.monotonic() - started < 5
    assert info.value.kind == "handler_error"
    assert "KeyError" in str(info.value)


# -- typed handlers -----------------------------------------------------------


class Add(BaseModel):
    a: int
    b: int


class Greeting(BaseModel):
    name: str
    shout: bool = False


class Sum(BaseModel):
    sum: int


class Calculator(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: List[str] = []
        self.fallback: List[Dict[str, Any]] = []
        self.greeted = threading.Event()

    @handler("add")
    def add(self, message: AgentMessage, body: Add) -> dict:
        self.calls.append("add")
        return {"sum": body.a + body.b}

    @handler("add_model", model=Add)
    def add_model(self, message: AgentMessage, body) -> Sum:  # type: ignore[no-untyped-def]
        self.calls.append("add_model")
        return Sum(sum=body.a + body.b)

    @handler("greet")
    def greet(self, message: AgentMessage, body: Greeting) -> None:
        self.calls.append(f"greet {body.name}")
        self.greeted.set()

    @handler("ping")
    def ping(self, message: AgentMessage) -> Optional[dict]:
        return {"pong": True}

    def on_message(self, message: AgentMessage) -> Optional[dict]:
        self.fallback.append(message.payload)
        return {"fallback": True}


def test_typed_handler_validates_and_its_return_value_is_the_reply(make_agent) -> None:
    calc = make_agent("calc", cls=Calculator)
    asker = make_agent("asker")
    assert asker.request("calc", {"action": "add", "a": 2, "b": "3"}).payload == {"sum": 5}
    assert asker.request("calc", {"action": "add_model", "a": 1, "b": 1}).payload == {"sum": 2}
    assert asker.request("calc", {"action": "ping"}).payload == {"pong": True}
    assert calc.calls == ["add", "add_model"]


def test_invalid_payload_never_reaches_the_handler_and_the_requester_learns_why(make_agent) -> None:
    calc = make_agent("calc", cls=Calculator)
    asker = make_agent("asker")
    started = time.monotonic()
    with pytest.raises(RequestError) as info:
        asker.request("calc", {"action": "add", "a": "two"}, timeout=10)
    assert time.monotonic() - started < 5
    assert info.value.kind == "validation_error"
    assert {tuple(d["loc"]) for d in info.value.details} == {("a",), ("b",)}
    # Each error says where and why, without the input (the payload) again or a URL.
    assert all({"type", "loc", "msg"} <= set(d) and not {"input", "url"} & set(d)
               for d in info.value.details)
    assert "Add" in str(info.value)
    assert calc.calls == []
    assert calc.stats.rejected == 1


def test_invalid_fire_and_forget_message_is_rejected_quietly(make_agent) -> None:
    calc = make_agent("calc", cls=Calculator)
    sender = make_agent("sender")
    sender.send("calc", {"action": "greet"})  # no name
    sender.send("calc", {"action": "greet", "name": "ada"})
    assert calc.greeted.wait(5)
    assert calc.calls == ["greet ada"]
    assert calc.stats.rejected == 1


def test_messages_without_a_matching_handler_go_to_on_message(make_agent) -> None:
    calc = make_agent("calc", cls=Calculator)
    asker = make_agent("asker")
    assert asker.request("calc", {"action": "divide", "a": 1}).payload == {"fallback": True}
    assert asker.request("calc", {"no": "action"}).payload == {"fallback": True}
    assert asker.request("calc", {"action": 5}).payload == {"fallback": True}
    assert calc.fallback == [{"action": "divide", "a": 1}, {"no": "action"}, {"action": 5}]


def test_handlers_are_inherited_and_two_for_one_action_are_refused() -> None:
    class Sub(Calculator):
        @handler("mul", model=Add)
        def mul(self, message: AgentMessage, body: Add) -> dict:
            return {"product": body.a * body.b}

    assert set(Sub._mas_handlers) == {"add", "add_model", "greet", "ping", "mul"}
    with pytest.raises(TypeError, match="two handlers for action 'x'"):
        class Twice(Agent):
            @handler("x")
            def one(self, message: AgentMessage) -> None: ...

            @handler("x")
            def two(self, message: AgentMessage) -> None: ...


def test_handler_whose_model_cannot_be_read_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match="model=Model"):
        class Unclear(Agent):
            @handler("x")
            def x(self, message: AgentMessage, body) -> None: ...  # type: ignore[no-untyped-def]


def test_handler_decorator_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        handler("")
    with pytest.raises(TypeError):
        handler("x", model=dict)  # type: ignore[arg-type]


# -- send_many ----------------------------------------------------------------


def test_send_many_delivers_a_batch_in_order(make_agent) -> None:
    rx = make_agent("rx", cls=Silent)
    rx2 = make_agent("rx2", cls=Silent)
    sender = make_agent("tx")
    ids = sender.send_many([("rx", {"n": n}) for n in range(50)] + [("rx2", {"n": -1})])
    assert len(ids) == 51 and len(set(ids)) == 51
    wait_until(lambda: len(rx.seen) == 50 and len(rx2.seen) == 1, 5)
    assert [m.payload["n"] for m in rx.seen] == list(range(50))
    assert [m.message_id for m in rx.seen] == ids[:50]
    assert sender.send_many([]) == []


@pytest.mark.parametrize(
    "bad",
    [
        [("rx", {"ok": 1}), ("rx", ["not a dict"])],
        [("rx", {"ok": 1}), ("bad:id", {})],
        [("rx", {"ok": 1}), "not a pair"],
        [("rx", {"ok": 1}), ("rx", {"nan": float("nan")})],
    ],
)
def test_send_many_publishes_nothing_when_one_item_is_bad(make_agent, bad) -> None:
    rx = make_agent("rx", cls=Silent)
    sender = make_agent("tx")
    with pytest.raises((TypeError, ValueError)):
        sender.send_many(bad)
    sender.send("rx", {"marker": True})
    wait_until(lambda: len(rx.seen) == 1, 5)
    assert rx.seen[0].payload == {"marker": True}
