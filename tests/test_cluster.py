"""Redis Cluster: agents on a 3-primary cluster with sharded pub/sub.

Needs redis-server 7 or newer (SSUBSCRIBE/SPUBLISH); skipped with an older one.
Recovery times are printed (pytest -s).
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, List

import pytest
import redis
from redis.cluster import RedisCluster

from mas_sync import Agent, AgentIdInUseError, AgentRegistry, MASConnectionError, MASService
from mas_sync.__main__ import main as cli_main
from mas_sync.testing import LocalCluster, wait_until

from .support import FAST as SUPPORT_FAST, REDIS_PY_RUNS_CLUSTER, Inbox, flows

FAST = dict(SUPPORT_FAST, retry_timeout=1.0)

@pytest.mark.skipif(REDIS_PY_RUNS_CLUSTER, reason="this redis-py runs cluster mode")
def test_cluster_mode_on_an_older_redis_py_is_refused_in_the_constructor(capsys) -> None:
    url = "redis+cluster://127.0.0.1:7000"
    for make in (lambda: Agent("a", redis_url=url), lambda: MASService(redis_url=url)):
        with pytest.raises(ValueError, match=r"needs redis-py 8\.1\.0 or newer.*"
                           + redis.__version__.replace(".", r"\.")):
            make()
    assert cli_main(["agents", "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert "needs redis-py 8.1.0 or newer" in err and "Traceback" not in err


@pytest.fixture
def agents(cluster) -> Iterator[List[Inbox]]:
    # Ids whose keys and channels land on different primaries.
    started = [Inbox(f"agent-{n}", ["c", f"n{n}"], cluster.url, **FAST) for n in range(6)]
    for agent in started:
        agent.start()
    yield started
    for agent in started:
        agent.stop(timeout=3)


def nodes_holding(cluster: LocalCluster, keys: List[str]) -> set:
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        return {client.get_node_from_key(key).port for key in keys}
    finally:
        client.close()


def test_messages_discovery_state_and_requests_on_a_cluster(cluster, agents) -> None:
    keys = [f"agent:{a.id}" for a in agents]
    assert len(nodes_holding(cluster, keys)) >= 2, "registrations spread over primaries"
    assert [a["id"] for a in agents[0].discover(["c"])] == [a.id for a in agents]
    assert agents[0].discover(["n4"])[0]["id"] == "agent-4"
    for sender in agents:
        for receiver in agents:
            if sender is not receiver:
                assert flows(sender, receiver, f"{sender.id}>{receiver.id}")
    assert agents[1].request("agent-5", {"token": "q"}, timeout=5).payload == {"pong": "q"}
    agents[2].update_state({"n": 1, "items": [1, 2]})
    agents[2].stop()
    agents[2].start()
    assert dict(agents[2].state) == {"n": "1", "items": "[1, 2]"}


def test_sharded_channels_are_used(cluster, agents) -> None:
    port = list(nodes_holding(cluster, ["agent.agent-0"]))[0]
    with redis.Redis(host="127.0.0.1", port=port) as node:
        assert node.execute_command("PUBSUB", "SHARDNUMSUB", "agent.agent-0")[1] == 1
        assert node.pubsub_numsub("agent.agent-0")[0][1] == 0


def test_service_marks_a_silent_agent_inactive_on_a_cluster(cluster, agents) -> None:
    with MASService(cluster.url, heartbeat_timeout=0, check_interval=60) as service:
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
        try:
            client.hset("agent:ghost", mapping={"id": "ghost", "capabilities": "[]",
                                                "metadata": "{}", "status": "ACTIVE",
                                                "registered_at": "1"})
            assert service.check_health() == ["ghost"]
            assert client.hget("agent:ghost", "status") == "INACTIVE"
            assert client.hget("agent:agent-0", "status") == "ACTIVE"
        finally:
            client.close()


def test_liveness_and_identity_on_a_cluster(cluster, agents) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        # discover() leaves out a registration whose heartbeat key is gone.
        client.hset("agent:ghost", mapping={"id": "ghost", "capabilities": '["c"]',
                                            "metadata": "{}", "status": "ACTIVE",
                                            "token": "t", "registered_at": str(time.time() + 3600)})
        assert [a["id"] for a in agents[0].discover(["c"])] == [a.id for a in agents]
        # A live id is refused; take_over replaces it; the loser's stop deletes nothing.
        with pytest.raises(AgentIdInUseError, match="'agent-1'"):
            Inbox("agent-1", ["c"], cluster.url, **FAST).start()
        winner = Inbox("agent-1", ["c"], cluster.url, take_over=True, **FAST)
        winner.start()
        try:
            token = client.hget("agent:agent-1", "token")
            agents[1].stop(timeout=3)
            assert client.hget("agent:agent-1", "token") == token
            assert client.exists("agent:agent-1:heartbeat")
        finally:
            winner.stop(timeout=3)
        assert not client.exists("agent:agent-1")
        # Pruning: the dead registration goes, the live ones stay.
        registry = AgentRegistry(client)
        assert registry.prune_dead(0.3) == ["ghost"]
        wait_until(lambda: not client.exists("agent:ghost"), 5)
        assert client.pttl("agent:agent-0") == -1
    finally:
        client.close()


def test_agents_recover_from_a_cluster_node_restart(cluster, agents, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mas_sync")
    victim_port = list(nodes_holding(cluster, ["agent.agent-0"]))[0]
    index = [n.port for n in cluster.nodes].index(victim_port)
    receiver = agents[0]
    others = [a for a in agents[1:] if nodes_holding(cluster, [f"agent.{a.id}"]) != {victim_port}]
    sender = others[0]
    assert flows(sender, receiver, "before")
    restarted_at = time.monotonic()
    cluster.restart_node(index, down_for=0.5)
    n = [0]

    def back() -> bool:
        n[0] += 1
        return flows(sender, receiver, f"after-{n[0]}")

    wait_until(back, 20, interval=0.05, message="messages to the restarted node's shard")
    wait_until(lambda: len(sender.discover(["c"])) == 6, 10)
    print(f"\ncluster node restart (down 0.5 s): messages again after"
          f" {time.monotonic() - restarted_at:.2f} s; receiver {receiver.stats}")


def test_stop_and_start_with_every_node_gone(cluster) -> None:
    agent = Inbox("lonely", redis_url=cluster.url, **FAST)
    agent.start()
    for node in cluster.nodes:
        node.kill()
    started = time.monotonic()
    agent.stop(timeout=2)
    assert time.monotonic() - started < 5
    assert not agent.is_running
    with pytest.raises(MASConnectionError, match="cannot reach Redis Cluster"):
        Inbox("late", redis_url=cluster.url, **FAST).start()


def test_instances_of_a_reliable_agent_are_counted_on_a_cluster(cluster) -> None:
    started = [Inbox("worker", ["jobs"], cluster.url, delivery="reliable", instance=name, **FAST)
               for name in ("one", "two")]
    try:
        for agent in started:
            agent.start()
        [found] = started[0].discover(["jobs"])
        assert (found["delivery"], found["instances"]) == ("reliable", 2)
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
        try:
            assert AgentRegistry(client).get_agent("worker")["instances"] == 2
        finally:
            client.close()
        started[1].stop(timeout=3)
        assert started[0].discover(["jobs"])[0]["instances"] == 1
    finally:
        for agent in started:
            agent.stop(timeout=3)
