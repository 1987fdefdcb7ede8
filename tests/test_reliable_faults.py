"""Reliable delivery under faults: SIGKILLed instances, a Redis restart, Cluster, Sentinel.

Each test runs the processes it breaks: agent processes it kills, or a
redis-server (a cluster, a Sentinel group) of its own. Counts and times are
printed (pytest -s).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Dict, Iterator, List, Set

import pytest
import redis
from redis.exceptions import MovedError

from mas_sync import Agent, AgentMessage, MASConnectionError, RedisCommandError, RequestError
from mas_sync.testing import RedisServer, wait_until

from .conftest import FAST
from .support import start

# --- 1. SIGKILL: instances crash while messages flow --------------------------

CHAOS_WORKERS = 4
CHAOS_PENDING = 8

# One instance of the reliable agent "chaos": each message it handles is
# pushed to the list chaos.handled (before its ack, as any handler's work).
_CHAOS_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import redis
    from mas_sync import Agent

    url, instance, visibility, run, workers, pending = sys.argv[1:7]
    log = redis.Redis.from_url(url)

    class Chaos(Agent):
        def on_message(self, message):
            time.sleep(0.005)  # some work
            log.rpush("chaos.handled", f"{message.payload['i']}:{run}")

    agent = Chaos("chaos", redis_url=url, delivery="reliable", instance=instance,
                  visibility_timeout=float(visibility), take_over=run != "0",
                  max_workers=int(workers), max_pending=int(pending),
                  heartbeat_interval=0.2, heartbeat_ttl=1.0)
    agent.start()
    log.rpush("chaos.started", instance)
    threading.Event().wait(60)
    """
)


@pytest.fixture
def children() -> Iterator[List[subprocess.Popen]]:
    started: List[subprocess.Popen] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(10)


@pytest.mark.slow
def test_sigkilled_instances_lose_nothing_and_repeat_only_what_was_in_flight(
    make_agent: Any, r: redis.Redis, redis_url: str, children: List[subprocess.Popen]
) -> None:
    total, kill_every = 600, 100
    # (instance, visibility_timeout): a restart under the same name takes back
    # its entries at once; one under a new name takes them once they are idle.
    runs = [("a", 30.0), ("a", 30.0), ("b", 0.5), ("b", 30.0), ("c", 0.5), ("a", 0.5)]

    def start_child(n: int) -> subprocess.Popen:
        instance, visibility = runs[n]
        child = subprocess.Popen([
            sys.executable, "-c", _CHAOS_CHILD, redis_url, instance, str(visibility),
            str(n), str(CHAOS_WORKERS), str(CHAOS_PENDING),
        ])
        children.append(child)
        wait_until(lambda: r.llen("chaos.started") == n + 1 or child.poll() is not None, 15,
                   message=f"instance {instance} started")
        assert child.poll() is None, "the agent process died at start"
        return child

    started_at = time.monotonic()
    child = start_child(0)
    # Several senders: the messages of one sender are handled one at a time.
    feeders = [make_agent(f"feeder-{n}") for n in range(CHAOS_WORKERS)]
    sent: List[int] = []
    pause = threading.Event()

    def feed() -> None:  # as fast as handled, at most 50 ahead: a flow, not a backlog
        for i in range(total):
            while i - r.llen("chaos.handled") >= 50:
                if pause.wait(0.005):
                    return
            feeders[i % len(feeders)].send("chaos", {"i": i})
            sent.append(i)

    sender = threading.Thread(target=feed, name="test-feeder")
    sender.start()
    in_flight: List[Set[int]] = []  # per kill: the messages its consumer held
    try:
        for n in range(1, len(runs)):
            wait_until(lambda: r.llen("chaos.handled") >= n * kill_every, 20, interval=0.002,
                       message=f"{n * kill_every} handled")
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
            consumer = f"chaos-{runs[n - 1][0]}"
            held = r.xpending_range("agent.stream:chaos", "agents", "-", "+", 10_000, consumer)
            in_flight.append(_payload_ids(r, [p["message_id"] for p in held]))
            child = start_child(n)
    except BaseException:
        pause.set()  # stop sending
        raise
    finally:
        sender.join(30)
    assert sent == list(range(total))
    wait_until(lambda: set(_handled(r)) == set(range(total)), 20,
               message="every message handled")
    wait_until(lambda: r.xpending("agent.stream:chaos", "agents")["pending"] == 0, 10,
               message="every entry acknowledged")
    elapsed = time.monotonic() - started_at
    counts = collections.Counter(_handled(r))
    twice = {i for i, c in counts.items() if c > 1}
    print(f"\nchaos: {total} messages, {len(in_flight)} SIGKILLs in {elapsed:.1f} s;"
          f" held at each kill {[len(h) for h in in_flight]} (not handled yet"
          f" {[len(h - _handled_by(r, n)) for n, h in enumerate(in_flight)]});"
          f" handled twice: {len(twice)}")
    for n, held in enumerate(in_flight, 1):
        if runs[n][0] == runs[n - 1][0]:  # restarted under its name: took them back at once
            assert held <= _handled_by(r, n), f"run {n} did not take back what run {n - 1} held"
    # Each handling beyond the first is owed to a kill that found the message
    # in flight (one in flight at two kills in a row can run three times).
    for i in twice:
        kills = sum(i in held for held in in_flight)
        assert counts[i] - 1 <= kills, f"message {i} ran {counts[i]} times, in flight at {kills}"
    for n, held in enumerate(in_flight, 1):
        # What one kill can repeat: the handlers running, the entries queued,
        # and those handled whose ack had not gone out yet (they gather for a
        # few ms, see _streams.ACK_DELAY_MS). Those not handled yet are bounded
        # by the workers and the queue.
        unhandled = held - _handled_by(r, n - 1)
        assert len(unhandled) <= CHAOS_WORKERS + CHAOS_PENDING, (
            f"kill {n}: {len(unhandled)} entries held and not handled")
    assert r.xlen("agent.dlq:chaos") == 0


