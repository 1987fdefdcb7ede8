"""Agent lifecycle: start, stop, threads, registration and bad input."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, List, Tuple

import pytest

from mas_sync import (
    Agent,
    AgentIdInUseError,
    AgentMessage,
    AgentNotRunningError,
    MASConnectionError,
)
from mas_sync.testing import free_port, wait_until

from .conftest import mas_threads, read_message
from .support import Blocking


class Recorder(Agent):
    """Keeps what it receives; `got` is set on each message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: List[AgentMessage] = []
        self.got = threading.Event()
        self.lock = threading.Lock()

    def on_message(self, message: AgentMessage) -> None:
        with self.lock:
            self.received.append(message)
        self.got.set()


def agent_threads(agent_id: str) -> List[threading.Thread]:
    return [t for t in mas_threads() if t.name.startswith(f"mas-agent[{agent_id}]")]


def test_start_registers_and_stop_removes_registration_but_keeps_state(make_agent, r) -> None:
    agent = make_agent("a1", capabilities=["nlp"])
    fields = r.hgetall("agent:a1")
    assert fields["id"] == "a1"
    assert json.loads(fields["capabilities"]) == ["nlp"]
    assert fields["status"] == "ACTIVE"
    assert fields["token"]
    assert r.exists("agent:a1:heartbeat")
    agent.update_state({"k": 1})
    agent.stop()
    assert not r.exists("agent:a1")
    assert not r.exists("agent:a1:heartbeat")
    assert r.hgetall("agent.state:a1") == {"k": "1"}


def test_register_and_deregister_are_announced_on_mas_system(make_agent, r) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("mas.system")
    try:
        agent = make_agent("a1", capabilities=["x"])
        agent.stop()
        events = [json.loads(read_message(pubsub)["data"]) for _ in range(2)]
        assert events == [
            {"type": "REGISTER", "agent_id": "a1", "capabilities": ["x"]},
            {"type": "DEREGISTER", "agent_id": "a1"},
        ]
    finally:
        pubsub.close()


def test_threads_are_daemons_named_after_the_agent_and_gone_after_stop(make_agent) -> None:
    sender = make_agent("sender")
    agent = make_agent("worker-agent", cls=Recorder)
    sender.send("worker-agent", {"n": 1})
    assert agent.got.wait(5)
    threads = agent_threads("worker-agent")
    names = sorted(t.name for t in threads)
    assert any(n.endswith("-listener") for n in names)
    assert any(n.endswith("-heartbeat") for n in names)
    assert any("-worker-" in n for n in names)
    assert all(t.daemon for t in threads)
    agent.stop()
    assert not [t for t in threads if t.is_alive()]
    assert agent_threads("worker-agent") == []


def test_context_manager_starts_and_stops(redis_url, r) -> None:
    with Agent("ctx", redis_url=redis_url) as agent:
        assert agent.is_running
        assert r.exists("agent:ctx")
    assert not agent.is_running
    assert not r.exists("agent:ctx")
    assert agent_threads("ctx") == []


def test_stop_twice_and_stop_before_start_are_harmless(make_agent) -> None:
    idle = make_agent("idle", start=False)
    idle.stop()
    agent = make_agent("twice")
    agent.stop()
    agent.stop()
    assert not agent.is_running


def test_concurrent_stops_from_many_threads(make_agent) -> None:
    agent = make_agent("crowd")
    errors: List[BaseException] = []

    def stopper() -> None:
        try:
            agent.stop()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=stopper) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert agent_threads("crowd") == []


@pytest.mark.parametrize("workers", [1, 4])
def test_stop_from_inside_on_message_does_not_deadlock(make_agent, r, workers) -> None:
    stopped = threading.Event()

    class SelfStopper(Agent):
        def on_message(self, message: AgentMessage) -> None:
            self.stop()
            stopped.set()

    agent = make_agent("selfstop", cls=SelfStopper, max_workers=workers)
    make_agent("poker").send("selfstop", {"stop": True})
    assert stopped.wait(5)
    assert not agent.is_running
    assert not r.exists("agent:selfstop")
    wait_until(lambda: not agent_threads("selfstop"), 5, message="worker exits")


def test_stop_runs_on_stop_and_agent_can_still_send_then(make_agent) -> None:
    receiver = make_agent("rx", cls=Recorder)

    class Farewell(Agent):
        def on_stop(self) -> None:
            self.send("rx", {"bye": True})

    make_agent("leaver", cls=Farewell).stop()
    assert receiver.got.wait(5)
    assert receiver.received[0].payload == {"bye": True}


