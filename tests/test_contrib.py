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
from mas_sync.contrib._names import format_agent_id, host_name

from .conftest import FAST
from .support import REDIS_PY_RUNS_CLUSTER


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
    future = agents.request_future(agents.agent_id("echo"), {"text": "later"})
    assert future.result(timeout=5).payload == {"echo": "later", "pid": os.getpid()}
    gathered = agents.request_many("echo", {"text": "all"})
    assert gathered.targets == (agents.agent_id("echo"),) and not gathered.errors
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


# -- finding declared agents by name (issue 10, item 6) --------------------------


class Labelled(Echo):
    def get_metadata(self):
        return {"lang": "en"}


def test_declared_agents_publish_their_name_and_are_found_by_it(make_agents, make_agent) -> None:
    from mas_sync.contrib import NAME_KEY

    agents = make_agents(AgentSpec("echo", Labelled, ["echo"]), AgentSpec("other"))
    make_agent("stranger", Echo, capabilities=["echo"])  # not declared: no name
    assert agents.find("echo") == []  # nothing runs yet; only the client starts
    started = agents.start()
    echo_id = started["echo"].id
    assert agents.find("echo") == [echo_id]
    assert agents.find("other") == [started["other"].id]
    assert agents.find("nobody") == []
    [found] = agents.discover(name="echo")
    assert found == {
        "id": echo_id, "capabilities": ["echo"], "metadata": {"lang": "en", NAME_KEY: "echo"},
        "delivery": "pubsub", "instances": 1,
    }
    assert [a["id"] for a in agents.discover(["echo"])] == sorted([echo_id, "stranger"])
    assert agents.discover(["nlp"], name="echo") == []  # both must match
    everyone = [a["id"] for a in agents.discover()]
    assert {echo_id, started["other"].id, "stranger", agents.client.id} <= set(everyone)
    with pytest.raises(ValueError, match="letters, digits"):
        agents.find("a b")
    with pytest.raises(TypeError):
        agents.discover("echo")  # type: ignore[arg-type]


