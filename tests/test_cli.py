"""The command-line tool: ``mas_sync COMMAND`` and ``python -m mas_sync COMMAND``.

Most commands run in-process through ``main([...])`` (their output read with
capsys); ``watch``, ``service`` and the console script run as subprocesses.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import redis

from mas_sync import Agent, AgentMessage, AgentRegistry
from mas_sync.__main__ import build_parser, main
from mas_sync.testing import LocalCluster, wait_until

from .conftest import FAST, read_message

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELIABLE = dict(delivery="reliable", visibility_timeout=2.0, retry_delay=0.05)
UNREACHABLE = "redis://127.0.0.1:1"


class Echo(Agent):
    """Replies with what it got; fails when asked to (``{"fail": true}``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.got: "queue.Queue[AgentMessage]" = queue.Queue()
        self.failing = True

    def on_message(self, message: AgentMessage) -> Any:
        self.got.put(message)
        if message.payload.get("fail") and self.failing:
            raise RuntimeError("asked to fail")
        return {"echo": message.payload}


def cli(capsys: pytest.CaptureFixture, url: str, *argv: str) -> "Result":
    """Run ``mas_sync --redis-url URL ARGV...`` in-process."""
    code = main(["--redis-url", url, *argv])
    out, err = capsys.readouterr()
    return Result(code, out, err)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)

    def one_error_line(self) -> str:
        """The one line of stderr, checked to be ``error: ...`` with no traceback."""
        assert self.out == ""
        assert self.err.count("\n") == 1 and self.err.startswith("error: "), self.err
        assert "Traceback" not in self.err
        return self.err


def ghost(r: redis.Redis, agent_id: str, registered_at: Optional[float] = None) -> None:
    """A registration whose heartbeat key is gone (its agent died)."""
    AgentRegistry(r).register(agent_id, ["ghostly"])  # no heartbeat_ttl: no heartbeat key
    if registered_at is not None:
        r.hset(f"agent:{agent_id}", "registered_at", str(registered_at))


# -- the parser: --help everywhere, --redis-url before or after ---------------------


def _commands() -> List[List[str]]:
    found: List[List[str]] = [[]]
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            found.append([name])
            if sub._subparsers is not None:
                for inner in sub._subparsers._group_actions:
                    found += [[name, n] for n in inner.choices]
    return found


