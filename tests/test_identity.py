"""One live agent per id: start() refuses a duplicate, stop() deletes only its own."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Iterator

import pytest

from mas_sync import Agent, AgentIdInUseError, AgentMessage, MASError
from mas_sync.testing import wait_until

from .conftest import mas_threads


class Counter(Agent):
    """Counts what it receives, and answers requests with its own name."""

    def __init__(self, *args, name: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.lock = threading.Lock()
        self.got = 0
        self.errors: list = []

    def on_message(self, message: AgentMessage) -> None:
        with self.lock:
            self.got += 1
        if message.expects_reply:
            message.reply({"name": self.name})

    def on_error(self, message, error) -> None:
        self.errors.append((message, error))


def test_a_second_start_of_a_live_id_in_the_same_process_is_refused(make_agent, r) -> None:
    first = make_agent("dup", cls=Counter, capabilities=["x"], name="first")
    token = r.hget("agent:dup", "token")
    before = {t.name for t in mas_threads()}
    second = make_agent("dup", cls=Counter, capabilities=["y"], name="second", start=False)
    with pytest.raises(AgentIdInUseError) as caught:
        second.start()
    error = caught.value
    assert isinstance(error, MASError)
    assert error.agent_id == "dup"
    assert "'dup'" in str(error) and "take_over=True" in str(error)
    assert not second.is_running
    assert {t.name for t in mas_threads()} == before  # nothing of the refused run left
    assert r.hget("agent:dup", "token") == token  # the live registration is untouched
    assert r.hget("agent:dup", "capabilities") == '["x"]'
    client = make_agent("client")
    assert [a["id"] for a in client.discover(["x"])] == ["dup"]
    assert client.request("dup", {"q": 1}, timeout=5).payload == {"name": "first"}
    wait_until(lambda: first.got == 1, 5)
    assert second.got == 0


def test_the_refused_agent_stops_without_touching_the_live_registration(make_agent, r) -> None:
    make_agent("dup", cls=Counter)
    second = make_agent("dup", cls=Counter, start=False)
    with pytest.raises(AgentIdInUseError):
        second.start()
    second.stop()
    assert r.exists("agent:dup") and r.exists("agent:dup:heartbeat")


def _child_script(redis_url: str, agent_id: str, take_over: bool = False) -> str:
    return textwrap.dedent(
        f"""
        import sys, threading
        from mas_sync import Agent, AgentIdInUseError
        agent = Agent({agent_id!r}, ["x"], {redis_url!r}, heartbeat_interval=0.2,
                      heartbeat_ttl=1.0, take_over={take_over!r})
        try:
            agent.start()
        except AgentIdInUseError as exc:
            print("refused:", exc, flush=True)
            sys.exit(3)
        print("started", flush=True)
        sys.stdin.readline()
        agent.stop()
        print("stopped", flush=True)
        """
    )


def _spawn(script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def children() -> Iterator[list]:
    procs: list = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_another_process_cannot_start_a_live_id(make_agent, redis_url, r, children) -> None:
    make_agent("dup", capabilities=["x"])
    token = r.hget("agent:dup", "token")
    child = _spawn(_child_script(redis_url, "dup"))
    children.append(child)
    assert child.wait(30) == 3
    out = child.stdout.read()
    assert out.startswith("refused:") and "'dup'" in out and "take_over=True" in out
    assert r.hget("agent:dup", "token") == token


def test_this_process_cannot_start_an_id_live_in_another(make_agent, redis_url, r, children) -> None:
    child = _spawn(_child_script(redis_url, "dup"))
    children.append(child)
    assert child.stdout.readline().strip() == "started"
    token = r.hget("agent:dup", "token")
    agent = make_agent("dup", start=False)
    with pytest.raises(AgentIdInUseError, match="'dup'"):
        agent.start()
    assert r.hget("agent:dup", "token") == token
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "stopped"
    assert child.wait(10) == 0
    agent.start()  # the id is free once its holder stopped cleanly
    assert r.hget("agent:dup", "token") != token


@pytest.mark.slow
def test_take_over_replaces_a_live_run_whose_clean_stop_then_deletes_nothing(
    make_agent, redis_url, r, children, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="mas_sync")
    child = _spawn(_child_script(redis_url, "dup"))
    children.append(child)
    assert child.stdout.readline().strip() == "started"
    winner = make_agent("dup", cls=Counter, capabilities=["x"], take_over=True, name="winner")
    token = r.hget("agent:dup", "token")
    # The loser's next beats find another run's token: it neither re-registers
    # nor brings the registration back to its own.
    threading.Event().wait(0.6)
    assert r.hget("agent:dup", "token") == token
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "stopped"
    assert child.wait(10) == 0
    # The loser's clean stop left the winner's registration and heartbeat alone.
    assert r.hget("agent:dup", "token") == token
    assert r.exists("agent:dup:heartbeat")
    observer = make_agent("observer")
    assert [a["id"] for a in observer.discover(["x"])] == ["dup"]
    winner.stop()
    assert not r.exists("agent:dup")


def test_the_run_that_was_taken_over_stops_beating(make_agent, r, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="mas_sync")
    loser = make_agent("dup", cls=Counter)
    make_agent("dup", cls=Counter, take_over=True)
    token = r.hget("agent:dup", "token")
    wait_until(lambda: "taken over" in caplog.text, 5, message="the loser notices")
    assert "dup" in caplog.text
    # It stops by itself, and says why through on_error.
    wait_until(lambda: not loser.is_running, 5, message="the loser stops")
    assert len(loser.errors) == 1
    message, error = loser.errors[0]
    assert message is None and isinstance(error, AgentIdInUseError)
    loser.stop()
    assert r.hget("agent:dup", "token") == token
    assert r.exists("agent:dup:heartbeat")


@pytest.mark.slow
def test_a_killed_agents_id_is_free_once_its_heartbeat_expires(
    make_agent, redis_url, r, children
) -> None:
    child = _spawn(_child_script(redis_url, "phoenix"))
    children.append(child)
    assert child.stdout.readline().strip() == "started"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    agent = make_agent("phoenix", start=False)
    if r.exists("agent:phoenix:heartbeat"):
        with pytest.raises(AgentIdInUseError):
            agent.start()
    wait_until(lambda: not r.exists("agent:phoenix:heartbeat"), 5, message="heartbeat expires")
    agent.start()
    assert agent.is_running


def test_take_over_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="take_over"):
        Agent("x", take_over="yes")  # type: ignore[arg-type]


def test_a_restart_of_the_same_agent_object_is_not_refused(make_agent) -> None:
    agent = make_agent("again")
    agent.stop()
    agent.start()
    assert agent.is_running


def test_the_error_is_exported_and_documented() -> None:
    import mas_sync

    assert "AgentIdInUseError" in mas_sync.__all__
    assert issubclass(AgentIdInUseError, MASError)
    assert AgentIdInUseError.__doc__
