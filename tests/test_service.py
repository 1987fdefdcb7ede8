"""MASService: system messages, health checks, and the command line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mas_sync import AgentRegistry, MASConnectionError, MASService
from mas_sync.testing import free_port, wait_until


def test_service_logs_register_and_deregister(make_agent, redis_url, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mas_sync")
    with MASService(redis_url, check_interval=60):
        agent = make_agent("logged", capabilities=["x"])
        agent.stop()
        wait_until(lambda: "agent logged deregistered" in caplog.text, 5)
    assert "agent logged registered with capabilities ['x']" in caplog.text


def test_service_ignores_garbage_on_the_system_channel(redis_url, r, caplog) -> None:
    with MASService(redis_url, check_interval=60):
        r.publish("mas.system", "not json")
        r.publish("mas.system", '{"type": "REGISTER"}')
        # Nested too deep for the parser: it used to restart the service's listener.
        r.publish("mas.system", b"[" * 100_000)
        wait_until(lambda: caplog.text.count("invalid system message") == 3, 5)
    assert "listener failed" not in caplog.text


def test_missing_heartbeat_marks_agent_inactive(redis_url, r) -> None:
    with MASService(redis_url, heartbeat_timeout=0, check_interval=60) as service:
        r.hset("agent:ghost", mapping={"id": "ghost", "capabilities": "[]", "metadata": "{}",
                                       "status": "ACTIVE", "registered_at": str(time.time() - 10)})
        r.hset("agent:alive", mapping={"id": "alive", "capabilities": "[]", "metadata": "{}",
                                       "status": "ACTIVE", "registered_at": str(time.time() - 10)})
        r.set("agent:alive:heartbeat", "1", ex=60)
        assert service.check_health() == ["ghost"]
        assert r.hget("agent:ghost", "status") == "INACTIVE"
        assert r.hget("agent:alive", "status") == "ACTIVE"
        assert service.check_health() == []


def test_new_registration_gets_a_grace_period(redis_url, r) -> None:
    with MASService(redis_url, heartbeat_timeout=60, check_interval=60) as service:
        r.hset("agent:young", mapping={"id": "young", "capabilities": "[]", "metadata": "{}",
                                       "status": "ACTIVE", "registered_at": str(time.time())})
        assert service.check_health() == []


def _between_read_and_mark(monkeypatch, action) -> list:
    """Run ``action`` in each check after it read the registrations and before it marks any.

    Returns the ids each read found, as the check saw them, for the test to
    show that the race took place.
    """
    real = AgentRegistry._read_liveness
    seen: list = []

    def read_then_act(self, agent_ids):
        found = real(self, agent_ids)
        seen.append({item.agent_id: item.beating for item in found})
        action()
        return found

    monkeypatch.setattr(AgentRegistry, "_read_liveness", read_then_act)
    return seen


@pytest.mark.parametrize("change", ["deleted", "taken-over", "beating-again"])
def test_health_check_marks_only_what_is_still_dead_when_it_writes(
    redis_url, r, monkeypatch, change
) -> None:
    # The check reads "ghost" as dead; before it writes, the agent deletes
    # its registration (a clean stop), a new run takes the id over, or the
    # heartbeat comes back. The write must see that: no hash recreated, no
    # mark, no removal scheduled.
    def act() -> None:
        if change == "deleted":
            r.delete("agent:ghost")
        elif change == "taken-over":
            r.hset("agent:ghost", "token", "a-new-run")
        else:
            r.set("agent:ghost:heartbeat", "1", ex=60)

    with MASService(redis_url, heartbeat_timeout=0, check_interval=60, prune_after=30) as service:
        _ghost(r, "ghost", time.time())
        seen = _between_read_and_mark(monkeypatch, act)
        assert service.check_health() == []
        assert seen == [{"ghost": False}], "the check read the registration as dead"
    if change == "deleted":
        assert r.keys("agent:*") == []
    else:
        assert r.hget("agent:ghost", "status") == "ACTIVE"
        assert r.pttl("agent:ghost") == -1


@pytest.mark.slow
def test_killed_agent_drops_out_of_discovery(make_agent, redis_url) -> None:
    # heartbeat_ttl 1 s + check_interval 0.3 s: gone from discover() within ~1.3 s.
    script = textwrap.dedent(
        f"""
        import sys, threading
        from mas_sync import Agent
        agent = Agent("doomed", ["x"], {redis_url!r}, heartbeat_interval=0.2, heartbeat_ttl=1.0)
        agent.start()
        print("started", flush=True)
        threading.Event().wait(60)
        """
    )
    observer = make_agent("observer")
    with MASService(redis_url, heartbeat_timeout=1, check_interval=0.3):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "started"
            assert [a["id"] for a in observer.discover(["x"])] == ["doomed"]
            child.send_signal(signal.SIGKILL)
            child.wait(5)
            killed = time.monotonic()
            wait_until(lambda: observer.discover(["x"]) == [], 10, message="dead agent dropped")
            assert time.monotonic() - killed < 1.0 + 0.3 + 1.5
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(5)
            child.stdout.close()


@pytest.mark.slow
def test_a_live_agent_stays_active_under_the_service(make_agent, redis_url, r) -> None:
    # Only the agent's heartbeats can keep it ACTIVE past its 1 s heartbeat
    # TTL: checks run, by the service's loop and here, for three TTLs.
    ttl = 1.0
    with MASService(redis_url, heartbeat_timeout=0, check_interval=0.1) as service:
        agent = make_agent("steady", capabilities=["s"], heartbeat_interval=0.2, heartbeat_ttl=ttl)
        beats = {r.get("agent:steady:heartbeat")}
        started = time.monotonic()
        pause = threading.Event()
        while time.monotonic() - started < 3 * ttl:
            assert service.check_health() == [], "marked INACTIVE: its heartbeat stopped"
            assert r.hget("agent:steady", "status") == "ACTIVE"
            beats.add(r.get("agent:steady:heartbeat"))
            pause.wait(0.05)
        assert len(beats) >= 4, "the heartbeat key was renewed"
        assert [a["id"] for a in agent.discover(["s"])] == ["steady"]


def test_service_start_fails_promptly_without_redis() -> None:
    service = MASService(f"redis://127.0.0.1:{free_port()}", check_interval=1)
    started = time.monotonic()
    with pytest.raises(MASConnectionError):
        service.start()
    assert time.monotonic() - started < 5
    assert not service.is_running


def test_service_stop_twice_and_restart(redis_url) -> None:
    service = MASService(redis_url, check_interval=0.1)
    service.start()
    service.stop()
    service.stop()
    service.start()
    assert service.is_running
    service.stop()


def test_bad_service_arguments() -> None:
    with pytest.raises(ValueError):
        MASService(check_interval=0)
    with pytest.raises(ValueError):
        MASService(heartbeat_timeout=-1)


def _run_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mas_sync.service", *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_service_command_stops_cleanly_on_a_signal(redis_url, sig) -> None:
    proc = _run_cli("--redis-url", redis_url, "--check-interval", "0.5")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "MASService: started" in line:
                break
        else:  # pragma: no cover - reported below
            pytest.fail("the service did not start")
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert "MASService: stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()


def test_service_command_exits_1_without_redis() -> None:
    proc = _run_cli("--redis-url", f"redis://127.0.0.1:{free_port()}")
    try:
        assert proc.wait(15) == 1
        assert "cannot reach Redis" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()


# -- liveness on Redis's clock only (issue 9, item 9) ------------------------------------


def _ghost(r, agent_id: str, registered_at: float) -> None:
    r.hset(f"agent:{agent_id}", mapping={
        "id": agent_id, "capabilities": '["x"]', "metadata": "{}", "status": "ACTIVE",
        "token": f"t-{agent_id}", "registered_at": str(registered_at)})


def test_an_agent_clock_an_hour_ahead_does_not_keep_a_dead_agent_active(redis_url, r) -> None:
    # The agent wrote registered_at with a clock an hour ahead (or the
    # service's clock is an hour behind): the heartbeat alone decides.
    with MASService(redis_url, heartbeat_timeout=0.5, check_interval=0.1):
        _ghost(r, "ahead", time.time() + 3600)
        r.set("agent:ahead:heartbeat", "1", px=300)
        started = time.monotonic()
        wait_until(lambda: r.hget("agent:ahead", "status") == "INACTIVE", 5,
                   message="the dead agent is marked INACTIVE")
        # Seen beating, then silent: marked without waiting for the grace.
        assert time.monotonic() - started < 0.3 + 0.1 + 0.5


def test_an_agent_clock_an_hour_behind_still_gets_its_grace(redis_url, r) -> None:
    # A new registration whose registered_at reads an hour old (the agent's
    # clock behind, or the service's ahead) has not sent its first heartbeat
    # yet, as an async agent just after registering: it is not marked at once.
    with MASService(redis_url, heartbeat_timeout=60, check_interval=60) as service:
        _ghost(r, "behind", time.time() - 3600)
        assert service.check_health() == []
        r.set("agent:behind:heartbeat", "1", ex=60)  # its first heartbeat
        assert service.check_health() == []
        assert r.hget("agent:behind", "status") == "ACTIVE"


def test_the_grace_runs_on_redis_time(redis_url, r) -> None:
    with MASService(redis_url, heartbeat_timeout=0.4, check_interval=60) as service:
        _ghost(r, "silent", time.time() + 3600)
        assert service.check_health() == []  # first seen without a heartbeat
        started = time.monotonic()
        wait_until(lambda: service.check_health() == ["silent"], 5, interval=0.05)
        assert time.monotonic() - started >= 0.35


def test_the_service_marks_only_the_registration_it_read(redis_url, r) -> None:
    # A registration replaced by a new run (new token) between two checks is
    # judged afresh: the new run gets its own grace.
    with MASService(redis_url, heartbeat_timeout=0.3, check_interval=60) as service:
        _ghost(r, "reborn", time.time())
        assert service.check_health() == []
        threading.Event().wait(0.4)
        r.hset("agent:reborn", "token", "a-new-run")
        assert service.check_health() == []
        assert r.hget("agent:reborn", "status") == "ACTIVE"


# -- pruning (issue 9, item 8) ------------------------------------------------------------


def test_the_service_prunes_registrations_dead_for_longer_than_prune_after(
    make_agent, redis_url, r
) -> None:
    live = make_agent("live", capabilities=["x"])
    with MASService(redis_url, heartbeat_timeout=0, check_interval=0.1, prune_after=0.5):
        _ghost(r, "stale", time.time() + 3600)
        r.hset("agent.state:stale", "kept", "1")
        wait_until(lambda: r.hget("agent:stale", "status") == "INACTIVE", 5)
        assert r.exists("agent:stale")  # not before prune_after
        wait_until(lambda: not r.exists("agent:stale"), 5, message="pruned")
        assert r.exists("agent.state:stale")
        threading.Event().wait(0.3)
        assert r.hget("agent:live", "status") == "ACTIVE" and r.pttl("agent:live") == -1
    assert live.discover(["x"]) == [{"id": "live", "capabilities": ["x"], "metadata": {},
                                     "delivery": "pubsub", "instances": 1}]


def test_prune_after_is_checked() -> None:
    for bad in (0, -1, "1", True):
        with pytest.raises((TypeError, ValueError)):
            MASService(prune_after=bad)  # type: ignore[arg-type]
    assert MASService().prune_after is None


def test_service_command_prunes_with_an_option(redis_url, r) -> None:
    proc = _run_cli("--redis-url", redis_url, "--check-interval", "0.1",
                    "--heartbeat-timeout", "0", "--prune-after", "0.3")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "MASService: started" in line:
                break
        _ghost(r, "stale", time.time())
        wait_until(lambda: not r.exists("agent:stale"), 5, message="pruned by the command")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()


def test_check_health_raises_mas_errors_with_the_redis_error_as_cause() -> None:
    import redis as redis_py

    from mas_sync import RedisCommandError
    from mas_sync.testing import RedisServer

    with RedisServer() as server:
        admin = redis_py.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "svc", "on", ">pw", "~*", "&*", "+@all")
        url = f"redis://svc:pw@127.0.0.1:{server.port}/0"
        with MASService(url, heartbeat_timeout=0, check_interval=60) as service:
            admin.execute_command("ACL", "SETUSER", "svc", "-time")
            with pytest.raises(RedisCommandError) as caught:
                service.check_health()
            assert isinstance(caught.value.__cause__, redis_py.exceptions.NoPermissionError)
            assert "pw@" not in str(caught.value)
        admin.close()


@pytest.mark.parametrize(
    "option, value",
    [("check_interval", 1e10), ("check_interval", float("inf")), ("heartbeat_timeout", float("nan"))],
)
def test_the_service_refuses_durations_no_thread_can_wait_for(redis_url, option, value) -> None:
    with pytest.raises(ValueError, match=option):
        MASService(redis_url, **{option: value})