def test_agent_can_be_started_again_after_stop(make_agent, r) -> None:
    agent = make_agent("again", cls=Recorder)
    agent.stop()
    agent.start()
    make_agent("s").send("again", {"n": 2})
    assert agent.got.wait(5)
    assert r.exists("agent:again")


def test_start_twice_is_refused(make_agent) -> None:
    agent = make_agent("once")
    with pytest.raises(AgentNotRunningError, match="already started"):
        agent.start()


def test_on_start_failure_stops_the_agent_and_reraises(make_agent, r) -> None:
    class Broken(Agent):
        def on_start(self) -> None:
            raise RuntimeError("boom in on_start")

    agent = make_agent("broken", cls=Broken, start=False)
    with pytest.raises(RuntimeError, match="boom in on_start"):
        agent.start()
    assert not agent.is_running
    assert not r.exists("agent:broken")
    assert agent_threads("broken") == []


def starting(agent: Agent) -> Tuple[threading.Thread, List[BaseException]]:
    """``agent.start()`` begun in a thread of its own, and the list of what it raised."""
    raised: List[BaseException] = []

    def start() -> None:
        try:
            agent.start()
        except BaseException as exc:  # noqa: B902 - recorded for the assertions
            raised.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    return starter, raised


def test_on_start_failing_after_a_stop_gave_up_waiting_still_stops_the_agent(
    make_agent, r
) -> None:
    """A stop() that timed out leaves the stop to start(); when on_start()
    then raised, the stop was skipped and the run was left running for good."""
    entered, release = threading.Event(), threading.Event()

    class Slow(Agent):
        def on_start(self) -> None:
            if entered.is_set():
                return  # started again, below
            entered.set()
            assert release.wait(10)
            raise RuntimeError("boom in on_start")

    agent = make_agent("slow", cls=Slow, start=False)
    starter, raised = starting(agent)
    assert entered.wait(10)
    agent.stop(timeout=0.1)  # gives up waiting for start(), which is to stop the agent
    release.set()
    starter.join(10)
    assert [type(e) for e in raised] == [RuntimeError]
    assert not agent.is_running and agent._mas_run is None
    assert agent_threads("slow") == []
    assert not r.exists("agent:slow")
    agent.start()  # and it can start again
    agent.stop()


def test_a_stop_that_lands_before_on_start_calls_neither_hook(make_agent, r) -> None:
    """A stop() made while start() registered (after its last look for a stop)
    skipped on_start(), yet the stop still called on_stop()."""
    calls: List[str] = []

    class Hooked(Agent):
        def on_start(self) -> None:
            calls.append("on_start")

        def on_stop(self) -> None:
            calls.append("on_stop")

    agent = make_agent("hooked", cls=Hooked, start=False)
    r.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # holds the registration
    try:
        starter, raised = starting(agent)
        wait_until(lambda: any(c.get("cmd") == "evalsha" and "b" in c.get("flags", "")
                               for c in r.client_list()), 5, message="registering")
        stopper = threading.Thread(target=agent.stop, daemon=True)
        stopper.start()
        wait_until(lambda: agent._mas_run is None or agent._mas_run.stopping, 5)
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    starter.join(10)
    stopper.join(10)
    assert [type(e) for e in raised] == [AgentNotRunningError]
    assert calls == []
    assert not agent.is_running


@pytest.mark.slow
def test_messages_wait_until_on_start_returns(make_agent) -> None:
    order: List[str] = []
    handled = threading.Event()

    class Slow(Agent):
        def on_start(self) -> None:
            # A message sent to itself now is handled only after on_start...
            self.send(self.id, {"early": True})
            # ... even once it has arrived, when a worker would take it at once.
            wait_until(lambda: self.stats.received == 1, 5, message="the message arrived")
            handled.wait(1.0)
            order.append("on_start done")

        def on_message(self, message: AgentMessage) -> None:
            order.append("message")
            handled.set()

    agent = make_agent("slowstart", cls=Slow)
    assert handled.wait(5)
    assert order == ["on_start done", "message"]
    assert agent.stats.handled == 1
    agent.stop()


def test_unreachable_redis_fails_promptly_with_the_url_and_no_threads() -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    agent = Agent("lonely", redis_url=url)
    started = time.monotonic()
    with pytest.raises(MASConnectionError) as info:
        agent.start()
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in str(info.value)
    assert "secret" not in str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert agent_threads("lonely") == []
    assert not agent.is_running