def test_a_declared_agent_is_found_by_name_from_another_process(make_agents, redis_url) -> None:
    code = (
        "import sys\n"
        "from mas_sync.contrib import AgentSpec, ProcessAgents\n"
        "agents = ProcessAgents([AgentSpec('remote')], redis_url=sys.argv[1])\n"
        "agents.start()\n"
        "print(agents.agent_id('remote'), flush=True)\n"
        "sys.stdin.read()\n"
        "agents.stop()\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, redis_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        remote_id = other.stdout.readline().strip()
        assert remote_id.endswith(f"-{other.pid}")
        here = make_agents(AgentSpec("remote"))  # declared here too, running nowhere here
        assert here.find("remote") == [remote_id]
        assert here.running == {}
    finally:
        other.stdin.close()
        other.wait(20)


# -- options and URLs are checked when declared (issue 10, item 7) ---------------


class Tuned(Agent):
    def __init__(self, agent_id: str, *, tone: str = "plain", **kwargs) -> None:
        super().__init__(agent_id, **kwargs)
        self.tone = tone


class Narrow(Agent):
    def __init__(self, agent_id: str, redis_url: str = "redis://localhost:6379") -> None:
        super().__init__(agent_id, redis_url=redis_url, **FAST)


def test_options_are_checked_against_the_agent_class_signature() -> None:
    with pytest.raises(ValueError, match=r"'max_wrkers'.*did you mean 'max_workers'"):
        ProcessAgents([], redis_url="redis://x", agent_options={"max_wrkers": 2})
    with pytest.raises(ValueError, match=r"agent 'a'.*'max_wrkers'"):
        AgentSpec("a", options={"max_wrkers": 2})
    with pytest.raises(ValueError, match="'agent_id'.*id format"):
        AgentSpec("a", options={"agent_id": "fixed"})
    AgentSpec("a", Tuned, options={"tone": "warm", "max_workers": 2})  # a subclass takes more
    with pytest.raises(ValueError, match="'tone'"):
        # Every agent, and the client (a plain Agent), gets MAS_AGENT_OPTIONS.
        ProcessAgents([], redis_url="redis://x", agent_options={"tone": "warm"})
    agents = ProcessAgents(
        [AgentSpec("n", Narrow)], redis_url="redis://x", agent_options={"max_workers": 2}
    )
    with pytest.raises(ValueError, match=r"agent 'n'.*Narrow.*'max_workers'"):
        agents.specs()
    with pytest.raises(TypeError, match="option names"):
        AgentSpec("a", options={1: 2})  # type: ignore[dict-item]
    # What settings of their own give (they used to win over those settings).
    with pytest.raises(ValueError, match="'redis_url' is not an option here: MAS_REDIS_URL"):
        ProcessAgents([], redis_url="redis://x", agent_options={"redis_url": "redis://y"})
    with pytest.raises(ValueError, match="'capabilities' is not an option here"):
        AgentSpec("a", options={"capabilities": ["x"]})
    # A declared agent may not take the client's name (their ids would be the same).
    with pytest.raises(ValueError, match="agent 'web': the name of the client agent"):
        ProcessAgents([AgentSpec("web")], redis_url="redis://x").specs()


def test_the_client_id_has_the_process_id_whatever_the_id_format(make_agents) -> None:
    """With a format without {pid} the client of every worker had one id, and
    all but the first failed with AgentIdInUseError."""
    agents = make_agents(AgentSpec("echo", Echo), id_format="{name}-{host}")
    assert agents.agent_id("web") == f"web-{host_name()}-{os.getpid()}"
    assert agents.client.id == agents.agent_id("web")
    assert agents.agent_id("echo") == f"echo-{host_name()}"


def test_redis_urls_are_checked_against_every_scheme_mas_sync_takes() -> None:
    from mas_sync._redis import REDIS_URL_SCHEMES, check_redis_url, make_client

    assert REDIS_URL_SCHEMES == (
        "redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://",
        "redis+cluster://", "rediss+cluster://",
    )
    listed = ", ".join(REDIS_URL_SCHEMES)
    with pytest.raises(ValueError, match="http://bad") as refused:
        ProcessAgents([], redis_url="http://bad")
    assert listed in str(refused.value)
    with pytest.raises(ValueError) as from_client:
        make_client("http://bad", 1)
    assert listed in str(from_client.value)
    from mas_sync import MASService

    for make in (lambda: Agent("a", redis_url="http://bad"), lambda: MASService("http://bad")):
        with pytest.raises(ValueError) as refused:
            make()
        assert listed in str(refused.value)
    with pytest.raises(ValueError, match="http://u:") as secret:
        check_redis_url("http://u:hunter2@host")
    assert "hunter2" not in str(secret.value)
    for url in ("redis://h:1/0", "rediss://h", "unix:///tmp/r.sock",
                "redis+sentinel://h:1/main", "rediss+sentinel://h:1/main"):
        check_redis_url(url)
    for url in ("redis+cluster://h:1,h:2", "rediss+cluster://h:1,h:2"):
        if REDIS_PY_RUNS_CLUSTER:
            check_redis_url(url)
        else:
            with pytest.raises(ValueError, match="needs redis-py 8.1.0 or newer"):
                check_redis_url(url)


EXIT_SCRIPT = """
import sys
from mas_sync import Agent
from mas_sync.contrib import AgentSpec, ProcessAgents

class Loud(Agent):
    def on_stop(self):
        print("stopped", self.id, flush=True)

names = ["a", "b", "c", "d", "e"]
agents = ProcessAgents(
    [AgentSpec(name, Loud, id_format="{name}") for name in names],
    redis_url=sys.argv[1], id_format="{name}",
)
agents.start()
assert agents.client.is_running
print("running", flush=True)
"""


def test_the_agents_of_a_process_stop_at_exit_declared_last_first(redis_url, r) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, redis_url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # ProcessAgents.stop() at exit, before mas_sync's own exit handler: its order.
    assert result.stdout.split("\n") == [
        "running", "stopped e", "stopped d", "stopped c", "stopped b", "stopped a", ""
    ]
    assert not r.keys("agent:*")
