"""Message dispatch: per-sender order, parallelism, back-pressure and garbage."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List

import pytest

from mas_sync import Agent, AgentMessage
from mas_sync.testing import wait_until

from .support import Blocking


class Collector(Agent):
    """Records (sender, n) per message, with an optional per-message delay."""

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.lock = threading.Lock()
        self.by_sender: Dict[str, List[int]] = defaultdict(list)
        self.threads: set = set()
        self.active = 0
        self.max_active = 0

    def on_message(self, message: AgentMessage) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
        if self.delay:
            threading.Event().wait(self.delay)
        with self.lock:
            self.by_sender[message.sender_id].append(message.payload["n"])
            self.active -= 1

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.by_sender.values())


def test_peer_to_peer_message_arrives_with_all_fields(make_agent) -> None:
    got: List[AgentMessage] = []
    arrived = threading.Event()

    class Rx(Agent):
        def on_message(self, message: AgentMessage) -> None:
            got.append(message)
            arrived.set()

    make_agent("rx", cls=Rx)
    tx = make_agent("tx")
    message_id = tx.send("rx", {"hello": "world"})
    assert arrived.wait(5)
    message = got[0]
    assert (message.sender_id, message.target_id, message.payload) == ("tx", "rx", {"hello": "world"})
    assert message.message_id == message_id
    assert abs(message.timestamp - time.time()) < 5
    # Message ids are "{run}-{n}", as the README says.
    run, n = message_id.split("-")
    assert re.fullmatch(r"[0-9a-f]{16}", run) and n == "1"
    assert tx.send("rx", {}) == f"{run}-2"


def test_messages_from_one_sender_keep_their_order_while_senders_run_in_parallel(make_agent) -> None:
    rx = make_agent("rx", cls=Collector, delay=0.002, max_workers=4)
    senders = [make_agent(f"tx{i}") for i in range(4)]
    per_sender = 50

    def blast(agent: Agent) -> None:
        for n in range(per_sender):
            agent.send("rx", {"n": n})

    threads = [threading.Thread(target=blast, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    wait_until(lambda: rx.count() == 4 * per_sender, 10, message="all messages handled")
    for sender in senders:
        assert rx.by_sender[sender.id] == list(range(per_sender))
    assert rx.max_active > 1, "different senders should be handled in parallel"
    assert len(rx.threads) <= 4


def test_one_sender_is_never_handled_by_two_threads_at_once(make_agent) -> None:
    rx = make_agent("rx", cls=Collector, delay=0.001, max_workers=8)
    tx = make_agent("tx")
    for n in range(100):
        tx.send("rx", {"n": n})
    wait_until(lambda: rx.count() == 100, 10)
    assert rx.by_sender["tx"] == list(range(100))
    assert rx.max_active == 1


def test_a_slow_handler_does_not_stop_the_listener_reading(make_agent) -> None:
    rx = make_agent("rx", cls=Blocking, max_workers=1)
    tx = make_agent("tx")
    try:
        for n in range(20):
            tx.send("rx", {"n": n})
        assert rx.entered.wait(5)
        # The one worker is blocked, yet the listener reads every message.
        wait_until(lambda: rx.stats.received == 20, 5, message="listener keeps reading")
        assert rx.stats.handled == 0
    finally:
        rx.release.set()
    wait_until(lambda: rx.stats.handled == 20, 5)


def test_messages_beyond_max_pending_are_dropped_and_counted(make_agent, caplog) -> None:
    rx = make_agent("rx", cls=Blocking, max_workers=1, max_pending=5)
    tx = make_agent("tx")
    try:
        tx.send("rx", {"n": 0})
        assert rx.entered.wait(5)  # the worker holds message 0
        for n in range(1, 11):
            tx.send("rx", {"n": n})
        wait_until(lambda: rx.stats.received == 11, 5)
        assert rx.stats.dropped_overflow == 5
        assert "max_pending" in caplog.text
    finally:
        rx.release.set()
    wait_until(lambda: rx.stats.handled == 6, 5, message="the queued five and the first")
    tx.send("rx", {"n": 99})
    wait_until(lambda: rx.stats.handled == 7, 5, message="room again after the overflow")
    assert rx.stats.dropped_overflow == 5


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json at all",
        b"\xff\xfe\x00 invalid utf-8",
        b"[1, 2, 3]",
        b'{"sender_id": "x"}',
        json.dumps({"sender_id": 5, "target_id": "rx", "payload": {}}).encode(),
        json.dumps({"sender_id": "x", "target_id": "rx", "payload": [1]}).encode(),
        json.dumps({"sender_id": "x", "target_id": "rx", "payload": {}, "timestamp": "soon"}).encode(),
        b"{" * 10000,
        # Valid JSON, nested deeper than any JSON parser here recurses.
        b'{"sender_id": "x", "target_id": "rx", "payload": '
        + b'{"a": [' * 5000 + b"1" + b"]}" * 5000
        + b', "timestamp": 1.0, "message_id": "m"}',
        b'{"sender_id": "x", "target_id": "rx", "payload": {"big": "' + b"x" * 300_000 + b'"}}',
    ],
    ids=[
        "text", "bad-utf8", "array", "missing-fields", "int-sender", "list-payload",
        "bad-timestamp", "truncated", "deep", "huge",
    ],
)
def test_garbage_is_counted_and_the_listener_goes_on(make_agent, r, garbage, caplog) -> None:
    rx = make_agent("rx", cls=Collector, max_message_bytes=200_000)
    tx = make_agent("tx")
    r.publish("agent.rx", garbage)
    tx.send("rx", {"n": 1})
    wait_until(lambda: rx.count() == 1, 5, message="valid message after garbage")
    assert rx.stats.invalid == 1
    assert rx.stats.received == 2
    assert "dropped" in caplog.text


def test_handler_exception_is_logged_with_ids_and_the_agent_keeps_working(make_agent, caplog) -> None:
    errors: List[Exception] = []

    class Flaky(Agent):
        def on_message(self, message: AgentMessage) -> None:
            if message.payload.get("fail"):
                raise ValueError("handler blew up")
            self.ok.set()

        def on_error(self, message: AgentMessage, error: Exception) -> None:
            errors.append(error)

    rx = make_agent("rx", cls=Flaky, start=False, max_workers=1)
    rx.ok = threading.Event()
    rx.start()
    tx = make_agent("tx")
    bad_id = tx.send("rx", {"fail": True})
    tx.send("rx", {"fail": False})
    assert rx.ok.wait(5)
    wait_until(lambda: rx.stats.handler_errors == 1, 5)
    assert isinstance(errors[0], ValueError)
    record = next(r for r in caplog.records if "on_message failed" in r.getMessage())
    assert "rx" in record.getMessage() and bad_id in record.getMessage() and "tx" in record.getMessage()
    assert record.exc_info is not None


def test_queued_messages_are_handled_before_stop_returns(make_agent) -> None:
    rx = make_agent("rx", cls=Collector, delay=0.005, max_workers=2)
    tx = make_agent("tx")
    for n in range(40):
        tx.send("rx", {"n": n})
    wait_until(lambda: rx.stats.received == 40, 5)
    rx.stop(timeout=10)
    assert rx.count() == 40
    assert rx.stats.dropped_on_stop == 0


def test_an_agent_can_message_itself(make_agent) -> None:
    me = make_agent("me", cls=Collector)
    me.send("me", {"n": 7})
    wait_until(lambda: me.count() == 1, 5)
    assert me.by_sender["me"] == [7]


class Keeper(Agent):
    """Keeps each message without answering it; `got` is set on each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: List[AgentMessage] = []
        self.got = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        self.kept.append(message)
        self.got.set()