def test_every_command_is_listed() -> None:
    assert [c for c in _commands() if len(c) == 1] == [[c] for c in (
        "agents", "inspect", "state", "send", "request", "watch", "prune", "dlq", "acl",
        "service", "demo", "bench", "dashboard")]
    assert ["dlq", "purge"] in _commands()


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "mas_sync")
def test_help_of_every_command_exits_0(command: List[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    if command and command[0] not in ("demo", "bench"):
        assert "--redis-url URL" in out
    if command == ["bench"]:
        assert "--quick" in out  # the benchmark's own help


def test_the_redis_url_comes_before_or_after_the_command_or_from_the_environment(
    make_agent: Callable[..., Any], redis_url: str, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_agent("here")
    assert main(["--redis-url", redis_url, "agents", "--json"]) == 0
    assert main(["agents", "--json", "--redis-url", redis_url]) == 0
    assert main(["--redis-url", UNREACHABLE, "agents", "--redis-url", redis_url, "--json"]) == 0
    monkeypatch.setenv("MAS_REDIS_URL", redis_url)
    assert main(["agents", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all([a["id"] for a in json.loads(line)] == ["here"] for line in out)
    # acl, which needs no Redis, takes it too (it was a usage error after its name).
    assert main(["acl", "here", "--nopass", "--redis-url", redis_url]) == 0
    assert "ACL SETUSER here" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    for argv in ([], ["nope"], ["agents", "--nope"], ["request", "x", "{}", "--timeout", "0"],
                 ["dlq"], ["dlq", "list"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "error" in capsys.readouterr().err


# -- agents -------------------------------------------------------------------------------


def test_agents_lists_status_heartbeat_instances_rates_and_capabilities(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    make_agent("echo", Echo, capabilities=["math", "text"])
    make_agent("worker", Echo, capabilities=["jobs"], instance="w1", **RELIABLE)
    make_agent("worker", Echo, capabilities=["jobs"], instance="w2", **RELIABLE)
    ghost(r, "stale")
    AgentRegistry(r).register("retired", ["math"], heartbeat_ttl=30)
    r.hset("agent:retired", "status", "INACTIVE")
    wait_until(lambda: r.exists("agent:echo:stats"), 5)
    result = cli(capsys, redis_url, "agents")
    assert result.code == 0 and result.err == ""
    header, *rows = result.out.splitlines()
    assert header.split() == ["ID", "STATUS", "DELIVERY", "INSTANCES", "HEARTBEAT", "RECV/S",
                              "DONE/S", "CAPABILITIES"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert sorted(cells) == ["echo", "stale", "worker"]  # INACTIVE only with --all
    assert cells["echo"][1:4] == ["ACTIVE", "pubsub", "1"]
    assert cells["echo"][4].endswith("s") and cells["echo"][5] == "ago"
    assert cells["echo"][6:] == ["0.0", "0.0", "math,text"]
    assert cells["worker"][1:4] == ["ACTIVE", "reliable", "2"]
    assert cells["stale"][1:] == ["STALE", "pubsub", "1", "gone", "-", "-", "ghostly"]
    # The columns line up: each cell starts where its header does.
    for name in ("DELIVERY", "HEARTBEAT", "CAPABILITIES"):
        assert {row[header.index(name) - 1] for row in rows} == {" "}
        assert {row[header.index(name)] for row in rows} != {" "}

    result = cli(capsys, redis_url, "agents", "--all", "--capability", "math", "--json")
    views = result.json()
    assert [v["id"] for v in views] == ["echo", "retired"]
    assert views[1]["status"] == "INACTIVE"
    assert views[0]["stats"]["counters"]["received"] == 0 and views[0]["heartbeat_age"] >= 0
    assert cli(capsys, redis_url, "agents", "--capability", "none").out == (
        "no agents with capability 'none'\n")


def test_tables_are_coloured_only_on_a_terminal(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_agent("echo")
    ghost(r, "stale")
    r.set("agent:stale:heartbeat", "not a time")  # beating, its time unreadable
    plain = cli(capsys, redis_url, "agents").out
    assert "\033[" not in plain
    assert plain.splitlines()[2].split()[1:5] == ["ACTIVE", "pubsub", "1", "?"]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    coloured = cli(capsys, redis_url, "agents").out
    assert "\033[32mACTIVE\033[0m" in coloured
    ages = re.compile(r"[0-9.]+s ago")  # they change from one call to the next
    assert ages.sub("1.0s ago", re.sub("\033\\[[0-9]+m", "", coloured)) == ages.sub(
        "1.0s ago", plain)  # the same columns
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033[" not in cli(capsys, redis_url, "agents").out


# -- inspect and state --------------------------------------------------------------------


def test_inspect_shows_a_reliable_agent_with_its_stream_consumers_and_dead_letters(
    make_agent: Callable[..., Any], redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    worker = make_agent("worker", Echo, capabilities=["jobs"], instance="w1", max_attempts=1,
                        **RELIABLE)
    worker.update_state({"done": 3, "last": "a b"})
    sender = make_agent("sender")
    sender.send("worker", {"n": 1})
    sender.send("worker", {"fail": True})
    wait_until(lambda: worker.stats.dead_lettered == 1 and worker.stats.handled >= 1, 5)
    wait_until(lambda: (stats := cli(capsys, redis_url, "inspect", "worker", "--json").json()
                        ["agent"]["stats"]) and stats["counters"].get("dead_lettered") == 1, 5)
    data = cli(capsys, redis_url, "inspect", "worker", "--json").json()
    assert data["registered"] and data["agent"]["delivery"] == "reliable"
    assert data["agent"]["instances"] == 1 and data["agent"]["capabilities"] == ["jobs"]
    assert data["state"] == {"done": "3", "last": "a b"}
    stream = data["stream"]
    assert stream["length"] == 2 and stream["dead_letters"] == 1
    assert stream["pending"] == 0 and stream["lag"] in (0, None)
    assert [c["name"] for c in stream["consumers"]] == ["worker-w1"]
    assert stream["consumers"][0]["pending"] == 0 and stream["consumers"][0]["idle"] >= 0

    result = cli(capsys, redis_url, "inspect", "worker")
    assert result.code == 0
    text = result.out
    for expected in ("id            worker", "status        ACTIVE",
                     "delivery      reliable (1 live instance)", "capabilities  jobs",
                     "\nstate\n  done  3\n  last  a b\n",
                     "stream  agent.stream:worker", "  length        2",
                     "  dead letters  1", "  NAME       PENDING  IDLE", "  worker-w1  0"):
        assert expected in text, (expected, text)
    assert re.search(r"\n  dead_lettered +1\n", text) and re.search(r"\n  received +2\n", text)


def test_inspect_shows_a_stopped_reliable_agent_and_refuses_an_unknown_one(
    make_agent: Callable[..., Any], redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    worker = make_agent("worker", Echo, **RELIABLE)
    make_agent("sender").send("worker", {"n": 1})
    wait_until(lambda: worker.stats.handled == 1, 5)
    worker.stop()
    data = cli(capsys, redis_url, "inspect", "worker", "--json").json()
    assert not data["registered"] and data["agent"] is None
    assert data["stream"]["length"] == 1
    assert "id      worker\nstatus  NOT REGISTERED\n" in cli(capsys, redis_url, "inspect",
                                                          "worker").out
    for argv in (["inspect", "nobody"], ["inspect", "nobody", "--json"], ["state", "nobody"]):
        result = cli(capsys, redis_url, *argv)
        assert result.code == 1
        assert result.one_error_line() == "error: no agent 'nobody' is registered\n"
    result = cli(capsys, redis_url, "inspect", "a:b")
    assert result.code == 2 and "contains ':'" in result.one_error_line()


def test_state_prints_what_the_state_manager_stores(
    make_agent: Callable[..., Any], redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    agent = make_agent("keeper")
    assert cli(capsys, redis_url, "state", "keeper").out == "agent 'keeper' has no state\n"
    assert cli(capsys, redis_url, "state", "keeper", "--json").json() == {}
    agent.update_state({"count": 42, "tags": ["a", "b"], "name": "é"})
    assert cli(capsys, redis_url, "state", "keeper", "--json").json() == dict(agent.state)
    assert dict(agent.state) == {"count": "42", "tags": '["a", "b"]', "name": "é"}
    assert cli(capsys, redis_url, "state", "keeper").out == (
        'count  42\nname   é\ntags   ["a", "b"]\n')
    agent.stop()  # the state outlives the registration
    assert cli(capsys, redis_url, "state", "keeper", "--json").json()["count"] == "42"


# -- send and request ---------------------------------------------------------------------


def test_send_delivers_what_an_agent_would_send(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    echo = make_agent("echo", Echo)
    result = cli(capsys, redis_url, "send", "echo", '{"n": 1, "text": "é"}', "--as", "ops")
    assert result.code == 0 and result.err == ""
    message = echo.got.get(timeout=5)
    assert message.message_id == result.out.strip()
    assert message.sender_id == "ops" and message.payload == {"n": 1, "text": "é"}
    assert not r.exists("agent:ops")  # the sender deregistered
    # A reliable target that is stopped gets it in its stream, waiting.
    worker = make_agent("worker", Echo, **RELIABLE)
    worker.stop()
    assert not r.exists("agent:worker")
    sent = cli(capsys, redis_url, "send", "worker", '{"job": 7}', "--json").json()
    [(_, fields)] = r.xrange("agent.stream:worker")
    envelope = json.loads(fields["envelope"])
    assert envelope["message_id"] == sent["message_id"] and envelope["payload"] == {"job": 7}
    assert envelope["sender_id"].startswith("mas-cli-")


def test_request_prints_the_reply_and_exits_1_without_one(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    make_agent("echo", Echo)
    result = cli(capsys, redis_url, "request", "echo", '{"n": [1, 2]}', "--timeout", "5")
    assert result.code == 0 and result.err == ""
    assert result.json() == {"echo": {"n": [1, 2]}}
    result = cli(capsys, redis_url, "request", "echo", '{"fail": true}')
    assert result.code == 1
    assert "handler_error" in result.one_error_line() and "asked to fail" in result.err
    AgentRegistry(r).register("mute", [], heartbeat_ttl=30)  # registered, never answers
    started = time.monotonic()
    result = cli(capsys, redis_url, "request", "mute", "{}", "--timeout", "0.3")
    assert time.monotonic() - started < 3
    assert result.code == 1
    assert result.one_error_line() == "error: no reply from 'mute' within 0.3 s\n"
    assert not [k for k in r.keys("agent:mas-cli-*")]  # every sender deregistered


@pytest.mark.parametrize("payload, reason", [
    ("{bad", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"x": NaN}', "JSON"),
    ('{"_expects_reply": true}', "reserved"),
])
def test_a_bad_json_argument_exits_2_in_one_line(
    payload: str, reason: str, make_agent: Callable[..., Any], redis_url: str,
    capsys: pytest.CaptureFixture,
) -> None:
    echo = make_agent("echo", Echo)
    for command in ("send", "request"):
        result = cli(capsys, redis_url, command, "echo", payload)
        assert result.code == 2, result.err
        assert reason in result.one_error_line()
    assert echo.got.empty()


def test_send_and_request_refuse_an_unknown_agent(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture,
) -> None:
    for command in ("send", "request"):
        result = cli(capsys, redis_url, command, "nobody", "{}")
        assert result.code == 1
        assert result.one_error_line() == "error: no agent 'nobody' is registered\n"
    assert r.keys("agent:*") == []  # no sender was started


# -- errors: Redis unreachable, a bad URL ---------------------------------------------------


UNREACHABLE_COMMANDS = [
    ["agents"], ["inspect", "x"], ["state", "x"], ["send", "x", "{}"], ["request", "x", "{}"],
    ["prune"], ["dlq", "list", "x"], ["dlq", "requeue", "x"], ["dlq", "purge", "x", "--yes"],
    ["watch"], ["dashboard"],
]


@pytest.mark.parametrize("argv", UNREACHABLE_COMMANDS, ids=" ".join)
def test_an_unreachable_redis_is_one_line_and_exit_1(
    argv: List[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if argv == ["dashboard"]:
        pytest.importorskip("mas_sync._dashboard", reason="the dashboard is not on this branch")
    result = cli(capsys, UNREACHABLE, *argv)
    assert result.code == 1
    assert result.one_error_line().startswith("error: cannot reach Redis at redis://127.0.0.1:1")


@pytest.mark.parametrize("url, reason", [
    ("http://localhost:6379", "must start with one of"),
    ("redis://:secret@localhost:6379:x", "invalid Redis URL"),
    ("rediss://localhost:6379?ssl_ca_certs=/no/such/file", "/no/such/file"),
])
def test_a_bad_url_is_one_line(url: str, reason: str, capsys: pytest.CaptureFixture) -> None:
    for argv in (["agents"], ["inspect", "x"], ["send", "x", "{}"], ["service"], ["prune"]):
        result = cli(capsys, url, *argv)
        assert result.code == 2, (argv, result.err)
        line = result.one_error_line()
        assert reason in line and "secret" not in line


# -- prune ---------------------------------------------------------------------------------


def test_prune_removes_registrations_whose_heartbeat_is_gone(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    make_agent("alive")
    ghost(r, "dead", registered_at=time.time() - 600)
    ghost(r, "recent")
    r.hset("agent.state:dead", "kept", "1")
    r.hset("agent:dead:stats", "run", "{}")
    assert cli(capsys, redis_url, "prune", "--dry-run").out == (
        "would remove dead\nwould remove recent\n")
    assert r.exists("agent:dead")
    pubsub = r.pubsub()
    pubsub.subscribe("mas.system")
    pubsub.get_message(timeout=1)
    result = cli(capsys, redis_url, "prune", "--older-than", "60", "--json")
    assert result.code == 0 and result.json() == ["dead"]
    assert json.loads(read_message(pubsub)["data"]) == {"type": "DEREGISTER", "agent_id": "dead"}
    pubsub.close()
    assert not r.exists("agent:dead") and not r.exists("agent:dead:stats")
    assert r.hget("agent.state:dead", "kept") == "1"
    assert cli(capsys, redis_url, "prune").out == "removed recent\n"
    assert cli(capsys, redis_url, "prune").out == "no registration to remove\n"
    assert r.exists("agent:alive")


# -- dead letters ----------------------------------------------------------------------------


def test_dlq_lists_requeues_and_purges(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture,
) -> None:
    worker = make_agent("worker", Echo, max_attempts=1, **RELIABLE)
    sender = make_agent("sender")
    for n in range(3):
        sender.send("worker", {"fail": True, "n": n})
    wait_until(lambda: r.xlen("agent.dlq:worker") == 3, 5)
    letters = cli(capsys, redis_url, "dlq", "list", "worker", "--json").json()
    assert [json.loads(x["envelope"])["payload"]["n"] for x in letters] == [0, 1, 2]
    assert letters[0]["message"]["sender_id"] == "sender"
    assert "asked to fail" in letters[0]["error"] and letters[0]["attempts"] == 1
    text = cli(capsys, redis_url, "dlq", "list", "worker", "--count", "2").out.splitlines()
    assert text[0].split() == ["ID", "FAILED", "ATTEMPTS", "SENDER", "ERROR", "PAYLOAD"]
    assert len(text) == 3 and text[1].startswith(letters[0]["id"]) and "sender" in text[1]

    worker.failing = False
    result = cli(capsys, redis_url, "dlq", "requeue", "worker", letters[0]["id"])
    assert result.out == "requeued 1 dead letter of worker\n"
    wait_until(lambda: worker.stats.handled == 1, 5, message="the requeued letter handled")
    result = cli(capsys, redis_url, "dlq", "purge", "worker")
    assert result.code == 2 and "--yes" in result.one_error_line()
    assert cli(capsys, redis_url, "dlq", "purge", "worker", letters[1]["id"]).out == (
        "purged 1 dead letter of worker\n")
    assert cli(capsys, redis_url, "dlq", "purge", "worker", "--yes").out == (
        "purged 1 dead letter of worker\n")
    assert cli(capsys, redis_url, "dlq", "list", "worker").out == (
        "agent 'worker' has no dead letters\n")
    result = cli(capsys, redis_url, "dlq", "requeue", "worker", "not-an-id")
    assert result.code == 2 and "not a dead-letter id" in result.one_error_line()
    result = cli(capsys, redis_url, "dlq", "list", "nobody")
    assert result.code == 1 and "no agent 'nobody'" in result.one_error_line()


# -- dashboard, bench ------------------------------------------------------------------------


def test_dashboard_without_its_module_is_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, redis_url: str,
) -> None:
    monkeypatch.setitem(sys.modules, "mas_sync._dashboard", None)  # as if not installed
    result = cli(capsys, redis_url, "dashboard", "--port", "0")
    assert result.code == 1
    assert result.one_error_line().startswith("error: the dashboard cannot be loaded")


def test_bench_passes_its_arguments_on(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--only", "nothing"])
    assert exited.value.code == 2
    assert "python -m mas_sync.bench" in capsys.readouterr().err


def test_demo_and_bench_refuse_a_bad_redis_url_in_one_line(capsys: pytest.CaptureFixture) -> None:
    # They used to print a ValueError's traceback, and bench named a Redis it never used.
    result = cli(capsys, "http://x", "demo")
    assert result.code == 2 and "invalid Redis URL 'http://x'" in result.one_error_line()
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--redis-url", "http://x"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "invalid Redis URL 'http://x'" in err
    assert "Traceback" not in err
    code = main(["bench", "--redis-url", "redis://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot reach Redis at redis://127.0.0.1:1"), err
    assert "Traceback" not in err and "6379" not in err


# -- subprocesses: watch, service, the console script --------------------------------------


class Process:
    """A command run in a subprocess, its stdout read line by line with deadlines."""

    def __init__(self, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="test-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout: float) -> Optional[str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def interrupt(self, timeout: float = 5.0) -> "Result":
        """SIGINT, then the exit status and what is left of the output."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.proc.kill()
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return Result(code, "".join(rest), self.proc.stderr.read())


@pytest.fixture
def processes() -> Iterator[List[Process]]:
    started: List[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(5)


def watch_events(
    processes: List[Process], url: str, sender: Agent, ids: List[str], wanted: int,
) -> List[Dict[str, Any]]:
    """Start ``watch --json IDS`` and send until it has printed ``wanted`` messages."""
    process = Process([sys.executable, "-u", "-m", "mas_sync", "--redis-url", url, "watch",
                       "--json", *ids])
    processes.append(process)
    seen: List[Dict[str, Any]] = []
    deadline = time.monotonic() + 4
    n = 0
    # The tail subscribes in its own thread: send until what it prints comes.
    while sum(e["kind"] != "system" for e in seen) < wanted and time.monotonic() < deadline:
        sender.send("echo", {"n": n})
        n += 1
        line = process.line(0.2)
        while line is not None:
            seen.append(json.loads(line))
            line = process.line(0.05)
    result = process.interrupt()
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    seen += [json.loads(line) for line in result.out.splitlines()]
    return seen


@pytest.mark.slow
def test_watch_prints_each_message_until_ctrl_c(
    make_agent: Callable[..., Any], redis_url: str, processes: List[Process],
) -> None:
    make_agent("echo", Echo)
    sender = make_agent("sender")
    events = watch_events(processes, redis_url, sender, [], 2)
    messages = [e for e in events if e["kind"] == "message"]
    assert len(messages) >= 2
    first = messages[0]
    assert first["sender"] == "sender" and first["target"] == "echo"
    assert first["channel"] == "agent.echo" and first["size"] > 0
    assert first["payload"] == {"n": first["payload"]["n"]}
    numbers = [e["number"] for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


@pytest.mark.slow
def test_watch_prints_lines_with_sender_target_size_and_request_marks(
    make_agent: Callable[..., Any], redis_url: str, processes: List[Process],
) -> None:
    make_agent("echo", Echo)
    asker = make_agent("asker")
    process = Process([sys.executable, "-u", "-m", "mas_sync", "--redis-url", redis_url,
                       "watch", "echo", "asker"])
    processes.append(process)
    lines: List[str] = []

    def saw_reply() -> bool:
        asker.request("echo", {"q": 1}, timeout=5)
        line = process.line(0.2)
        while line is not None:
            lines.append(line)
            line = process.line(0.05)
        return any("  reply  " in line for line in lines)

    wait_until(saw_reply, 4, interval=0, message="watch prints a request and its reply")
    result = process.interrupt()
    assert result.code == 0 and "Traceback" not in result.err
    request = next(line for line in lines if "  request  " in line)
    reply = next(line for line in lines if "  reply    " in line)
    assert "asker \u2192 echo" in request and ' B  [' in request and '{"q": 1}' in request
    assert "echo \u2192 asker" in reply and '{"echo": {"q": 1}}' in reply
    mark = request.split("[", 1)[1].split("]", 1)[0]
    assert len(mark) == 8 and f"[{mark}]" in reply


def test_service_runs_until_ctrl_c(
    r: redis.Redis, redis_url: str, processes: List[Process],
) -> None:
    ghost(r, "silent")
    process = Process([sys.executable, "-m", "mas_sync", "--redis-url", redis_url, "service",
                       "--health-interval", "0.1", "--heartbeat-timeout", "0.1"])
    processes.append(process)
    wait_until(lambda: r.hget("agent:silent", "status") == "INACTIVE", 4,
               message="the service marks the silent agent INACTIVE")
    result = process.interrupt()
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "MASService: started" in result.err


@pytest.mark.slow
def test_the_console_script_runs(redis_url: str, make_agent: Callable[..., Any]) -> None:
    script = shutil.which("mas_sync", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the console script is not installed (pip install -e .)")
    make_agent("echo", Echo, capabilities=["c"])
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("usage: mas_sync ")
    result = subprocess.run([script, "agents", "--json"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "MAS_REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr
    assert [a["id"] for a in json.loads(result.stdout)] == ["echo"]
    result = subprocess.run([script, "--redis-url", UNREACHABLE, "state", "x"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: cannot reach Redis") and result.stderr.count("\n") == 1


# -- a cluster -------------------------------------------------------------------------------


def test_agents_watch_and_prune_on_a_cluster(
    cluster: LocalCluster, capsys: pytest.CaptureFixture, processes: List[Process],
) -> None:
    started: List[Agent] = []
    try:
        for agent in (Echo("echo", ["c"], cluster.url, **FAST),
                      Echo("worker", ["jobs"], cluster.url, instance="w1", **FAST, **RELIABLE),
                      Agent("sender", [], cluster.url, **FAST)):
            agent.start()
            started.append(agent)
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port,
                                    decode_responses=True)
        AgentRegistry(client).register("ghost", ["c"])
        views = cli(capsys, cluster.url, "agents", "--json").json()
        assert [(v["id"], v["delivery"], v["stale"]) for v in views] == [
            ("echo", "pubsub", False), ("ghost", "pubsub", True), ("sender", "pubsub", False),
            ("worker", "reliable", False)]
        table = cli(capsys, cluster.url, "agents").out
        assert "ghost   STALE" in table
        assert cli(capsys, cluster.url, "prune", "--json").json() == ["ghost"]
        assert not client.exists("agent:ghost")
        client.close()
        events = watch_events(processes, cluster.url, started[2], [], 2)
        assert len([e for e in events if e["kind"] == "message" and e["target"] == "echo"]) >= 2
    finally:
        for agent in started:
            agent.stop()
