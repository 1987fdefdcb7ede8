"""Redis going away: restarts, killed and half-open connections, slow subscribers.

Each test runs its own redis-server, so that it can kill it. Recovery times
are printed (run pytest with -s to see them).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Iterator, List

import pytest
import redis

from mas_sync import Agent, AgentRegistry, MASConnectionError, MASService
from mas_sync._stats import GapTracker
from mas_sync.testing import RedisServer, wait_until

from .proxy import FreezableProxy
from .support import FAST, Inbox, flows, start




@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private



@pytest.mark.slow
@pytest.mark.parametrize("keep_data", [False, True], ids=["data-lost", "data-kept"])
def test_agents_recover_from_a_redis_restart(server, agents, keep_data, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mas_sync")
    a = start(agents, Inbox("a", ["x"], server.url, **FAST))
    b = start(agents, Inbox("b", ["x"], server.url, **FAST))
    a.update_state({"before": 1})
    assert flows(a, b, "before")

    killed = time.monotonic()
    server.restart(keep_data=keep_data, down_for=0.5)
    attempt = [0]

    def recovered() -> bool:
        attempt[0] += 1
        return flows(a, b, f"after-{attempt[0]}") and flows(b, a, f"back-{attempt[0]}")

    wait_until(recovered, 15, interval=0.05, message="messages flow again")
    messages_back = time.monotonic() - killed
    wait_until(lambda: [x["id"] for x in a.discover()] == ["a", "b"], 15, message="discovery")
    discovery_back = time.monotonic() - killed
    print(f"\nrestart ({'data kept' if keep_data else 'data lost'}, down 0.5 s):"
          f" messages again after {messages_back:.2f} s, discover() after {discovery_back:.2f} s")
    for agent in (a, b):
        assert agent.stats.disconnects == 1 and agent.stats.reconnects == 1
    assert caplog.text.count("Agent a: lost the subscription") == 1
    assert caplog.text.count("Agent a: resubscribed") == 1
    a.update_state({"after": 2})
    expected = {"before": "1", "after": "2"} if keep_data else {"after": "2"}
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert client.hgetall("agent.state:a") == expected
    finally:
        client.close()


@pytest.mark.slow
def test_calls_fail_after_the_retry_window_while_redis_is_down(server, agents) -> None:
    agent = start(agents, Agent("a", redis_url=server.url, retry_timeout=0.5, **FAST))
    server.kill()
    for call in (lambda: agent.send("x", {}), lambda: agent.request("x", {}, timeout=5),
                 lambda: agent.update_state({"k": 1}), agent.discover):
        started = time.monotonic()
        with pytest.raises(MASConnectionError, match="127.0.0.1"):
            call()
        assert time.monotonic() - started < 2.5
    assert agent.state is not None and dict(agent.state) == {}  # the failed update left nothing


@pytest.mark.slow
def test_a_send_waits_out_a_short_outage(server, agents) -> None:
    receiver = start(agents, Inbox("rx", redis_url=server.url, **FAST))
    sender = start(agents, Agent("tx", redis_url=server.url, retry_timeout=10, **FAST))
    restarter = threading.Thread(target=server.restart, kwargs={"down_for": 0.5})
    restarter.start()
    try:
        wait_until(lambda: sender.stats.disconnects == 1, 5, message="Redis is down")
        sender.send("nobody", {"during": "outage"})  # retried until Redis is back
    finally:
        restarter.join(15)
    wait_until(lambda: flows(sender, receiver, "after"), 10, interval=0.05)


def test_killed_pubsub_connection_is_noticed_and_resubscribed(server, agents, r_of) -> None:
    receiver = start(agents, Inbox("rx", redis_url=server.url, **FAST))
    sender = start(agents, Agent("tx", redis_url=server.url, **FAST))
    assert flows(sender, receiver, "before")
    r = r_of(server)
    killed_at = time.monotonic()
    assert r.client_kill_filter(_type="pubsub") >= 1
    wait_until(lambda: receiver.stats.reconnects == 1, 10, message="resubscribed")
    print(f"\nCLIENT KILL TYPE pubsub: resubscribed after {time.monotonic() - killed_at:.2f} s")
    assert receiver.stats.disconnects == 1
    wait_until(lambda: flows(sender, receiver, "after"), 5, interval=0.05)


@pytest.mark.slow
def test_half_open_connection_is_detected_by_the_watchdog(server, agents, caplog) -> None:
    proxy = FreezableProxy(server.port)
    try:
        receiver = start(
            agents, Inbox("rx", redis_url=proxy.url, probe_interval=0.3, **FAST)
        )
        sender = start(agents, Agent("tx", redis_url=server.url, **FAST))
        assert flows(sender, receiver, "before")
        frozen_at = time.monotonic()
        assert proxy.freeze() >= 1  # every connection of rx now leads nowhere
        wait_until(lambda: receiver.stats.reconnects == 1, 10, message="watchdog reset")
        detected = time.monotonic() - frozen_at
        print(f"\nhalf-open pub/sub connection replaced after {detected:.2f} s"
              " (probe_interval 0.3 s)")
        assert detected < 0.3 + 0.3 + 1.0 + 1.0
        assert "no answer to PING" in caplog.text
        wait_until(lambda: flows(sender, receiver, "after"), 5, interval=0.05)
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        proxy.close()


STALLED_AGENT = """
import dataclasses, sys, threading
from mas_sync import Agent, handler

