"""The pytest plugin, as a project that installs mas_sync uses it: in a pytest run of its own."""

from __future__ import annotations

import configparser
import os
import pathlib
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points

import pytest
import redis

from mas_sync.testing import RedisServer

SAMPLE = '''
import threading

import pytest
import redis

from mas_sync import Agent


class Echo(Agent):
    def on_message(self, message):
        if message.expects_reply:
            message.reply({"echo": message.payload["text"]})


def test_agents_answer(mas_agents, mas_wait_until):
    mas_agents("echo", Echo, capabilities=["echo"])
    client = mas_agents("client")
    assert client.request("echo", {"text": "hi"}, timeout=5).payload == {"echo": "hi"}
    assert mas_wait_until(lambda: client.discover(["echo"]), timeout=5)


@pytest.mark.xfail(strict=True, reason="fails on purpose: its agent must still be stopped")
def test_that_fails(mas_agents):
    mas_agents("doomed")
    assert False


def test_the_failed_test_left_nothing_running(mas_redis_server):
    client = redis.Redis.from_url(mas_redis_server.url)
    try:
        assert not client.exists("agent:doomed")
    finally:
        client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("mas-agent[doomed]")]


def test_each_test_gets_an_empty_redis(mas_redis_url):
    client = redis.Redis.from_url(mas_redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_that_forgets_to_stop_its_agent(mas_redis_url):
    Agent("forgotten", redis_url=mas_redis_url).start()
'''


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    every = entry_points()
    # Python 3.9's entry_points() takes no arguments and returns a dict.
    group = every.select(group="pytest11") if hasattr(every, "select") else every.get("pytest11", [])
    # Python 3.9 lists a distribution once per place it finds it (the
    # checkout's egg-info too); later versions list it once.
    found = {ep.value for ep in group if ep.name == "mas_sync"}
    assert found == {"mas_sync.testing.pytest_plugin"}