def _handled(r: redis.Redis) -> List[int]:
    return [int(item.split(":")[0]) for item in r.lrange("chaos.handled", 0, -1)]


def _handled_by(r: redis.Redis, run: int) -> Set[int]:
    return {int(i) for i, by in (item.split(":") for item in r.lrange("chaos.handled", 0, -1))
            if int(by) == run}


def _payload_ids(r: redis.Redis, entry_ids: List[str]) -> Set[int]:
    import json

    found = set()
    for entry_id in entry_ids:
        [(_, fields)] = r.xrange("agent.stream:chaos", entry_id, entry_id)
        found.add(json.loads(fields["envelope"])["payload"]["i"])
    return found


# --- 2. Redis shut down and started again (AOF on) -----------------------------


class Recorder(Agent):
    """Keeps the payload of every message it handles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.seen: List[Dict[str, Any]] = []

    def on_message(self, message: AgentMessage) -> Any:
        with self.lock:
            self.seen.append(message.payload)
        return {"echo": message.payload} if message.expects_reply else None

    def got(self) -> List[Dict[str, Any]]:
        with self.lock:
            return list(self.seen)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, with AOF on; asked for before ``agents``."""
    with RedisServer(appendonly=True) as private:
        yield private


@pytest.mark.slow
def test_a_redis_restart_loses_no_message_whose_send_returned(
    server: RedisServer, agents: List[Agent]
) -> None:
    worker = start(agents, Recorder("worker", redis_url=server.url, delivery="reliable",
                                     **FAST))
    sender = start(agents, Agent("feeder", redis_url=server.url, retry_timeout=0.2,
                                  **FAST))
    returned: List[int] = []
    refused: List[int] = []
    other: List[BaseException] = []
    done = threading.Event()

    def feed() -> None:
        i = 0
        while not done.is_set():
            try:
                sender.send("worker", {"i": i})
                returned.append(i)
            except MASConnectionError:
                refused.append(i)
            except BaseException as exc:  # pragma: no cover - reported below
                other.append(exc)
            i += 1
            done.wait(0.002)

    feeding = threading.Thread(target=feed, name="test-feeder")
    feeding.start()
    try:
        wait_until(lambda: len(worker.got()) >= 100, 10, message="100 handled")
        stopped_at = time.monotonic()
        server.shutdown()
        wait_until(lambda: len(refused) >= 3, 10, message="sends refused while down")
        server.start()
        back = len(returned)
        wait_until(lambda: len(returned) >= back + 100, 15, message="sends again")
    finally:
        done.set()
        feeding.join(10)
    assert not other, other
    expected = set(returned)
    wait_until(lambda: expected <= {p["i"] for p in worker.got()}, 15,
               message="every message whose send() returned handled")
    recovered = time.monotonic() - stopped_at
    handled = [p["i"] for p in worker.got()]
    assert worker.is_running
    assert worker.stats.disconnects >= 1 and worker.stats.reconnects >= 1
    # A request after the restart goes by the stream too, and is answered.
    # (Its reply comes by pub/sub: wait until the sender listens again.)
    wait_until(lambda: sender.stats.reconnects >= 1, 10, message="the sender resubscribed")
    assert sender.request("worker", {"q": 1}, timeout=5).payload == {"echo": {"q": 1}}
    print(f"\nredis restart (AOF): {len(returned)} sends returned, {len(refused)} raised"
          f" MASConnectionError; all handled {recovered:.2f} s after the SHUTDOWN;"
          f" handled twice: {len(handled) - len(set(handled))}")