def ask_in_background(asker: Agent, target_id: str, timeout: float) -> Any:
    """Start ``asker.request()`` in a thread; return (thread, list that gets the outcome)."""
    outcome: List[Any] = []

    def ask() -> None:
        try:
            outcome.append(asker.request(target_id, {"q": 1}, timeout=timeout))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=ask, name="test-asker", daemon=True)
    thread.start()
    return thread, outcome


def test_a_received_message_is_a_value_it_pickles_and_copies(make_agent) -> None:
    import copy
    import pickle

    from mas_sync import MASError
    from mas_sync._errors import CannotReplyError

    keeper = make_agent("keeper", cls=Keeper)
    asker = make_agent("asker")
    thread, outcome = ask_in_background(asker, "keeper", timeout=10)
    assert keeper.got.wait(5)
    message = keeper.kept[0]
    dump = message.model_dump()
    assert set(dump) == {
        "sender_id", "target_id", "payload", "timestamp", "message_id", "seq", "sender_run",
        "sender_instance", "target_instance",
    }
    copies = {
        "pickle": pickle.loads(pickle.dumps(message)),
        "deepcopy": copy.deepcopy(message),
        "copy": copy.copy(message),
        "model_copy": message.model_copy(),
        "model_copy deep": message.model_copy(deep=True),
    }
    assert message.model_dump() == dump
    for how, twin in copies.items():
        assert twin.model_dump() == dump, how
        assert twin == message, how
        assert twin.expects_reply and twin.correlation_id == message.correlation_id, how
        assert not twin.is_reply, how
        with pytest.raises(CannotReplyError, match="cop") as caught:
            twin.reply({"from": how})
        assert isinstance(caught.value, MASError) and isinstance(caught.value, RuntimeError)
    deep = copies["deepcopy"]
    deep.payload["changed"] = True
    assert "changed" not in message.payload
    # The message itself still replies, once its copies are made.
    message.reply({"answer": 42})
    thread.join(10)
    assert outcome and isinstance(outcome[0], AgentMessage), outcome
    assert outcome[0].payload == {"answer": 42}


