"""The pytest plugin, as a project that installs mas_sync uses it: in a pytest run of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points

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
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "mas_sync"]
    assert [ep.value for ep in found] == ["mas_sync.pytest_plugin"]


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
