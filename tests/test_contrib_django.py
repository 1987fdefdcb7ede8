"""The Django app and its example project: test client, runagents, runserver's autoreloader."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Iterator

import pytest

from mas_sync import Agent, AgentMessage
from mas_sync.contrib._names import host_name
from mas_sync.testing import free_port, wait_until

from ._processes import ROOT, http_get, run_server
from .conftest import FAST

PROJECT = os.path.join(ROOT, "examples", "django_project")


@pytest.fixture(scope="module")
def django_project() -> Iterator[Any]:
    """Django set up in this process with the example project's settings."""
    import django
    from django.conf import settings

    sys.path.insert(0, PROJECT)
    try:
        if not settings.configured:
            os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
            try:
                django.setup()
            finally:
                del os.environ["DJANGO_SETTINGS_MODULE"]
        assert settings.ROOT_URLCONF == "project.urls"
        from mas_sync.contrib.django import mas

        yield mas
    finally:
        sys.path.remove(PROJECT)


@pytest.fixture
def in_process(django_project, redis_url) -> Iterator[Any]:
    """The example's settings, on the test Redis, with agents in this process."""
    from django.test import override_settings

    with override_settings(
        MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST, MAS_START_IN_PROCESS=True
    ):
        try:
            yield django_project
        finally:
            django_project.stop()


class OutsideSummarizer(Agent):
    """A summarizer run outside the project, published under the declared name."""

    def get_metadata(self) -> dict:
        from mas_sync.contrib import NAME_KEY

        return {NAME_KEY: "summarizer"}

    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"summary": "from outside", "pid": 0})


# -- in process, through Django's test client -------------------------------------


def test_a_view_asks_an_agent_started_in_the_web_process(in_process, r) -> None:
    from django.test import Client

    assert in_process.agents.running == {}  # nothing at import or setup
    response = Client().get("/summarize", {"text": "agents in a django project"})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "summary": "agents in a",
        "words": 5,
        "pid": os.getpid(),
        "answered_by": f"summarizer-{host_name()}-{os.getpid()}",
    }
    running = in_process.agents.running
    assert sorted(running) == ["echo", "summarizer"]  # from settings and from code
    assert running["echo"].capabilities == ["echo"]
    Client().get("/agents")
    assert in_process.agents.running == running  # started once
    in_process.stop()
    assert r.keys("agent:*") == []


def test_without_in_process_start_views_ask_agents_that_run_elsewhere(
    django_project, make_agent, redis_url
) -> None:
    from django.test import Client, override_settings

    make_agent("outside", OutsideSummarizer, capabilities=["nlp"])
    with override_settings(MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST):
        try:
            response = Client().get("/summarize", {"text": "x"})
            assert response.json() == {
                "summary": "from outside", "pid": 0, "answered_by": "outside"
            }
            assert django_project.agents.running == {}  # only the client runs here
        finally:
            django_project.stop()


def test_ready_is_idempotent_and_starts_only_in_the_serving_process(
    in_process, monkeypatch
) -> None:
    from django.apps import apps

    config = apps.get_app_config("mas_sync")
    config.ready()  # an ordinary process (a management command, a watcher)
    assert in_process.agents.running == {}
    monkeypatch.setenv("RUN_MAIN", "true")  # runserver's serving process
    config.ready()
    first = in_process.agents.running
    assert sorted(first) == ["echo", "summarizer"]
    config.ready()  # Django may run ready() again: nothing new starts
    assert in_process.agents.running == first


def test_bad_settings_are_reported_by_the_system_check(django_project) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from mas_sync.contrib.django._checks import check_settings

    assert check_settings() == []
    with override_settings(MAS_AGENTS={"x": {"CLASS": "no.such.Agent"}}):
        [error] = check_settings()
        assert error.id == "mas_sync.E001" and "MAS_AGENTS['x']" in error.msg
        with pytest.raises(ImproperlyConfigured, match="MAS_AGENTS"):
            django_project.start()
    with override_settings(MAS_AGENTS={"echo": "summaries.agents.Echo"}):
        assert "declared both in MAS_AGENTS and in code" in check_settings()[0].msg
    with override_settings(MAS_AGENT_ID_FORMAT="{name}:{pid}"):
        assert "contains ':'" in check_settings()[0].msg
    with override_settings(MAS_AGENTS={"x": {"CLASS": "mas_sync.Agent", "CAPABILITIES": "nlp"}}):
        assert "capabilities must be a list" in check_settings()[0].msg
    # The class itself, not its path: it used to be an AttributeError out of the check.
    with override_settings(MAS_AGENTS={"x": {"CLASS": Agent}}):
        assert "['CLASS'] must be a dotted class path (a string)" in check_settings()[0].msg
    with pytest.raises(TypeError, match="capabilities must be a list"):
        django_project.agent("bare", Agent, capabilities="nlp")