def test_send_before_start_and_after_stop_is_a_runtime_error(make_agent) -> None:
    agent = make_agent("early", start=False)
    with pytest.raises(RuntimeError, match="not started"):
        agent.send("x", {})
    with pytest.raises(AgentNotRunningError):
        agent.discover()
    with pytest.raises(AgentNotRunningError):
        agent.update_state({"a": 1})
    agent.start()
    agent.stop()
    with pytest.raises(AgentNotRunningError):
        agent.send("x", {})


@pytest.mark.parametrize(
    "payload, error",
    [
        ([1, 2], TypeError),
        ("text", TypeError),
        ({"obj": object()}, TypeError),
        ({1: "int key"}, TypeError),
        ({"nan": float("nan")}, ValueError),
    ],
)
def test_bad_payload_raises_before_anything_is_published(make_agent, r, payload, error) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("agent.target")
    try:
        agent = make_agent("sender")
        with pytest.raises(error):
            agent.send("target", payload)
        agent.send("target", {"marker": True})  # the next valid message comes first
        message = read_message(pubsub)
        assert message is not None
        assert json.loads(message["data"])["payload"] == {"marker": True}
    finally:
        pubsub.close()


@pytest.mark.parametrize("target", ["", "a:b", "a*", 5])
def test_bad_target_id_is_refused(make_agent, target) -> None:
    agent = make_agent("sender")
    with pytest.raises((TypeError, ValueError)):
        agent.send(target, {})


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "a?", "a[", "a]", "a b", "a\x01"])
def test_bad_agent_id_is_a_value_error_at_construction(bad) -> None:
    with pytest.raises(ValueError):
        Agent(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(heartbeat_interval=0),
        dict(heartbeat_interval=10, heartbeat_ttl=5),
        dict(max_workers=0),
        dict(max_pending=-1),
        dict(capabilities="nlp"),
        dict(state_model=dict),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs) -> None:
    with pytest.raises((TypeError, ValueError)):
        Agent("ok", **kwargs)


def test_bad_metadata_fails_start_cleanly(make_agent, r) -> None:
    class BadMeta(Agent):
        def get_metadata(self) -> dict:
            return {"when": object()}

    agent = make_agent("meta", cls=BadMeta, start=False)
    with pytest.raises(TypeError, match="get_metadata"):
        agent.start()
    assert not r.exists("agent:meta")
    assert agent_threads("meta") == []


def test_heartbeat_is_refreshed_and_restores_a_lost_registration(make_agent, r) -> None:
    make_agent("beater", capabilities=["b"])
    first = r.get("agent:beater:heartbeat")
    wait_until(lambda: r.get("agent:beater:heartbeat") != first, 5, message="heartbeat")
    assert 0 < r.pttl("agent:beater:heartbeat") <= 1000
    r.delete("agent:beater")
    wait_until(lambda: r.hget("agent:beater", "status") == "ACTIVE", 5, message="re-register")
    assert json.loads(r.hget("agent:beater", "capabilities")) == ["b"]
    r.hset("agent:beater", "status", "INACTIVE")
    wait_until(lambda: r.hget("agent:beater", "status") == "ACTIVE", 5, message="reactivate")


def test_stop_is_bounded_when_a_handler_is_stuck(make_agent, caplog) -> None:
    agent = make_agent("stuck", cls=Blocking)
    make_agent("s").send("stuck", {})
    assert agent.entered.wait(5)
    started = time.monotonic()
    agent.stop(timeout=0.5)
    took = time.monotonic() - started
    assert took < 0.5 + 0.3, f"stop(timeout=0.5) took {took:.2f} s"
    assert "still running after stop" in caplog.text
    agent.release.set()  # let the worker go, so that no thread outlives the test
    wait_until(lambda: not agent_threads("stuck"), 5)


def test_many_agents_in_one_process_use_few_connections(redis_url, r) -> None:
    agents = [Agent(f"m{i}", redis_url=redis_url) for i in range(20)]
    for agent in agents:
        agent.start()
    try:
        clients = r.client_list()
        # Per agent: one pub/sub connection plus the command connections in use.
        assert len(clients) <= 20 * 3 + 2
        assert sum(1 for c in clients if int(c.get("sub", 0)) > 0) == 20
    finally:
        for agent in agents:
            agent.stop()
    wait_until(lambda: len(r.client_list()) == 1, 5, message="all connections closed")