class Rx(Agent):
    @handler("stats")
    def stats_(self, message):
        return dataclasses.asdict(self.stats)

agent = Rx("rx", redis_url=sys.argv[1], max_pending=100_000)
agent.start()
print("started", flush=True)
sys.stdin.read()  # until the test closes it
agent.stop()
"""


@pytest.mark.slow
def test_stalled_subscriber_cut_off_by_redis_reconnects_and_counts_the_loss(server, agents, r_of) -> None:
    import signal
    import subprocess
    import sys

    r = r_of(server)
    r.config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_AGENT, server.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "started"
        sender = start(agents, Agent("tx", redis_url=server.url, **FAST))
        child.send_signal(signal.SIGSTOP)  # the subscriber stops reading
        try:
            body = {"pad": "x" * 20_000}
            sender.send_many([("rx", dict(body, n=n)) for n in range(1000)])
            wait_until(lambda: int(r.info("stats").get("client_output_buffer_limit_disconnections", 1)) >= 1
                       and r.pubsub_numsub("agent.rx")[0][1] == 0, 5, message="Redis cut rx off")
        finally:
            child.send_signal(signal.SIGCONT)
        cut_at = time.monotonic()

        def stats() -> dict:
            try:
                return sender.request("rx", {"action": "stats"}, timeout=0.5).payload
            except TimeoutError:
                return {}

        report = wait_until(lambda: stats().get("reconnects") == 1 and stats(), 10,
                            message="rx back and answering")
        print(f"\nstalled subscriber cut off by Redis: answering again after"
              f" {time.monotonic() - cut_at:.2f} s; got {report['received']} of 1000,"
              f" missed {report['missed']} by sequence numbers")
        assert report["disconnects"] == 1
        assert report["received"] + report["missed"] >= 1000
        assert report["missed"] > 0
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        child.stdout.close()


def test_messages_lost_while_a_receiver_was_away_are_counted(server, agents) -> None:
    receiver = start(agents, Inbox("rx", redis_url=server.url, **FAST))
    sender = start(agents, Agent("tx", redis_url=server.url, **FAST))
    for n in range(3):
        sender.send("rx", {"n": n})
    wait_until(lambda: len(receiver.payloads()) == 3, 5)
    receiver.stop()
    for n in range(3, 8):
        sender.send("rx", {"n": n})  # published to nobody: lost
    receiver.start()
    sender.send("rx", {"n": 8})
    wait_until(lambda: len(receiver.payloads()) == 4, 5)
    assert receiver.stats.missed == 5


def test_sequence_numbers_are_on_the_wire(server, agents, r_of) -> None:
    sender = start(agents, Agent("tx", redis_url=server.url, **FAST))
    pubsub = r_of(server).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("agent.rx")
    try:
        sender.send("rx", {"a": 1})
        sender.send("rx", {"a": 2})
        sender.send("other", {"a": 3})
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message:
                seen.append(json.loads(message["data"]))
        assert [m["seq"] for m in seen] == [1, 2]
        assert seen[0]["sender_run"] == seen[1]["sender_run"]
    finally:
        pubsub.close()


def test_gap_tracker_tolerates_overtaking_and_bounds_its_memory() -> None:
    tracker = GapTracker()
    for seq in (5, 6, 8, 7, 9):  # 7 overtaken by 8, not lost
        tracker.observe("s", "run1", seq)
    assert tracker.missed == 0
    tracker.observe("s", "run1", 12)
    assert tracker.missed == 2
    tracker.observe("s", "run2", 1)  # a restarted sender starts again
    tracker.observe("s", "run2", 2)
    assert tracker.missed == 2
    tracker.observe("s", "run2", 1_000_002)  # a huge gap is counted, not stored
    assert tracker.missed == 2 + 999_999


@pytest.mark.slow
def test_service_resumes_after_a_restart(server, agents, r_of, caplog) -> None:
    # The restart loses every key. The service must subscribe again and its
    # own health loop (no check_health() call here) must go on marking: a
    # registration made after the restart whose heartbeat then dies is marked.
    caplog.set_level(logging.INFO, logger="mas_sync")
    r = r_of(server)
    with MASService(server.url, heartbeat_timeout=0, check_interval=0.2):
        start(agents, Agent("a", ["x"], server.url, **FAST))
        server.restart(down_for=0.3)
        wait_until(lambda: "MASService: resubscribed to mas.system" in caplog.text, 15)
        wait_until(lambda: r.hget("agent:a", "status") == "ACTIVE", 10,
                   message="the agent registered again on the empty server")
        AgentRegistry(r).register("doomed", ["x"], heartbeat_ttl=0.5)
        wait_until(lambda: r.hget("agent:doomed", "status") == "INACTIVE", 5,
                   message="the service's loop marks an agent that died after the restart")
        assert r.hget("agent:a", "status") == "ACTIVE"
        start(agents, Agent("late", ["x"], server.url, **FAST))
        wait_until(lambda: "agent late registered" in caplog.text, 5)


@pytest.fixture
def r_of() -> Iterator[Any]:
    clients: List[redis.Redis] = []

    def make(server: RedisServer) -> redis.Redis:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