# --- 3. Redis Cluster ---------------------------------------------------------


class Flaky(Recorder):
    """Raises for a payload with ``"fail": True``, at every attempt."""

    def on_message(self, message: AgentMessage) -> Any:
        super().on_message(message)
        if message.payload.get("fail"):
            raise RuntimeError(f"attempt {message.attempt} fails")
        return {"echo": message.payload} if message.expects_reply else None


def _owner(cluster: Any, key: str) -> int:
    """The index of the node whose slot range holds ``key`` (slots split evenly)."""
    from redis.crc import key_slot

    per_node = cluster.SLOTS // cluster.n
    return min(key_slot(key.encode()) // per_node, cluster.n - 1)


def test_a_reliable_agent_on_a_cluster(cluster: Any, agents: List[Agent]) -> None:
    # An id whose stream and dead-letter stream live on two different nodes.
    agent_id = next(f"rel-{n}" for n in range(100)
                    if _owner(cluster, f"agent.stream:rel-{n}")
                    != _owner(cluster, f"agent.dlq:rel-{n}"))
    worker = start(agents, Flaky(agent_id, redis_url=cluster.url, delivery="reliable",
                                  retry_delay=0.01, max_attempts=2, retry_timeout=1.0, **FAST))
    sender = start(agents, Agent("sender", redis_url=cluster.url, retry_timeout=1.0, **FAST))
    for i in range(20):
        sender.send(agent_id, {"i": i})
    assert sender.request(agent_id, {"q": 1}, timeout=5).payload == {"echo": {"q": 1}}
    with pytest.raises(RequestError) as caught:
        sender.request(agent_id, {"fail": True}, timeout=5)
    assert caught.value.kind == "handler_error"
    wait_until(lambda: len(worker.got()) == 23, message="every message handled")
    assert worker.got()[:20] == [{"i": i} for i in range(20)]
    # (The requester hears of the failure before the entry moves to the dead letters.)
    [letter] = wait_until(worker.dead_letters, message="the dead letter listed")
    assert worker.stats.retried == 1 and worker.stats.dead_lettered == 1
    assert letter.attempts == 2 and letter.error == "RuntimeError: attempt 2 fails"
    assert letter.message is not None and letter.message.payload["fail"] is True
    assert [m.payload for m in worker.history()][:21] == \
        [{"i": i} for i in range(20)] + [{"q": 1}]
    # Each stream is on the node that owns its slot, and only there.
    for key, length in ((f"agent.stream:{agent_id}", 22), (f"agent.dlq:{agent_id}", 1)):
        owner = _owner(cluster, key)
        for n, node in enumerate(cluster.nodes):
            with redis.Redis(host="127.0.0.1", port=node.port) as client:
                if n == owner:
                    assert client.xlen(key) == length
                else:
                    with pytest.raises(MovedError):
                        client.xlen(key)
    stream_node = cluster.nodes[_owner(cluster, f"agent.stream:{agent_id}")]
    with redis.Redis(host="127.0.0.1", port=stream_node.port) as client:
        wait_until(lambda: client.xpending(f"agent.stream:{agent_id}", "agents")["pending"] == 0,
                   message="every entry acknowledged")


# --- 4. Sentinel failover -------------------------------------------------------


@pytest.fixture
def group() -> Iterator[Any]:
    from mas_sync.testing import SentinelGroup

    with SentinelGroup() as started:
        yield started


@pytest.mark.slow
@pytest.mark.parametrize("how", ["failover", "master killed"])
def test_a_reliable_agent_reads_its_stream_after_a_sentinel_failover(
    group: Any, agents: List[Agent], how: str
) -> None:
    worker = start(agents, Recorder("worker", redis_url=group.url, delivery="reliable",
                                     retry_timeout=1.0, **FAST))
    sender = start(agents, Agent("sender", redis_url=group.url, retry_timeout=1.0, **FAST))
    got = lambda: [p["i"] for p in worker.got()]  # noqa: E731
    sender.send_many([("worker", {"i": i}) for i in range(50)])
    wait_until(lambda: set(range(50)) <= set(got()), 10, message="the first 50 handled")
    old = group.master_address()
    with redis.Redis(host=old[0], port=old[1], socket_timeout=2) as master:
        wait_until(lambda: master.xpending("agent.stream:worker", "agents")["pending"] == 0,
                   message="the first 50 acknowledged")
        assert master.execute_command("WAIT", 1, 5000) == 1  # the acks reached the replica
    started = time.monotonic()
    group.failover() if how == "failover" else group.kill_master()
    wait_until(lambda: group.master_address() != old, 20, message="a new master")
    sent = 50

    def flowing() -> bool:
        nonlocal sent
        try:
            sender.send("worker", {"i": sent})
        except MASConnectionError:
            return False
        sent += 1
        return sent - 1 in got()

    wait_until(flowing, 20, interval=0.05, message="messages through the stream again")
    back = time.monotonic() - started
    sender.send_many([("worker", {"i": i}) for i in range(sent, sent + 50)])
    sent += 50
    wait_until(lambda: set(range(sent - 50, sent)) <= set(got()), 10,
               message="the last 50 handled")
    counts = collections.Counter(got())
    # Acknowledged and replicated before the failover: not delivered again.
    assert [i for i in range(50) if counts[i] != 1] == []
    assert worker.is_running
    new = group.master_address()
    with redis.Redis(host=new[0], port=new[1], socket_timeout=2) as master:
        wait_until(lambda: master.xpending("agent.stream:worker", "agents")["pending"] == 0,
                   message="everything acknowledged on the new master")
    lost = set(range(50, sent)) - set(counts)
    print(f"\nsentinel, {how}: the stream read again {back:.2f} s after it;"
          f" {sent - 50} sent after it, {len(lost)} lost")


@pytest.mark.slow
def test_a_master_short_of_replicas_refuses_sends_to_a_reliable_agent(
    server: RedisServer, agents: List[Agent]
) -> None:
    # min-replicas-to-write: what Redis offers against the loss window of a failover.
    worker = start(agents, Recorder("worker", redis_url=server.url, delivery="reliable",
                                     **FAST))
    sender = start(agents, Agent("sender", redis_url=server.url, **FAST))
    sender.send("worker", {"i": 0})
    with redis.Redis.from_url(server.url) as admin:
        # Acknowledged first: an acknowledgement refused would deliver it again.
        wait_until(lambda: admin.xpending("agent.stream:worker", "agents")["pending"] == 0
                   and worker.got(), message="the first message acknowledged")
        admin.config_set("min-replicas-to-write", 1)
        with pytest.raises(RedisCommandError, match="NOREPLICAS"):
            sender.send("worker", {"i": 1})

        def refused_reads() -> int:  # the reader's reads, and its group's creation
            stats = admin.info("commandstats")  # XGROUP CREATE is "xgroup" before Redis 7
            return sum(int(stats.get(f"cmdstat_{name}", {}).get("rejected_calls", 0))
                       for name in ("xreadgroup", "xgroup|create", "xgroup"))

        first = refused_reads()
        wait_until(lambda: refused_reads() >= first + 3, 10, message="reads refused again")
        # Refused again and again, the reader says so once (a warning, one restart).
        assert worker.stats.listener_restarts == 1
        admin.config_set("min-replicas-to-write", 0)
    sender.send("worker", {"i": 2})
    wait_until(lambda: [p["i"] for p in worker.got()] == [0, 2], 10,
               message="the agent reads again once the master takes writes")
    assert worker.is_running


@pytest.mark.parametrize("whose", ["its own", "another instance's"])
def test_an_entry_deleted_while_pending_is_dropped_and_the_rest_handled(
    make_agent: Any, r: redis.Redis, whose: str
) -> None:
    # Taken back at start (XCLAIM) or claimed from an idle instance
    # (XAUTOCLAIM): Redis 7 drops a deleted entry from the pending list
    # itself, Redis 6.2 answers nil for it and keeps it pending.
    from mas_sync._wire import frame_message

    options = dict(instance="web-1", visibility_timeout=0.3, delivery="reliable", **FAST)
    make_agent("worker", Recorder, **options).stop()
    ids = [r.xadd("agent.stream:worker",
                  {"envelope": frame_message("a", "worker", f'{{"i":{i}}}')}) for i in range(3)]
    reader = "worker-web-1" if whose == "its own" else "worker-web-2"
    r.xreadgroup("agents", reader, {"agent.stream:worker": ">"})  # then it was killed
    r.xdel("agent.stream:worker", ids[1])
    again = make_agent("worker", Recorder, **options)
    wait_until(lambda: sorted(p["i"] for p in again.got()) == [0, 2], 5,
               message="the entries left are handled")
    wait_until(lambda: r.xpending("agent.stream:worker", "agents")["pending"] == 0, 5,
               message="the deleted entry is no longer pending")
    assert again.stats.listener_restarts == 0 and again.is_running


def test_a_restarted_instance_takes_back_more_entries_than_its_queue_holds(
    make_agent: Any, r: redis.Redis
) -> None:
    # The killed instance held more entries than the restarted one can queue
    # at once: the rest are taken as room frees, not after visibility_timeout.
    from mas_sync._wire import frame_message

    options = dict(instance="web-1", visibility_timeout=3600, max_workers=1, max_pending=2,
                   delivery="reliable")
    make_agent("worker", Recorder, **options).stop()
    for i in range(12):
        r.xadd("agent.stream:worker",
               {"envelope": frame_message("a", "worker", f'{{"i":{i}}}')})
    r.xreadgroup("agents", "worker-web-1", {"agent.stream:worker": ">"})  # then it was killed
    again = make_agent("worker", Recorder, **options)
    wait_until(lambda: sorted(p["i"] for p in again.got()) == list(range(12)), 5,
               message="every entry of the killed instance taken back")
    assert [p["i"] for p in again.got()] == list(range(12))
    wait_until(lambda: r.xpending("agent.stream:worker", "agents")["pending"] == 0)
