"""Sync agents and agents of the async MAS framework (mas-framework 0.2.0) on one Redis.

The async agents run for real, in an event loop on a thread of the test. The
package installs on Python 3.11 with
``pip install --no-deps --ignore-requires-python mas-framework==0.2.0``;
without it these tests are skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sys
import threading
import traceback
from typing import Any, Coroutine, Iterator, List

import pytest
from pydantic import BaseModel, Field

from mas_sync import Agent, AgentMessage, MASService, handler
from mas_sync.testing import wait_until

mas = pytest.importorskip("mas", reason="mas-framework 0.2.0 is not installed")


class Loop:
    """An asyncio event loop running in a thread, for the async agents."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="async-side", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            pass
        pytest.fail(f"the async side did not finish in {timeout} s:\n{self.stacks()}")

    def stacks(self) -> str:
        """Where the loop's thread and each of its tasks are, for a failure message."""
        lines = ["loop thread:"]
        frame = sys._current_frames().get(self.thread.ident)
        lines += traceback.format_stack(frame) if frame else ["  (not running)"]
        for task in list(asyncio.all_tasks(self.loop)):
            lines.append(f"{task!r}:")
            awaiting = task.get_coro()
            while awaiting is not None:  # down the chain of awaits
                frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None)
                if frame is not None:
                    lines += traceback.format_stack(frame, limit=1)
                awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "ag_await", None)
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def aloop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def async_agent(aloop: Loop, redis_url: str, r):
    """Start agents of the async framework; all are stopped at teardown.

    The factory returns once the agent's first heartbeat is in Redis. Its
    heartbeat task opens a connection of its own as the agent starts, and a
    ``cancel()`` that lands while redis-py sets up a connection can be lost
    on Python 3.11 (``asyncio.wait_for`` drops a cancel that races with its
    inner call finishing); the task would then sleep out its 30 s and
    ``stop()`` with it.
    """
    started: List[Any] = []

    def factory(agent_id: str, cls: type = None, **kwargs: Any) -> Any:
        agent = (cls or mas.Agent)(agent_id, redis_url=redis_url, **kwargs)
        aloop.run(agent.start())
        started.append(agent)
        wait_until(lambda: r.exists(f"agent:{agent_id}:heartbeat"), 5,
                   message=f"the first heartbeat of {agent_id}")
        return agent

    yield factory
    for agent in started:
        aloop.run(agent.stop())