@pytest.mark.slow
def test_a_received_message_does_not_keep_its_agent_alive(redis_url, make_agent) -> None:
    import gc
    import weakref

    from mas_sync import AgentNotRunningError

    keeper = Keeper("lonely", redis_url=redis_url, heartbeat_interval=0.2, heartbeat_ttl=1.0)
    keeper.start()
    try:
        thread, _ = ask_in_background(make_agent("asker"), "lonely", timeout=1)
        assert keeper.got.wait(5)
        message = keeper.kept[0]
    finally:
        keeper.stop(timeout=5)
    with pytest.raises(AgentNotRunningError):
        message.reply({"too": "late"})  # the agent stopped
    gone = weakref.ref(keeper)
    del keeper
    gc.collect()
    assert gone() is None, "the message keeps its agent alive"
    with pytest.raises(AgentNotRunningError):
        message.reply({"too": "late"})  # the agent is gone
    thread.join(5)


def test_a_message_replies_only_in_the_process_that_received_it(make_agent) -> None:
    from mas_sync import CannotReplyError

    from .support import Forked

    keeper = make_agent("keeper", cls=Keeper)
    asker = make_agent("asker")
    thread, outcome = ask_in_background(asker, "keeper", timeout=10)
    assert keeper.got.wait(5)
    message = keeper.kept[0]

    def child() -> int:
        # (The child cannot start the same id again: the parent's run holds it.)
        try:
            message.reply({"from": "child"})
        except CannotReplyError:
            return 0
        return 2

    assert Forked(child).wait(15) == 0, "the forked child replied (or hung)"
    message.reply({"from": "parent"})
    thread.join(10)
    assert outcome and isinstance(outcome[0], AgentMessage), outcome
    assert outcome[0].payload == {"from": "parent"}