def test_the_old_module_name_gives_the_very_same_module() -> None:
    # In a fresh interpreter, in both orders of import.
    for first, second in [("mas_sync.pytest_plugin", "mas_sync.testing.pytest_plugin"),
                          ("mas_sync.testing.pytest_plugin", "mas_sync.pytest_plugin")]:
        code = (
            f"import importlib, sys; a = importlib.import_module({first!r});"
            f" b = importlib.import_module({second!r});"
            " assert a is b is sys.modules['mas_sync.pytest_plugin']"
            " is sys.modules['mas_sync.testing.pytest_plugin'], (a, b);"
            " print(a.__name__)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "mas_sync.testing.pytest_plugin"


REGISTERED_SAMPLE = '''
def test_registered_once(request, mas_wait_until):
    plugins = [
        (name, plugin.__name__)
        for name, plugin in request.config.pluginmanager.list_name_plugin()
        if getattr(plugin, "__name__", "").startswith("mas_sync")
    ]
    print("MAS PLUGINS", plugins)
    assert len(plugins) == 1
'''


def test_the_plugin_registers_once_by_entry_point_or_by_either_module_name(tmp_path) -> None:
    files = {"test_registered.py": REGISTERED_SAMPLE}
    result = _run_pytest(tmp_path, files, ["-s"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MAS PLUGINS [('mas_sync', 'mas_sync.testing.pytest_plugin')]" in result.stdout
    for name in ("mas_sync", "mas_sync.pytest_plugin", "mas_sync.testing.pytest_plugin"):
        result = _run_pytest(
            tmp_path, files, ["-s", "-p", name], env_extra={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"MAS PLUGINS [({name!r}, 'mas_sync.testing.pytest_plugin')]" in result.stdout


def test_naming_the_installed_plugin_again_registers_it_once(tmp_path) -> None:
    """With the entry point loaded, naming the plugin by its module (``-p``, or
    ``pytest_plugins`` in a conftest, as pytest's docs show) used to stop
    pytest at start: "Plugin already registered under a different name"."""
    files = {"test_registered.py": REGISTERED_SAMPLE}
    for name in ("mas_sync.pytest_plugin", "mas_sync.testing.pytest_plugin"):
        result = _run_pytest(tmp_path, files, ["-s", "-p", name])
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"MAS PLUGINS [({name!r}, 'mas_sync.testing.pytest_plugin')]" in result.stdout
        conftest = {"conftest.py": f"pytest_plugins = [{name!r}]\n", **files}
        result = _run_pytest(tmp_path, conftest, ["-s"])
        (tmp_path / "conftest.py").unlink()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "MAS PLUGINS [('mas_sync', 'mas_sync.testing.pytest_plugin')]" in result.stdout


FORGETFUL_SAMPLE = '''
import atexit
from mas_sync import Agent


def test_that_forgets_to_stop_its_agent(mas_redis_url):
    agent = Agent("forgotten", redis_url=mas_redis_url)
    agent.start()
    # Runs before mas_sync's own exit handler: what the session's end left.
    atexit.register(lambda: print("FORGOTTEN RUNNING", agent.is_running))
'''


def test_leftover_agents_are_stopped_even_when_warnings_are_errors(tmp_path) -> None:
    """The warning that names them came first: under -W error it raised, and
    the agents were left running while the private server was shut down."""
    result = _run_pytest(tmp_path, {"test_forgetful.py": FORGETFUL_SAMPLE},
                         ["-s", "-W", "error::pytest.PytestWarning"])
    output = result.stdout + result.stderr
    assert "agents still running at the end of the session were stopped: forgotten" in output
    assert "FORGOTTEN RUNNING False" in output, output


def test_no_mas_sync_turns_the_plugin_off(tmp_path) -> None:
    result = _run_pytest(tmp_path, {"test_registered.py": REGISTERED_SAMPLE}, ["-p", "no:mas_sync"])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "fixture 'mas_wait_until' not found" in output


@pytest.mark.slow
def test_a_sample_test_file_passes_and_the_session_exits_promptly(tmp_path) -> None:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    started = time.monotonic()
    # subprocess.run kills the run if it outlives its timeout.
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
            "--timeout=30", "--timeout-method=thread", "test_sample.py",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=45,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4 passed, 1 xfailed" in output
    assert "mas_sync-" in output  # loaded through its entry point: no conftest here
    assert "timeout: 30.0s" in output and "timeout method: thread" in output
    assert "agents still running at the end of the session were stopped: forgotten" in output
    assert elapsed < 20, f"the sample session took {elapsed:.1f} s"


@pytest.mark.slow
def test_the_readme_example_passes(tmp_path) -> None:
    from .test_readme import literal_block_after

    (tmp_path / "test_readme_example.py").write_text(literal_block_after("The pytest plugin\n~~~"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_readme_example.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=45,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# -- An external Redis -------------------------------------------------------------

EXTERNAL_SAMPLE = '''
import redis
import pytest

from mas_sync import Agent


def test_agents_run_on_it(mas_agents, mas_redis_url):
    mas_agents("client")
    mas_agents("echo")
    db = redis.Redis.from_url(mas_redis_url)
    try:
        assert db.exists("agent:client", "agent:echo") == 2
    finally:
        db.close()


def test_each_test_finds_its_database_empty(mas_redis_url):
    db = redis.Redis.from_url(mas_redis_url)
    try:
        assert db.dbsize() == 0
    finally:
        db.close()


def test_that_needs_a_server_of_its_own(mas_redis_server):
    mas_redis_server.restart()


def test_that_forgets_to_stop_its_agent(mas_redis_url):
    Agent("forgotten", redis_url=mas_redis_url).start()


def test_zz_leaves_a_mark(mas_redis_url):
    db = redis.Redis.from_url(mas_redis_url)
    try:
        db.set("mark", mas_redis_url)
    finally:
        db.close()
'''


def _run_pytest(tmp_path, files, args=(), env_extra=None, timeout=45):
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("MAS_SYNC_TEST_REDIS_URL", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _marks(server) -> dict:
    """db number -> the ``mark`` key of that database, for the databases that have one."""
    found = {}
    for db in range(16):
        client = redis.Redis(host="127.0.0.1", port=server.port, db=db, decode_responses=True)
        try:
            if client.exists("mark"):
                found[db] = client.get("mark")
        finally:
            client.close()
    return found


@pytest.mark.slow
def test_the_fixtures_use_an_external_redis_named_by_the_environment(tmp_path) -> None:
    with RedisServer() as server:
        outside = redis.Redis(host="127.0.0.1", port=server.port, db=0)
        outside.set("other-data", "kept")
        url = f"redis://127.0.0.1:{server.port}/15"
        result = _run_pytest(
            tmp_path, {"test_external.py": EXTERNAL_SAMPLE},
            # Starting a server of its own would fail: there is no such binary.
            env_extra={"MAS_SYNC_TEST_REDIS_URL": url,
                       "MAS_SYNC_REDIS_SERVER": str(tmp_path / "no-redis-server")},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "4 passed, 1 skipped" in output
        assert f"mas_sync: Redis at {url} (from $MAS_SYNC_TEST_REDIS_URL)" in output
        assert "mas_redis_server: the fixtures use the Redis at" in output  # the skip reason
        assert "agents still running at the end of the session were stopped: forgotten" in output
        assert _marks(server) == {15: url}  # the tests ran on that database
        assert outside.get("other-data") == b"kept"  # FLUSHDB, not FLUSHALL
        assert not redis.Redis(host="127.0.0.1", port=server.port, db=15).exists("agent:forgotten")
        outside.close()


@pytest.mark.slow
def test_the_command_line_beats_the_environment_which_beats_the_ini_file(tmp_path) -> None:
    sample = '''
    import redis


    def test_mark(mas_redis_url):
        db = redis.Redis.from_url(mas_redis_url)
        try:
            db.set("mark", mas_redis_url)
        finally:
            db.close()
    '''
    with RedisServer() as server:
        ini = f"redis://127.0.0.1:{server.port}/13"
        env = f"redis://127.0.0.1:{server.port}/14"
        cli = f"redis://127.0.0.1:{server.port}/15"
        files = {"test_mark.py": sample, "pytest.ini": f"[pytest]\nmas_redis_url = {ini}\n"}
        for args, env_extra, expected in [
            ([f"--mas-redis-url={cli}"], {"MAS_SYNC_TEST_REDIS_URL": env}, {15: cli}),
            ([], {"MAS_SYNC_TEST_REDIS_URL": env}, {14: env}),
            ([], {}, {13: ini}),
        ]:
            for db in range(16):
                redis.Redis(host="127.0.0.1", port=server.port, db=db).flushdb()
            result = _run_pytest(tmp_path, files, args, env_extra)
            assert result.returncode == 0, result.stdout + result.stderr
            assert _marks(server) == expected


@pytest.mark.slow
def test_an_unreachable_external_redis_is_reported_plainly(tmp_path) -> None:
    with RedisServer() as server:
        url = f"redis://:secret@127.0.0.1:{server.port}/15"
    sample = '''
    def test_needs_redis(mas_redis_url):
        pass
    '''
    result = _run_pytest(tmp_path, {"test_down.py": sample}, env_extra={"MAS_SYNC_TEST_REDIS_URL": url})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output
    assert "mas_sync: cannot reach the Redis at redis://:***@127.0.0.1" in output
    assert "secret" not in output


# -- pytest-timeout: what each method does to a session ------------------------------

HANGING_SAMPLE = '''
import threading


def test_a_hangs(mas_agents):
    mas_agents("stuck")
    threading.Event().wait()


def test_b_runs_after(mas_agents):
    assert not [t for t in threading.enumerate() if t.name.startswith("mas-agent[stuck]")]
'''


@pytest.mark.slow
def test_the_signal_method_fails_only_the_test_that_hangs(tmp_path) -> None:
    result = _run_pytest(
        tmp_path, {"test_hang.py": HANGING_SAMPLE}, ["--timeout=2", "--timeout-method=signal"]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Timeout (>2.0s) from pytest-timeout" in output
    # The stuck test's agent was stopped by the fixture's teardown; the next test ran.
    assert "1 failed, 1 passed" in output
    assert "agents still running" not in output


@pytest.mark.slow
def test_the_thread_method_ends_the_session_at_the_first_timeout(tmp_path) -> None:
    result = _run_pytest(
        tmp_path, {"test_hang.py": HANGING_SAMPLE}, ["--timeout=2", "--timeout-method=thread"]
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Timeout" in output and "Stack of" in output  # the stacks of all threads
    assert "test_b_runs_after" not in output and "passed" not in output


# -- The extra --------------------------------------------------------------------------


def test_the_pytest_extra_brings_only_what_the_plugin_needs() -> None:
    config = configparser.ConfigParser()
    config.read(pathlib.Path(__file__).resolve().parent.parent / "setup.cfg")
    extras = {
        name: [line.strip() for line in value.splitlines() if line.strip()]
        for name, value in config["options.extras_require"].items()
    }
    assert extras["pytest"] == ["pytest>=7"]
    assert set(extras["pytest"]) <= set(extras["test"])  # CI's extra still has it