class AsyncInbox(mas.Agent):
    """An async agent that puts what it receives on a thread-safe queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: "queue.Queue[Any]" = queue.Queue()

    async def on_message(self, message: Any) -> None:
        self.inbox.put(message)


class SyncInbox(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: "queue.Queue[AgentMessage]" = queue.Queue()

    def on_message(self, message: AgentMessage) -> None:
        self.inbox.put(message)


def test_sync_agent_sends_to_async_agent(make_agent, async_agent) -> None:
    receiver = async_agent("async-rx", cls=AsyncInbox)
    sender = make_agent("sync-tx")
    message_id = sender.send("async-rx", {"hello": "from sync", "n": [1, 2]})
    got = receiver.inbox.get(timeout=5)
    assert got.sender_id == "sync-tx" and got.target_id == "async-rx"
    assert got.payload == {"hello": "from sync", "n": [1, 2]}
    assert got.message_id == message_id


def test_async_agent_sends_to_sync_agent(make_agent, async_agent, aloop) -> None:
    receiver = make_agent("sync-rx", cls=SyncInbox)
    sender = async_agent("async-tx")
    aloop.run(sender.send("sync-rx", {"hello": "from async"}))
    got = receiver.inbox.get(timeout=5)
    assert got.sender_id == "async-tx" and got.payload == {"hello": "from async"}
    assert got.message_id.isdigit()  # the async side's time_ns() ids


def test_conversation_both_ways(make_agent, async_agent, aloop) -> None:
    class Echo(Agent):
        def on_message(self, message: AgentMessage) -> None:
            self.send(message.sender_id, {"echo": message.payload["n"]})

    make_agent("sync-echo", cls=Echo)
    talker = async_agent("async-talker", cls=AsyncInbox)
    for n in range(10):
        aloop.run(talker.send("sync-echo", {"n": n}))
    echoes = [talker.inbox.get(timeout=5).payload["echo"] for _ in range(10)]
    assert echoes == list(range(10))


def test_discovery_both_ways(make_agent, async_agent, aloop) -> None:
    sync_agent = make_agent("sync-nlp", capabilities=["nlp", "sync"])
    other = async_agent("async-nlp", capabilities=["nlp", "async"])
    assert [a["id"] for a in sync_agent.discover(["nlp"])] == ["async-nlp", "sync-nlp"]
    assert sync_agent.discover(["async"]) == [
        {"id": "async-nlp", "capabilities": ["nlp", "async"], "metadata": {},
         "delivery": "pubsub", "instances": 1}
    ]
    seen = aloop.run(other.discover(capabilities=["sync"]))
    assert seen == [{"id": "sync-nlp", "capabilities": ["nlp", "sync"], "metadata": {}}]


def test_untyped_state_written_by_sync_is_loaded_by_async(make_agent, async_agent, aloop) -> None:
    writer = make_agent("shared-state")
    writer.update_state({"counter": 42, "items": [1, 2], "name": "x"})
    expected = dict(writer.state)
    writer.stop()
    reader = async_agent("shared-state")
    assert reader.state == expected


def test_untyped_state_written_by_async_is_loaded_by_sync(make_agent, async_agent, aloop) -> None:
    writer = async_agent("shared-state")
    aloop.run(writer.update_state({"counter": 42, "cfg": {"a": 1}}))
    aloop.run(writer.stop())
    reader = make_agent("shared-state")
    assert dict(reader.state) == {"counter": "42", "cfg": '{"a": 1}'}


class Typed(BaseModel):
    counter: int = 0
    active: bool = False
    tags: List[str] = Field(default_factory=list)


def test_typed_state_written_by_async_is_loaded_by_sync(make_agent, async_agent, aloop) -> None:
    writer = async_agent("typed-shared", state_model=Typed)
    aloop.run(writer.update_state({"counter": 7, "active": True, "tags": ["a", "b"]}))
    aloop.run(writer.stop())
    reader = make_agent("typed-shared", state_model=Typed)
    assert reader.state == Typed(counter=7, active=True, tags=["a", "b"])


def test_typed_state_written_by_sync_is_loaded_by_async(make_agent, async_agent) -> None:
    class Scalars(BaseModel):
        counter: int = 0
        active: bool = False
        ratio: float = 0.0

    writer = make_agent("typed-back", state_model=Scalars)
    writer.update_state({"counter": 5, "active": True, "ratio": 0.25})
    writer.stop()
    reader = async_agent("typed-back", state_model=Scalars)
    assert reader.state == Scalars(counter=5, active=True, ratio=0.25)


def test_sync_service_sees_async_agents_come_and_go(redis_url, async_agent, aloop, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mas_sync")
    with MASService(redis_url, check_interval=60):
        agent = async_agent("async-visitor", capabilities=["v"])
        wait_until(lambda: "agent async-visitor registered" in caplog.text, 5)
        aloop.run(agent.stop())
        wait_until(lambda: "agent async-visitor deregistered" in caplog.text, 5)


def test_sync_agent_answers_an_async_request(make_agent, async_agent, aloop) -> None:
    class Answerer(Agent):
        def on_message(self, message: AgentMessage) -> None:
            assert message.expects_reply
            message.reply({"answer": message.payload["q"] * 2})

    make_agent("sync-answerer", cls=Answerer)
    asker = async_agent("async-asker")
    reply = aloop.run(asker.request("sync-answerer", {"q": 21}, timeout=5))
    assert reply.payload["answer"] == 42


def test_typed_handler_answers_an_async_request(make_agent, async_agent, aloop) -> None:
    class Add(BaseModel):
        a: int
        b: int

    class Calculator(Agent):
        @handler("add", model=Add)  # a model local to a function: name it
        def add(self, message: AgentMessage, body: Add) -> dict:
            return {"sum": body.a + body.b}

    make_agent("sync-calc", cls=Calculator)
    asker = async_agent("async-asker")
    reply = aloop.run(asker.request("sync-calc", {"action": "add", "a": 2, "b": 3}, timeout=5))
    assert reply.payload["sum"] == 5
    bad = aloop.run(asker.request("sync-calc", {"action": "add", "a": "two"}, timeout=5))
    assert bad.payload["_error"]["type"] == "validation_error"


def test_async_agents_come_and_go_in_the_discovery_cache(make_agent, async_agent, aloop) -> None:
    watcher = make_agent("sync-watcher", capabilities=["w"], discovery_cache=60.0)
    peer = async_agent("async-peer", capabilities=["p"])
    found = wait_until(lambda: watcher.discover(["p"]), 5, message="the async agent, cached")
    assert found == [{"id": "async-peer", "capabilities": ["p"], "metadata": {},
                      "delivery": "pubsub", "instances": 1}]
    assert watcher._mas_run.discovery_cache.valid  # type: ignore[union-attr]
    aloop.run(peer.stop())
    wait_until(lambda: watcher.discover(["p"]) == [], 5, message="the async agent gone")


def test_async_agent_answers_a_sync_request(make_agent, async_agent) -> None:
    class AsyncAnswerer(mas.Agent):
        async def on_message(self, message: Any) -> None:
            if message.expects_reply:
                await message.reply({"answer": message.payload["q"] + 1})

    async_agent("async-answerer", cls=AsyncAnswerer)
    asker = make_agent("sync-asker")
    reply = asker.request("async-answerer", {"q": 41}, timeout=5)
    assert reply.sender_id == "async-answerer"
    assert reply.payload == {"answer": 42}
    assert reply.is_reply


def test_stopping_sync_agents_and_services_sends_the_async_service_nothing_odd(
    redis_url, make_agent, aloop, r, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mas")
    service = mas.MASService(redis_url=redis_url)
    aloop.run(service.start())
    try:
        wait_until(lambda: r.pubsub_numsub("mas.system")[0][1] == 1, 5,
                   message="the async service's subscription to mas.system")
        with MASService(redis_url, check_interval=60):
            pass  # its stop() used to publish a wake-up token on mas.system
        agent = make_agent("sync-visitor")
        agent.stop()
        wait_until(lambda: "Agent deregistered" in caplog.text, 5)
        assert "Failed to handle system message" not in caplog.text
    finally:
        aloop.run(service.stop())
