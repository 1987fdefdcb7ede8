"""Instances of one reliable agent: several runs of one id share its registration."""

from __future__ import annotations

import json
from typing import Any, List

import pytest
import redis
from redis.cluster import RedisCluster

from mas_sync import Agent, AgentIdInUseError, AgentRegistry
from mas_sync.testing import wait_until

from .conftest import FAST

RELIABLE = dict(delivery="reliable")


def entry(agent: Agent) -> Any:
    [found] = [e for e in agent.discover() if e["id"] == agent.id]
    return found


def system_events(r: redis.Redis) -> Any:
    pubsub = r.pubsub()
    pubsub.subscribe("mas.system")
    wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, 5, message="subscribed")
    return pubsub


def drain(pubsub: Any, agent_id: str, quiet: float = 0.5) -> List[str]:
    """The event types about ``agent_id`` received until ``quiet`` seconds pass without one."""
    seen = []
    while True:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet)
        if message is None:
            return seen
        event = json.loads(message["data"])
        if event.get("agent_id") == agent_id:
            seen.append(event["type"])


@pytest.mark.slow
def test_two_and_three_instances_share_one_registration(make_agent, r) -> None:
    events = system_events(r)
    try:
        a = make_agent("worker", capabilities=["jobs"], instance="a", **RELIABLE)
        b = make_agent("worker", capabilities=["jobs"], instance="b", **RELIABLE)
        found = a.discover(["jobs"])
        assert found == [{"id": "worker", "capabilities": ["jobs"], "metadata": {},
                          "delivery": "reliable", "instances": 2}]
        assert r.hget("agent:worker", "delivery") == "reliable"
        c = make_agent("worker", capabilities=["jobs"], instance="c", **RELIABLE)
        assert entry(c)["instances"] == 3
        assert AgentRegistry(r).get_agent("worker")["instances"] == 3
        b.stop()
        assert entry(a)["instances"] == 2
        a.stop()
        assert entry(c)["instances"] == 1
        assert r.exists("agent:worker", "agent:worker:heartbeat") == 2
        c.stop()
        assert not r.exists("agent:worker") and not r.exists("agent:worker:heartbeat")
        assert drain(events, "worker") == ["REGISTER", "DEREGISTER"]
    finally:
        events.close()


def test_a_pubsub_agent_shows_one_instance(make_agent, r) -> None:
    agent = make_agent("plain", capabilities=["p"])
    assert agent.discover(["p"]) == [{"id": "plain", "capabilities": ["p"], "metadata": {},
                                      "delivery": "pubsub", "instances": 1}]
    info = AgentRegistry(r).get_agent("plain")
    assert info["delivery"] == "pubsub" and info["instances"] == 1
    assert r.hget("agent:plain", "delivery") is None


def test_a_dead_instance_drops_out_after_its_ttl(make_agent, r) -> None:
    a = make_agent("worker", capabilities=["jobs"], instance="a", **RELIABLE)
    registry = AgentRegistry(r)
    registry.register("worker", ["jobs"], heartbeat_ttl=0.5, delivery="reliable",
                      instance="ghost")
    assert entry(a)["instances"] == 2
    wait_until(lambda: entry(a)["instances"] == 1, 5, message="the ghost to drop out")
    # The live instance's beat removes the expired entry from the hash.
    wait_until(lambda: not r.hexists("agent:worker", "instance:ghost"), 5)
    assert r.hexists("agent:worker", "instance:a")
    a.stop()
    assert not r.exists("agent:worker")


def test_the_last_instance_dead_frees_the_id_for_a_new_registration(r) -> None:
    registry = AgentRegistry(r)
    first = registry.register("w", ["x"], heartbeat_ttl=0.3, delivery="reliable", instance="a")
    wait_until(lambda: not r.exists("agent:w:heartbeat"), 5)
    second = registry.register("w", ["y"], heartbeat_ttl=5, delivery="reliable", instance="b")
    assert r.hget("agent:w", "token") == second != first
    assert not r.hexists("agent:w", "instance:a")
    assert registry.get_agent("w")["capabilities"] == ["y"]
    # And a pub/sub run takes over a dead reliable registration, as any dead one.
    r.delete("agent:w:heartbeat")
    r.hdel("agent:w", "instance:b")
    registry.register("w", ["z"], heartbeat_ttl=5)
    assert r.hget("agent:w", "delivery") is None


def test_joining_leaves_the_shared_fields_alone(r) -> None:
    registry = AgentRegistry(r)
    token = registry.register("w", ["x"], {"v": 1}, heartbeat_ttl=5, delivery="reliable",
                              instance="a")
    before = {k: v for k, v in r.hgetall("agent:w").items() if not k.startswith("instance:")}
    other = registry.register("w", ["x"], {"v": 1}, heartbeat_ttl=5, delivery="reliable",
                              instance="b")
    after = {k: v for k, v in r.hgetall("agent:w").items() if not k.startswith("instance:")}
    assert other != token and after == before
    assert r.hget("agent:w", "instance:b").endswith(" " + other)


