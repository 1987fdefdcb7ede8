"""The demo and the examples run as documented."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(args, env_extra=None, timeout=60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAS_REDIS_URL"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_demo_runs_on_its_own_private_server() -> None:
    result = run(["-m", "mas_sync", "demo"])
    assert result.returncode == 0, result.stderr
    assert "a private redis-server" in result.stdout
    assert "coordinator discovered ['adder-1', 'adder-2']" in result.stdout
    assert "coordinator asked adder-2: 5 + 50 = 55" in result.stdout
    assert "an invalid request is refused at once: validation_error" in result.stdout
    assert "adder-1 did 3 tasks, adder-2 did 3" in result.stdout
    assert "threads left: none" in result.stdout


def test_demo_uses_the_given_redis(redis_url) -> None:
    result = run(["-m", "mas_sync", "demo", "--redis-url", redis_url])
    assert result.returncode == 0, result.stderr
    assert f"Redis at {redis_url}\n" in result.stdout


@pytest.mark.parametrize(
    "example, expected",
    [
        ("hello.py", "alice got {'greeting': 'hello back'} from bob"),
        ("discovery.py", "all active agents: ['summarizer', 'translator', 'vision']"),
        ("typed_state.py", "after restart:  {'counter': 1, 'ratio': 0.5, 'history': [1]"),
        ("request_reply.py", "flask-style view got: {'summary': 'mas_sync is ...', 'words': 5}"),
        ("typed_handlers.py", "refused: validation_error ['text']"),
        ("periodic.py", "collector got reports [1, 2, 4, 5]"),
        ("scatter_gather.py", "timed out: ['supplier-9']\nfailed: supplier-3 (handler_timeout)"),
    ],
)
def test_example_runs(redis_url, r, example, expected) -> None:
    connections = r.info("stats")["total_connections_received"]
    result = run([str(ROOT / "examples" / example)], {"MAS_REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    # It ran on the Redis named by MAS_REDIS_URL, not on a private one.
    assert r.info("stats")["total_connections_received"] > connections + 1


def test_demo_reads_mas_redis_url(redis_url) -> None:
    result = run(["-m", "mas_sync", "demo"], {"MAS_REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr
    assert f"Redis at {redis_url}\n" in result.stdout