def e001(**overrides: Any) -> str:
    """The message of the mas_sync.E001 error that ``run_checks()`` gives with ``overrides``."""
    from django.core.checks import run_checks
    from django.test import override_settings

    with override_settings(**overrides):
        [error] = [m for m in run_checks() if m.id == "mas_sync.E001"]
    return error.msg


def test_the_system_check_reports_unknown_agent_options(django_project) -> None:
    from django.core.checks import run_checks

    assert [m for m in run_checks() if m.id.startswith("mas_sync")] == []
    msg = e001(MAS_AGENT_OPTIONS={"max_wrkers": 2})
    assert "MAS_AGENT_OPTIONS" in msg and "'max_wrkers'" in msg and "'max_workers'" in msg
    msg = e001(MAS_AGENTS={
        "x": {"CLASS": "summaries.agents.Summarizer", "OPTIONS": {"heartbeat_intervall": 1}},
    })
    assert "MAS_AGENTS['x']" in msg and "'heartbeat_intervall'" in msg
    assert "'agent_id'" in e001(MAS_AGENTS={"x": {"CLASS": "mas_sync.Agent",
                                                   "OPTIONS": {"agent_id": "fixed"}}})


def test_runagents_refuses_unknown_agent_options_with_a_clear_error(django_project) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    with override_settings(MAS_AGENT_OPTIONS={"max_wrkers": 2}):
        with pytest.raises(CommandError, match=r"MAS_AGENT_OPTIONS.*'max_wrkers'"):
            call_command("runagents")


def test_the_system_check_reports_a_redis_url_mas_sync_cannot_use(django_project) -> None:
    from mas_sync._redis import REDIS_URL_SCHEMES

    msg = e001(MAS_REDIS_URL="http://bad")
    assert "MAS_REDIS_URL" in msg and "'http://bad'" in msg
    assert ", ".join(REDIS_URL_SCHEMES) in msg
    assert "redis+sentinel://" in msg and "redis+cluster://" in msg


# -- real processes ---------------------------------------------------------------


def manage(*args: str) -> list:
    return [os.path.join(PROJECT, "manage.py"), *args]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_runagents_runs_the_agents_until_a_signal_stops_them(
    make_agent, redis_url, r, signum
) -> None:
    probe = make_agent("probe")
    with run_server(manage("runagents"), cwd=PROJECT, env_extra={"MAS_REDIS_URL": redis_url}) as server:
        found = wait_until(
            lambda: len(probe.discover(["nlp", "echo"])) == 2 and probe.discover(["nlp", "echo"]),
            timeout=30, interval=0.05, message="runagents registers its two agents",
        )
        ids = sorted(agent["id"] for agent in found)
        suffix = f"-{host_name()}-{server.pid}"
        assert ids == [f"echo{suffix}", f"summarizer{suffix}"]
        for agent_id in ids:
            reply = probe.request(agent_id, {"text": "one two"}, timeout=5)
            assert reply.payload["pid"] == server.pid
        server.process.send_signal(signum)
        assert server.wait(15) == 0, server.output()
    output = server.output()
    assert f"Running 2 agent(s) on {redis_url}: summarizer{suffix}, echo{suffix}." in output
    assert output.rstrip().endswith("Stopped.")
    assert [k for k in r.keys("agent:*") if "probe" not in k] == []  # deregistered


def test_runagents_refuses_an_unknown_agent(redis_url) -> None:
    with run_server(
        manage("runagents", "--agent", "nope"), cwd=PROJECT, env_extra={"MAS_REDIS_URL": redis_url}
    ) as server:
        assert server.wait(30) == 1
    assert "no agent named 'nope' is declared (declared: echo, summarizer)" in server.output()


def test_other_commands_start_no_agent_even_with_in_process_start(redis_url, r) -> None:
    env = {"MAS_REDIS_URL": redis_url, "MAS_START_IN_PROCESS": "1"}
    with run_server(manage("check"), cwd=PROJECT, env_extra=env) as server:
        assert server.wait(30) == 0, server.output()
    assert "no issues" in server.output()
    assert r.keys("agent:*") == []