def test_a_duplicate_instance_name_is_refused(make_agent, r) -> None:
    make_agent("worker", instance="a", **RELIABLE)
    with pytest.raises(AgentIdInUseError, match="instance 'a'"):
        make_agent("worker", instance="a", **RELIABLE)
    # The default instance name ({host}-{pid}) is the same for two runs of one process.
    make_agent("dflt", **RELIABLE)
    with pytest.raises(AgentIdInUseError, match="'dflt'"):
        make_agent("dflt", **RELIABLE)
    assert [e["instances"] for e in AgentRegistry(r).discover() if e["id"] == "worker"] == [1]


def test_take_over_replaces_one_instance_only(make_agent, r) -> None:
    registry = AgentRegistry(r)
    token = registry.register("worker", ["j"], heartbeat_ttl=5, delivery="reliable",
                              instance="a")
    registry.register("worker", ["j"], heartbeat_ttl=5, delivery="reliable", instance="b")
    make_agent("worker", capabilities=["j"], instance="a", take_over=True, **RELIABLE)
    assert registry.refresh("worker", token, 5, instance="a") == "taken"
    assert registry.get_agent("worker")["instances"] == 2


@pytest.mark.parametrize("first, second", [({}, RELIABLE), (RELIABLE, {})])
def test_pubsub_and_reliable_runs_of_one_id_conflict(make_agent, first, second) -> None:
    make_agent("mixed", instance="a", **first)
    with pytest.raises(AgentIdInUseError, match="'mixed'"):
        make_agent("mixed", instance="b", **second)


def test_refresh_and_deregister_of_one_instance(r) -> None:
    registry = AgentRegistry(r)
    a = registry.register("w", ["x"], heartbeat_ttl=5, delivery="reliable", instance="a")
    b = registry.register("w", ["x"], heartbeat_ttl=5, delivery="reliable", instance="b")
    assert registry.refresh("w", a, 5, instance="a") == "ok"
    assert registry.refresh("w", b, 5, instance="a") == "taken"
    assert registry.deregister("w", token=b, instance="a") is False
    r.hset("agent.state:w", "n", "1")
    assert registry.deregister("w", keep_state=False, token=a, instance="a") is True
    assert r.exists("agent:w", "agent:w:heartbeat", "agent.state:w") == 3
    assert registry.refresh("w", a, 5, instance="a") == "gone"  # registers again: joins
    registry.register("w", ["x"], heartbeat_ttl=5, token=a, delivery="reliable", instance="a")
    assert registry.get_agent("w")["instances"] == 2
    # A pub/sub take-over replaces the registration: both instances find it taken.
    registry.register("w", ["x"], heartbeat_ttl=5, take_over=True)
    assert registry.refresh("w", a, 5, instance="a") == "taken"
    assert registry.refresh("w", b, 5, instance="b") == "taken"
    assert registry.deregister("w", token=b, instance="b") is False
    assert r.exists("agent:w")
    r.delete("agent:w")
    assert registry.refresh("w", b, 5, instance="b") == "gone"
    # The last instance takes the state with it when asked.
    b = registry.register("w", ["x"], heartbeat_ttl=5, delivery="reliable", instance="b")
    assert registry.deregister("w", keep_state=False, token=b, instance="b") is True
    assert not r.exists("agent:w", "agent:w:heartbeat", "agent.state:w")


def test_bad_delivery_and_instance_are_refused_before_writing(r) -> None:
    registry = AgentRegistry(r)
    with pytest.raises(ValueError, match="delivery"):
        registry.register("w", ["x"], delivery="streams")
    with pytest.raises(ValueError, match="instance"):
        registry.register("w", ["x"], delivery="reliable", instance="a:b")
    with pytest.raises(ValueError, match="instance"):
        registry.register("w", ["x"], instance="a")  # pub/sub agents have no instances
    assert not r.keys("agent:*")


# --- Redis Cluster -------------------------------------------------------------




def test_instances_on_a_cluster(cluster) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    agents: List[Agent] = []

    def start(instance: str, **kwargs: Any) -> Agent:
        agent = Agent("worker", ["jobs"], cluster.url, instance=instance, retry_timeout=1.0,
                      **FAST, **kwargs)
        agent.start()
        agents.append(agent)
        return agent

    try:
        a = start("a", **RELIABLE)
        b = start("b", **RELIABLE)
        assert entry(a)["instances"] == 2 and entry(a)["delivery"] == "reliable"
        with pytest.raises(AgentIdInUseError, match="instance 'a'"):
            start("a", **RELIABLE)
        with pytest.raises(AgentIdInUseError, match="'worker'"):
            start("p")
        registry = AgentRegistry(client)
        registry.register("worker", ["jobs"], heartbeat_ttl=0.5, delivery="reliable",
                          instance="ghost")
        assert registry.get_agent("worker")["instances"] == 3
        wait_until(lambda: entry(a)["instances"] == 2, 5, message="the ghost to drop out")
        b.stop()
        assert entry(a)["instances"] == 1
        a.stop()
        assert not client.exists("agent:worker") and not client.exists("agent:worker:heartbeat")
        plain = start("p")
        assert entry(plain) == {"id": "worker", "capabilities": ["jobs"], "metadata": {},
                                "delivery": "pubsub", "instances": 1}
        with pytest.raises(AgentIdInUseError, match="'worker'"):
            start("c", **RELIABLE)
    finally:
        for agent in agents:
            agent.stop(timeout=3)
        client.close()
