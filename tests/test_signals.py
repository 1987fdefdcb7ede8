"""SIGTERM and SIGINT: what they do to a script's agents, with and without the helper."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator, List

import pytest

from mas_sync import stop_on_signals
from mas_sync.signals import SignalStop
from mas_sync.testing import wait_until


def _script(redis_url: str, body: str) -> str:
    return textwrap.dedent(
        f"""
        import sys, threading
        from mas_sync import Agent, stop_on_signals

        class Slow(Agent):
            def on_stop(self):
                print("on_stop", flush=True)
                threading.Event().wait(float(sys.argv[1]) if len(sys.argv) > 1 else 0)

        agent = Slow("scripted", ["x"], {redis_url!r}, heartbeat_interval=0.2, heartbeat_ttl=1.0)
        """
    ) + textwrap.dedent(body)


@pytest.fixture
def procs() -> Iterator[List[subprocess.Popen]]:
    started: List[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _run(procs: List[subprocess.Popen], script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    return proc


def _wait_for(proc: subprocess.Popen, text: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == text, line


@pytest.mark.slow
def test_sigterm_without_the_helper_leaves_the_registration(make_agent, redis_url, r, procs) -> None:
    # Python's default for SIGTERM ends the process at once: no atexit, no
    # finally, no clean stop. discover() leaves it out once its heartbeat expires.
    proc = _run(procs, _script(redis_url, """
        agent.start()
        print("started", flush=True)
        threading.Event().wait(60)
        """))
    _wait_for(proc, "started")
    observer = make_agent("observer")
    assert [a["id"] for a in observer.discover(["x"])] == ["scripted"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert r.exists("agent:scripted")
    wait_until(lambda: observer.discover(["x"]) == [], 5, message="dropped with its heartbeat")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_on_signals_stops_a_scripts_agents_cleanly(redis_url, r, procs, sig) -> None:
    proc = _run(procs, _script(redis_url, """
        stop_on_signals()
        agent.start()
        print("started", flush=True)
        threading.Event().wait(60)
        print("not reached", flush=True)
        """))
    _wait_for(proc, "started")
    assert r.exists("agent:scripted")
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    _wait_for(proc, "on_stop")
    assert not r.exists("agent:scripted") and not r.exists("agent:scripted:heartbeat")


def test_stop_on_signals_unwinds_with_blocks(redis_url, r, procs) -> None:
    proc = _run(procs, _script(redis_url, """
        stop_on_signals()
        try:
            with agent:
                print("started", flush=True)
                threading.Event().wait(60)
        finally:
            print("finally", flush=True)
        """))
    _wait_for(proc, "started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    _wait_for(proc, "on_stop")
    _wait_for(proc, "finally")
    assert not r.exists("agent:scripted")


def test_a_second_signal_exits_at_once(redis_url, r, procs) -> None:
    proc = _run(procs, _script(redis_url, """
        stop_on_signals()
        agent.start()
        print("started", flush=True)
        threading.Event().wait(60)
        """), "30")
    _wait_for(proc, "started")
    proc.send_signal(signal.SIGTERM)
    _wait_for(proc, "on_stop")  # on_stop now waits 30 s
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 1
    assert time.monotonic() - sent < 5


def test_without_exit_the_first_signal_only_sets_the_event(redis_url, procs) -> None:
    proc = _run(procs, _script(redis_url, """
        stop = stop_on_signals(exit_process=False)
        agent.start()
        print("started", flush=True)
        assert stop.wait(30)
        print("event", stop.signum, flush=True)
        agent.stop()
        print("done", flush=True)
        """))
    _wait_for(proc, "started")
    proc.send_signal(signal.SIGTERM)
    _wait_for(proc, f"event {int(signal.SIGTERM)}")
    _wait_for(proc, "on_stop")
    _wait_for(proc, "done")
    assert proc.wait(10) == 0


def test_restore_puts_back_the_previous_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with stop_on_signals(exit_process=False) as stop:
        assert isinstance(stop, SignalStop)
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert not stop.is_set()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_only_the_main_thread_can_install_handlers() -> None:
    errors: List[BaseException] = []

    def install() -> None:
        try:
            stop_on_signals()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "main thread" in str(errors[0])


def test_bad_signals_are_refused() -> None:
    with pytest.raises(ValueError, match="signals"):
        stop_on_signals(signals=())
    with pytest.raises(TypeError):
        stop_on_signals(signals="SIGTERM")  # type: ignore[arg-type]


def test_the_demo_stops_cleanly_on_sigterm(redis_url, r, procs) -> None:
    # The coordinator blocks in discover() until the signal comes.
    script = textwrap.dedent(
        """
        import sys, threading
        from mas_sync.tools import demo as _demo

        def stuck(self, capabilities=None):
            print("discovering", flush=True)
            threading.Event().wait(30)

        _demo.Agent.discover = stuck
        sys.exit(_demo.run(sys.argv[1]))
        """
    )
    proc = _run(procs, script, redis_url)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "discovering":
            break
    assert sorted(k for k in r.keys("agent:*") if ":" not in k[6:]) == [
        "agent:adder-1", "agent:adder-2", "agent:coordinator"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert r.keys("agent:*") == []


def test_the_readme_example_stops_cleanly_on_sigterm(redis_url, r, procs) -> None:
    from .test_readme import literal_block_after

    code = literal_block_after("**SIGTERM.**")
    assert '"redis://localhost:6379"' in code
    proc = _run(procs, code.replace('"redis://localhost:6379"', repr(redis_url)))
    _wait_for(proc, "running")
    assert r.exists("agent:worker")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not r.exists("agent:worker") and not r.exists("agent:worker:heartbeat")
