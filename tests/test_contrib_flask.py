"""The Flask extension and its example app: test client, reloader, gunicorn --preload."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from flask import Flask

from mas_sync import Agent, AgentMessage
from mas_sync.contrib import ProcessAgents
from mas_sync.contrib._names import host_name
from mas_sync.contrib.flask import MAS
from mas_sync.testing import free_port, wait_until

from ._processes import ROOT, http_get, run_server
from .conftest import FAST

EXAMPLE_DIR = os.path.join(ROOT, "examples", "flask_app")


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "mas_sync_flask_example", os.path.join(EXAMPLE_DIR, "app.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> Any:
    return load_example()


@pytest.fixture
def example_app(example, redis_url) -> Iterator[Flask]:
    app = example.create_app({"MAS_REDIS_URL": redis_url, "MAS_AGENT_OPTIONS": FAST})
    try:
        yield app
    finally:
        example.mas.stop(app)


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"pid": os.getpid(), **message.payload})


# -- in process, through Flask's test client -----------------------------------


def test_a_view_asks_an_agent_and_returns_its_reply(example, example_app, r) -> None:
    assert example.mas.agents(example_app).running == {}  # nothing starts at import
    response = example_app.test_client().get("/summarize?text=agents+in+a+flask+app")
    assert response.status_code == 200, response.data
    summarizer_id = f"summarizer-{host_name()}-{os.getpid()}"
    assert response.get_json() == {
        "summary": "agents in a",
        "words": 5,
        "pid": os.getpid(),
        "answered_by": summarizer_id,
    }
    assert example_app.test_client().get("/agents").get_json() == [summarizer_id]


def test_agents_start_once_per_process_and_stop(example, example_app, r) -> None:
    client = example_app.test_client()
    assert client.get("/summarize?text=one").status_code == 200
    agents = example_app.extensions["mas"]
    assert isinstance(agents, ProcessAgents)
    first = dict(agents.running)
    assert client.get("/summarize?text=two").status_code == 200
    assert example.mas.start(example_app) == first  # no second start
    assert sorted(r.keys("agent:*:heartbeat")) == sorted(
        f"agent:{a}:heartbeat"
        for a in (first["summarizer"].id, first["jobs"].id, agents.client.id)
    )
    example.mas.stop(example_app)
    assert agents.running == {}
    assert r.keys("agent:*") == []


def test_the_extension_in_the_usual_flask_shape(redis_url, r) -> None:
    mas = MAS()
    mas.agent("echo", Echo, capabilities=["echo"])
    app = Flask("shape")
    app.config.update(
        MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST, MAS_START_ON_FIRST_REQUEST=False
    )

    @app.get("/ask")
    def ask() -> Dict[str, Any]:
        return mas.request(mas.get("echo").id, {"hello": "world"}).payload

    @app.get("/ask-all")
    def ask_all() -> Dict[str, Any]:
        future = mas.request_future(mas.get("echo").id, {"n": 1})
        gathered = mas.request_many("echo", {"n": 2})
        return {"future": future.result(timeout=5).payload["n"],
                "gathered": {k: v.payload["n"] for k, v in gathered.replies.items()}}

    mas.init_app(app)
    try:
        assert app.config["MAS_AGENT_ID_FORMAT"] == "{name}-{host}-{pid}"
        assert app.config["MAS_CLIENT_NAME"] == "web"
        assert app.config["MAS_REQUEST_TIMEOUT"] == 10.0
        assert app.extensions["mas"].extension is mas
        with pytest.raises(RuntimeError, match="initialised for this app already"):
            mas.init_app(app)
        with pytest.raises(ValueError, match="declared already"):
            mas.agent("echo", Echo)
        with pytest.raises(TypeError, match="capabilities must be a list"):
            mas.agent("bare", Echo, capabilities="echo")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="no app context|application context"):
            mas.request("echo", {})
        app.test_client().get("/nothing")
        assert mas.agents(app).running == {}  # MAS_START_ON_FIRST_REQUEST is off
        started = mas.start(app)
        assert started["echo"].capabilities == ["echo"]
        response = app.test_client().get("/ask")
        assert response.get_json() == {"pid": os.getpid(), "hello": "world"}
        response = app.test_client().get("/ask-all")
        assert response.get_json() == {"future": 1, "gathered": {started["echo"].id: 2}}
    finally:
        mas.stop(app)
    bad = Flask("bad-format")
    bad.config["MAS_AGENT_ID_FORMAT"] = "{name}-{worker}"
    with pytest.raises(ValueError, match="not valid"):
        MAS(bad)  # refused when the app is set up, not at its first request
    plain = MAS(Flask("plain"))
    with pytest.raises(RuntimeError, match="not initialised for this app"):
        plain.agents(Flask("other"))


# -- real servers ----------------------------------------------------------------


def summarizers(probe: Agent) -> Dict[str, int]:
    """Summarizer id -> pid, for every summarizer registered."""
    return {
        found["id"]: int(found["id"].rsplit("-", 1)[1]) for found in probe.discover(["nlp"])
    }


@pytest.mark.slow
def test_the_werkzeug_reloader_starts_the_agents_once(make_agent, redis_url) -> None:
    port = free_port()
    probe = make_agent("probe")
    args = ["-m", "flask", "--app", "examples/flask_app/app.py:create_app", "run", "--reload",
            "--host", "127.0.0.1", "--port", str(port)]
    with run_server(args, env_extra={"MAS_REDIS_URL": redis_url}) as server:
        body = wait_until(
            lambda: http_get(f"http://127.0.0.1:{port}/summarize?text=once+only"),
            timeout=30, interval=0.1, message="the development server answers",
        )
        reply = json.loads(body)
        # One summarizer, in the reloader's serving child, not in its watcher.
        assert summarizers(probe) == {reply["answered_by"]: reply["pid"]}
        assert reply["pid"] != server.pid
        server.signal_group(signal.SIGINT)  # Ctrl-C
        server.wait(15)


def gunicorn_args(port: int) -> Tuple[str, ...]:
    from gunicorn.config import KNOWN_SETTINGS

    args = ("-m", "gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{port}",
            "-c", os.path.join(EXAMPLE_DIR, "gunicorn.conf.py"), "--chdir", EXAMPLE_DIR)
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        args += ("--no-control-socket",)  # gunicorn 24+: no socket in $HOME
    return args + ("app:create_app()",)


@pytest.mark.slow
def test_gunicorn_preload_two_workers_each_run_agents_that_answer(make_agent, redis_url, r) -> None:
    port = free_port()
    probe = make_agent("probe")
    started = time.monotonic()
    with run_server(list(gunicorn_args(port)), env_extra={"MAS_REDIS_URL": redis_url}) as server:
        found = wait_until(
            lambda: len(summarizers(probe)) == 2 and summarizers(probe),
            timeout=30, interval=0.05, message="two workers' summarizers register",
        )
        assert server.pid not in found.values()  # none runs in the master
        answers = {
            agent_id: probe.request(agent_id, {"text": "from the probe"}, timeout=5).payload["pid"]
            for agent_id in found
        }
        assert answers == found  # each worker's agent answers, from its own process
        both_answered = time.monotonic() - started
        body = wait_until(lambda: http_get(f"http://127.0.0.1:{port}/summarize?text=a+b+c+d"),
                          timeout=10, interval=0.05)
        assert json.loads(body)["answered_by"] in found
        assert sorted(json.loads(http_get(f"http://127.0.0.1:{port}/agents"))) == sorted(found)
        server.signal_group(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()
    # Each worker stopped its agents on the way out: nothing stays registered.
    assert [k for k in r.keys("agent:*") if "probe" not in k] == []
    print(f"gunicorn --preload -w 2: both workers' agents answered after {both_answered:.2f} s")


class Reports(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reports: List[Dict[str, Any]] = []

    def on_message(self, message: AgentMessage) -> None:
        self.reports.append(message.payload)


@pytest.mark.slow
def test_gunicorn_workers_are_instances_of_one_reliable_agent(make_agent, redis_url, r) -> None:
    port = free_port()
    probe = make_agent("probe", Reports)

    def jobs() -> List[Dict[str, Any]]:
        return [a for a in probe.discover() if a["id"] == "jobs"]

    with run_server(list(gunicorn_args(port)), env_extra={"MAS_REDIS_URL": redis_url}) as server:
        wait_until(lambda: jobs() and jobs()[0]["instances"] == 2, timeout=30, interval=0.05,
                   message="both workers join the agent 'jobs'")
        assert jobs()[0]["delivery"] == "reliable"  # one entry, two instances
        pids = [probe.request("jobs", {"job": n}, timeout=5).payload["pid"] for n in range(20)]
        assert len(set(pids)) == 2 and server.pid not in pids  # both workers take jobs
        assert probe.stats.replies_dropped == 0  # each reply came once, to the asker
        server.signal_group(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()
    assert jobs() == [] and not r.exists("agent:jobs")
    # Sent while no worker runs: it waits in the stream for the next one.
    probe.send("jobs", {"job": "while-down", "report_to": "probe"})
    with run_server(list(gunicorn_args(port)), env_extra={"MAS_REDIS_URL": redis_url}) as server:
        report = wait_until(lambda: probe.reports, timeout=30, interval=0.05,
                            message="the job sent while down is done")
        assert report[0]["job"] == "while-down"
        # Both workers booted before the stop: a SIGTERM that reaches a worker
        # gunicorn is still forking (before it set its signal handlers) is
        # lost, and the master then waits out its graceful timeout.
        wait_until(lambda: jobs() and jobs()[0]["instances"] == 2, timeout=30, interval=0.05,
                   message="both workers join the agent 'jobs' again")
        server.signal_group(signal.SIGTERM)
        assert server.wait(20) == 0, server.output()
    assert probe.reports == report  # once


def test_the_readme_example_works(redis_url) -> None:
    from .test_readme import literal_block_after

    code = literal_block_after("Flask\n~~~~~")
    assert '"redis://localhost:6379/0"' in code
    namespace: Dict[str, Any] = {"__name__": "readme_flask_example"}
    exec(code.replace('"redis://localhost:6379/0"', repr(redis_url)), namespace)
    app = namespace["create_app"]()
    try:
        response = app.test_client().get("/summarize?text=from+the+readme")
        assert response.get_json() == {"summary": "from the readme"}
    finally:
        namespace["mas"].stop(app)


def test_views_find_declared_agents_by_name_through_the_client(redis_url, make_agent) -> None:
    mas = MAS()
    mas.agent("echo", Echo, capabilities=["echo"])
    make_agent("stranger", Echo, capabilities=["echo"])  # not declared: no name
    app = Flask("by-name")
    app.config.update(MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST)

    @app.get("/ask")
    def ask() -> Dict[str, Any]:
        [target] = mas.find("echo")
        return {"found": [a["id"] for a in mas.discover(["echo"])],
                **mas.request(target, {"hello": "name"}).payload}

    mas.init_app(app)
    try:
        echo_id = f"echo-{host_name()}-{os.getpid()}"
        response = app.test_client().get("/ask")
        assert response.get_json() == {
            "found": sorted([echo_id, "stranger"]), "pid": os.getpid(), "hello": "name"
        }
        with app.app_context():
            assert [a["id"] for a in mas.discover(name="echo")] == [echo_id]
            assert mas.find("stranger") == []
    finally:
        mas.stop(app)


def test_init_app_refuses_unknown_agent_options_and_redis_urls() -> None:
    from mas_sync._redis import REDIS_URL_SCHEMES

    bad = Flask("bad-options")
    bad.config["MAS_AGENT_OPTIONS"] = {"max_wrkers": 2}
    with pytest.raises(ValueError, match=r"MAS_AGENT_OPTIONS.*'max_wrkers'.*'max_workers'"):
        MAS(bad)
    bad = Flask("bad-url")
    bad.config["MAS_REDIS_URL"] = "http://bad"
    with pytest.raises(ValueError, match="MAS_REDIS_URL") as refused:
        MAS(bad)
    assert ", ".join(REDIS_URL_SCHEMES) in str(refused.value)
    mas = MAS()
    with pytest.raises(ValueError, match=r"agent 'echo'.*'max_wrkers'"):
        mas.agent("echo", Echo, max_wrkers=2)
    assert "mas" not in bad.extensions

    # An option that Agent takes but a declared class does not: refused by
    # init_app(), as the README says (every request used to fail with a 500).
    class Strict(Agent):
        def __init__(self, agent_id: str, capabilities: Any = None, redis_url: str = "") -> None:
            super().__init__(agent_id, capabilities, redis_url)

    declared = MAS()
    declared.agent("strict", Strict)
    narrow = Flask("narrow")
    narrow.config["MAS_AGENT_OPTIONS"] = {"heartbeat_interval": 5}
    with pytest.raises(ValueError, match=r"agent 'strict'.*'heartbeat_interval'"):
        declared.init_app(narrow)
    assert "mas" not in narrow.extensions