def test_connection_error_during_send_is_a_mas_connection_error(redis_server) -> None:
    from mas_sync.testing import RedisServer

    with RedisServer() as private:
        agent = Agent("doomed", redis_url=private.url, retry_timeout=0.5)
        agent.start()
        private.kill()
        with pytest.raises(MASConnectionError):
            agent.send("x", {})
        agent.stop(timeout=2)
    assert agent_threads("doomed") == []


def test_repr_says_whether_it_runs(make_agent) -> None:
    agent = make_agent("r1", start=False)
    assert "stopped" in repr(agent)
    agent.start()
    assert "running" in repr(agent)


def test_a_forked_child_sees_the_agent_stopped_and_can_start_it_again(make_agent, r) -> None:
    import os
    import warnings

    agent = make_agent("forked", cls=Recorder)
    token = r.hget("agent:forked", "token")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            if not agent.is_running:
                try:
                    # Fresh threads and connections in the child, up to the
                    # registration, which the parent's live run still holds.
                    agent.start()
                except AgentIdInUseError:
                    code = 0 if not agent.is_running else 2
                else:
                    agent.stop(timeout=2)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.05)
    else:  # pragma: no cover
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The parent's agent is untouched and still works.
    assert agent.is_running
    make_agent("poke").send("forked", {"after": "fork"})
    assert agent.got.wait(5)
    assert r.hget("agent:forked", "token") == token


def test_a_child_forked_while_the_agent_locks_are_held_does_not_hang(make_agent) -> None:
    # Threads do not survive fork(), but the locks they held stay held in the
    # child: each must be made anew there, for running and stopped agents alike.
    from .support import Forked, HeldLocks

    rx = make_agent("held", cls=Recorder)
    tx = make_agent("holder-tx")
    idle = make_agent("held-idle", start=False)
    tx.send("held", {"n": 1})
    assert rx.got.wait(5)
    wait_until(lambda: rx.stats.handled == 1, 5)
    run = tx._mas_run
    assert run is not None
    holder = HeldLocks(
        rx._mas_gaps._lock,  # the listener holds it while it counts a message
        rx._mas_counters._lock,
        rx._mas_lock,
        run.outbox.numbering._lock,
        idle._mas_gaps._lock,
        idle._mas_counters._lock,
        idle._mas_lock,
    )

    def child() -> int:
        stats = (rx.stats, idle.stats, tx.stats)
        assert all(s.missed == 0 for s in stats)
        idle.start()  # fresh threads and connections in the child
        idle.stop(timeout=2)
        return 0

    try:
        forked = Forked(child)
    finally:
        holder.release()
    assert forked.wait(15) == 0, "the forked child hung (or failed)"
    # The parent's agents are untouched.
    assert rx.stats.handled == 1
    tx.send("held", {"n": 2})
    wait_until(lambda: rx.stats.handled == 2, 5)


def test_send_racing_stop_publishes_or_raises_not_running(make_agent, r) -> None:
    pubsub = r.pubsub()
    pubsub.subscribe("agent.rx")
    confirmed = pubsub.get_message(timeout=5)
    assert confirmed is not None and confirmed["type"] == "subscribe"
    tx = make_agent("tx")
    lock = threading.Lock()
    sent: List[str] = []
    refused: List[int] = []
    others: List[BaseException] = []
    go = threading.Barrier(9, timeout=5)

    def sender(n: int) -> None:
        go.wait()
        i = 0
        while True:
            try:
                message_id = tx.send("rx", {"n": n, "i": i})
            except AgentNotRunningError:
                with lock:
                    refused.append(n)
                return
            except BaseException as exc:  # anything else is a failure of the test
                with lock:
                    others.append(exc)
                return
            with lock:
                sent.append(message_id)
            i += 1

    threads = [
        threading.Thread(target=sender, args=(n,), name=f"test-sender-{n}", daemon=True)
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    go.wait()
    wait_until(lambda: len(sent) >= 200, 10, message="sends under way")
    tx.stop(timeout=5)
    for thread in threads:
        thread.join(10)
    assert [t.name for t in threads if t.is_alive()] == []
    assert others == []
    assert sorted(refused) == list(range(8))  # every sender ended on AgentNotRunningError
    published: set = set()

    def all_published() -> bool:
        while True:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is None:
                return published >= set(sent)
            published.add(json.loads(message["data"])["message_id"])

    wait_until(all_published, 10, message="every id send() returned was published")
    assert published == set(sent)  # and nothing was published that send() did not return
    pubsub.close()