def test_views_reach_the_agents_of_runagents_by_name_and_get_starts_none(
    django_project, redis_url, r
) -> None:
    from django.test import Client, override_settings

    from mas_sync import AgentNotRunningError

    with run_server(manage("runagents"), cwd=PROJECT, env_extra={"MAS_REDIS_URL": redis_url}) as server:
        summarizer = f"summarizer-{host_name()}-{server.pid}"
        with override_settings(MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST):
            try:
                mas = django_project
                wait_until(lambda: mas.find("summarizer") == [summarizer], timeout=30,
                           interval=0.05, message="runagents registers its summarizer")
                response = Client().get("/summarize", {"text": "reached by name"})
                assert response.status_code == 200, response.content
                assert response.json()["answered_by"] == summarizer
                assert response.json()["pid"] == server.pid
                # The default mode: the web process never runs a declared agent.
                with pytest.raises(AgentNotRunningError, match="runagents") as refused:
                    mas.get("summarizer")
                assert "mas.find('summarizer')" in str(refused.value)
                with pytest.raises(KeyError, match="declared: echo, summarizer"):
                    mas.get("nope")
                assert mas.agents.running == {}
                assert mas.find("summarizer") == [summarizer]  # no second copy
                assert [a["id"] for a in mas.discover(["nlp"])] == [summarizer]
                # Several at once, from a view: a future, and scatter-gather by capability.
                future = mas.request_future(summarizer, {"text": "a future"})
                gathered = mas.request_many("nlp", {"text": "one for all"}, timeout=5)
                assert future.result(timeout=5).payload["pid"] == server.pid
                assert list(gathered.replies) == [summarizer] and not gathered.errors
                expected = {
                    f"agent:{summarizer}", f"agent:echo-{host_name()}-{server.pid}",
                    f"agent:{mas.client.id}",
                }
                # runagents starts its agents one after the other: the echo
                # agent may register a moment after the summarizer.
                wait_until(lambda: {k for k in r.keys("agent:*") if k.count(":") == 1}
                           == expected, timeout=10, message="runagents' agents registered")
            finally:
                django_project.stop()
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0, server.output()


def test_in_the_default_mode_get_returns_only_agents_that_run_here(
    django_project, redis_url
) -> None:
    from django.test import override_settings

    from mas_sync import AgentNotRunningError
    from mas_sync.contrib.django import _settings

    with override_settings(MAS_REDIS_URL=redis_url, MAS_AGENT_OPTIONS=FAST):
        try:
            with pytest.raises(AgentNotRunningError, match="runagents"):
                django_project.get("echo")
            assert django_project.agents.running == {}
            echo = django_project.start(["echo"])["echo"]  # a process of one's own
            assert django_project.get("echo") is echo
            with pytest.raises(AgentNotRunningError):
                django_project.get("summarizer")
            django_project.stop()
            # What runagents does: the agents it builds are the process's.
            agents = _settings.build_process_agents(django_project.declared())
            django_project._run_here(agents)
            assert django_project.agents is agents
            running = agents.start()
            assert django_project.get("summarizer") is running["summarizer"]
            assert django_project.find("summarizer") == [running["summarizer"].id]
        finally:
            django_project.stop()


SHELL_CODE = """
from mas_sync import AgentNotRunningError
from mas_sync.contrib.django import mas
try:
    mas.get("summarizer")
    print("get: started", mas.agents.running["summarizer"].id)
except AgentNotRunningError as exc:
    print("get: refused")
print("nlp:", " ".join(a["id"] for a in mas.discover(["nlp"])))
ids = mas.find("summarizer")
print("find:", " ".join(ids))
print("reply pid:", mas.request(ids[0], {"text": "from the shell"}, timeout=5).payload["pid"])
"""


@pytest.mark.slow
def test_manage_shell_reaches_the_agents_by_name_and_starts_none(redis_url) -> None:
    env = {"MAS_REDIS_URL": redis_url}
    with run_server(manage("runagents"), cwd=PROJECT, env_extra=env) as agents:
        summarizer = f"summarizer-{host_name()}-{agents.pid}"
        wait_until(lambda: "Running 2 agent(s)" in agents.output(), timeout=30,
                   interval=0.05, message="runagents starts its agents")
        with run_server(manage("shell", "-c", SHELL_CODE), cwd=PROJECT, env_extra=env) as shell:
            assert shell.wait(30) == 0, shell.output()
        lines = shell.output().splitlines()
        assert "get: refused" in lines, shell.output()
        assert f"nlp: {summarizer}" in lines
        assert f"find: {summarizer}" in lines
        assert f"reply pid: {agents.pid}" in lines
        agents.process.send_signal(signal.SIGTERM)
        assert agents.wait(15) == 0, agents.output()


@pytest.mark.slow
def test_runserver_under_the_autoreloader_starts_the_agents_once(make_agent, redis_url) -> None:
    port = free_port()
    probe = make_agent("probe")
    env = {"MAS_REDIS_URL": redis_url, "MAS_START_IN_PROCESS": "1"}
    with run_server(manage("runserver", f"127.0.0.1:{port}"), cwd=PROJECT, env_extra=env) as server:
        # Started by ready() in the serving process, before any request.
        [summarizer] = wait_until(
            lambda: probe.discover(["nlp"]), timeout=30, interval=0.05,
            message="the serving process starts its summarizer",
        )
        serving_pid = int(summarizer["id"].rsplit("-", 1)[1])
        assert serving_pid != server.pid  # not in the autoreloader's watcher
        body = wait_until(
            lambda: http_get(f"http://127.0.0.1:{port}/summarize?text=a+b"),
            timeout=30, interval=0.05, message="runserver answers",
        )
        assert json.loads(body)["answered_by"] == summarizer["id"]
        assert [a["id"] for a in probe.discover(["nlp"])] == [summarizer["id"]]  # still one
        server.signal_group(signal.SIGINT)  # Ctrl-C
        server.wait(15)
