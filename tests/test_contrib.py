"""ProcessAgents: the per-process start that the Flask and Django integrations share."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings

import pytest

from mas_sync import Agent, AgentMessage
from mas_sync.contrib import DEFAULT_ID_FORMAT, AgentSpec, ProcessAgents
from mas_sync.contrib._process import format_agent_id, host_name

from .conftest import FAST


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"echo": message.payload.get("text"), "pid": os.getpid()})


class Broken(Agent):
    def on_start(self) -> None:
        raise RuntimeError("no start today")


@pytest.fixture
def make_agents(redis_url):
    made = []

    def factory(*specs: AgentSpec, **kwargs) -> ProcessAgents:
        kwargs.setdefault("agent_options", FAST)
        agents = ProcessAgents(specs, redis_url=redis_url, **kwargs)
        made.append(agents)
        return agents

    yield factory
    for agents in made:
        agents.stop()


def test_importing_mas_sync_imports_no_web_framework() -> None:
    code = (
        "import sys, mas_sync, mas_sync.testing, mas_sync.contrib\n"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('flask', 'werkzeug', 'django', 'gunicorn')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ids_carry_the_name_the_host_and_the_process_id() -> None:
    assert DEFAULT_ID_FORMAT == "{name}-{host}-{pid}"
    assert format_agent_id(DEFAULT_ID_FORMAT, "nlp") == f"nlp-{host_name()}-{os.getpid()}"
    assert format_agent_id("{name}", "nlp") == "nlp"
    with pytest.raises(ValueError, match=r"\{name\}, \{pid\} and \{host\}"):
        format_agent_id("{name}-{worker}", "nlp")
    with pytest.raises(ValueError, match="contains ':'"):
        format_agent_id("{name}:{pid}", "nlp")


def test_specs_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        AgentSpec("a b")
    with pytest.raises(TypeError, match="not a mas_sync.Agent subclass"):
        AgentSpec("a", cls=dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="capabilities must be a list"):
        AgentSpec("a", capabilities="nlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid"):
        AgentSpec("a", id_format="{nme}")
    with pytest.raises(ValueError, match="positive number"):
        ProcessAgents([], redis_url="redis://x", stop_timeout=0)


def test_nothing_starts_until_asked_then_once_per_process(make_agents, r) -> None:
    agents = make_agents(AgentSpec("echo", Echo, ["echo"]), AgentSpec("other"))
    assert agents.running == {}
    assert r.keys("agent:*") == []
    started = agents.start()
    assert set(started) == {"echo", "other"}
    assert started["echo"].id == f"echo-{host_name()}-{os.getpid()}"
    assert started["echo"].capabilities == ["echo"]
    assert agents.start() == started  # idempotent: the same agents, nothing new
    agents.ensure_started()
    assert agents.get("echo") is started["echo"]
    assert agents.running == started
    reply = agents.request(agents.agent_id("echo"), {"text": "hi"})
    assert reply.payload == {"echo": "hi", "pid": os.getpid()}
    assert agents.client.id == f"web-{host_name()}-{os.getpid()}"
    agents.stop()
    assert agents.running == {}
    assert not started["echo"].is_running
    assert r.keys("agent:*") == []


def test_a_failed_start_stops_what_it_started(make_agents, r) -> None:
    agents = make_agents(AgentSpec("fine"), AgentSpec("broken", Broken))
    with pytest.raises(RuntimeError, match="no start today"):
        agents.start()
    assert agents.running == {}
    assert r.keys("agent:*") == []
    with pytest.raises(KeyError, match="declared: broken, fine"):
        agents.get("missing")


def test_a_forked_child_starts_agents_of_its_own(make_agents, r) -> None:
    agents = make_agents(AgentSpec("echo", Echo, ["echo"]))
    parent_echo = agents.start()["echo"]
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        report = "child failed"
        try:
            assert agents.running == {}  # the parent's threads did not come along
            agents.stop()  # not this process's agents: nothing to do
            child_echo = agents.get("echo")
            answer = agents.request(child_echo.id, {"text": "child"}, timeout=5)
            report = f"{child_echo.id} {answer.payload['pid']}"
            agents.stop(timeout=2)
        finally:
            os.write(write, report.encode())
            os._exit(0)
    os.close(write)
    try:
        done = threading.Event()
        chunks = []

        def collect() -> None:
            while True:
                chunk = os.read(read, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
            done.set()

        threading.Thread(target=collect, daemon=True).start()
        assert done.wait(20), "the forked child did not finish"
    finally:
        deadline = time.monotonic() + 5
        reaped = False
        while not reaped and time.monotonic() < deadline:
            reaped = os.waitpid(pid, os.WNOHANG) != (0, 0)
            threading.Event().wait(0 if reaped else 0.02)
        if not reaped:  # pragma: no cover
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(read)
    child_id, child_pid = b"".join(chunks).decode().split()
    assert child_id == f"echo-{host_name()}-{pid}" and child_pid == str(pid)
    # The parent's agent still runs and answers, under its own id.
    assert agents.running == {"echo": parent_echo}
    assert agents.request(parent_echo.id, {"text": "parent"}).payload["pid"] == os.getpid()
    assert not r.exists(f"agent:{child_id}")  # the child stopped its agent cleanly
