"""Discovery through the registration hashes."""

from __future__ import annotations

import json
import time

import pytest

from mas_sync import AgentIdInUseError, AgentRegistry
from mas_sync.testing import wait_until

from .conftest import read_message


def test_discover_by_capability_and_all(make_agent) -> None:
    a = make_agent("a", capabilities=["nlp", "text"])
    make_agent("b", capabilities=["vision"])
    make_agent("c", capabilities=["nlp"])
    assert [x["id"] for x in a.discover(capabilities=["nlp"])] == ["a", "c"]
    assert [x["id"] for x in a.discover(["vision", "text"])] == ["a", "b"]
    assert [x["id"] for x in a.discover()] == ["a", "b", "c"]
    assert a.discover(["none"]) == []
    assert a.discover(["nlp"])[0] == {"id": "a", "capabilities": ["nlp", "text"], "metadata": {},
                                      "delivery": "pubsub", "instances": 1}


def test_discover_returns_metadata(make_agent) -> None:
    class Meta(make_agent("x", start=False).__class__):
        def get_metadata(self) -> dict:
            return {"version": "1.0.0", "region": "eu"}

    agent = make_agent("meta", cls=Meta, capabilities=["m"])
    assert agent.discover(["m"])[0]["metadata"] == {"version": "1.0.0", "region": "eu"}


def test_discover_skips_inactive_and_malformed_entries(make_agent, r) -> None:
    agent = make_agent("live", capabilities=["x"])
    r.hset("agent:dead", mapping={"id": "dead", "capabilities": '["x"]', "metadata": "{}", "status": "INACTIVE"})
    r.hset("agent:broken", mapping={"id": "broken", "capabilities": "{not json", "status": "ACTIVE"})
    r.hset("agent:half", mapping={"status": "ACTIVE"})
    r.set("agent:stringkey", "not a hash")
    r.set("agent:other:heartbeat", "1")
    r.hset("agent:live:extra", mapping={"id": "extra", "capabilities": '["x"]', "status": "ACTIVE"})
    r.hset("agent:badmeta", mapping={"id": "badmeta", "capabilities": '["x"]', "metadata": "[1",
                                     "status": "ACTIVE"})
    assert [x["id"] for x in agent.discover()] == ["live"]
    assert [x["id"] for x in agent.discover(["x"])] == ["live"]


def test_discover_refuses_a_bare_string(make_agent) -> None:
    agent = make_agent("a")
    with pytest.raises(TypeError, match="list of strings"):
        agent.discover("nlp")  # type: ignore[arg-type]


def test_registry_on_its_own(r) -> None:
    registry = AgentRegistry(r)
    token = registry.register("solo", ["s"], {"k": "v"}, heartbeat_ttl=5)
    assert len(token) > 20
    info = registry.get_agent("solo")
    assert info is not None
    assert info["capabilities"] == ["s"] and info["metadata"] == {"k": "v"}
    assert info["status"] == "ACTIVE" and info["registered_at"] > 0
    assert 0 < r.pttl("agent:solo:heartbeat") <= 5000
    r.hset("agent.state:solo", "x", "1")
    registry.deregister("solo")
    assert registry.get_agent("solo") is None
    assert r.exists("agent.state:solo")
    registry.register("solo", ["s"])
    registry.deregister("solo", keep_state=False)
    assert not r.exists("agent.state:solo")


def test_discover_many_agents_in_batches(r) -> None:
    registry = AgentRegistry(r)
    pipe = r.pipeline()
    for i in range(2500):
        pipe.hset(
            f"agent:n{i:05d}",
            mapping={"id": f"n{i:05d}", "capabilities": '["even"]' if i % 2 == 0 else '["odd"]',
                     "metadata": "{}", "status": "ACTIVE", "token": "t", "registered_at": "1"},
        )
        pipe.set(f"agent:n{i:05d}:heartbeat", "1", ex=60)
    pipe.execute()
    found = registry.discover(["even"])
    assert len(found) == 1250
    assert [x["id"] for x in found] == sorted(x["id"] for x in found)
    assert len(registry.discover()) == 2500


# -- liveness: the heartbeat key decides (issue 9, items 8 and 9) ---------------------


def _registration(r, agent_id: str, registered_at: float, caps: str = '["x"]') -> None:
    r.hset(f"agent:{agent_id}", mapping={
        "id": agent_id, "capabilities": caps, "metadata": "{}", "status": "ACTIVE",
        "token": f"token-{agent_id}", "registered_at": str(registered_at)})


def test_discover_leaves_out_agents_whose_heartbeat_is_gone(make_agent, r) -> None:
    # No MASService: discover() alone must not return a dead registration.
    agent = make_agent("live", capabilities=["x"])
    _registration(r, "killed", time.time() - 5)  # SIGKILLed: no heartbeat key any more
    _registration(r, "fading", time.time() - 5)
    r.set("agent:fading:heartbeat", "1", px=300)
    assert [x["id"] for x in agent.discover(["x"])] == ["fading", "live"]
    wait_until(lambda: [x["id"] for x in agent.discover(["x"])] == ["live"], 5,
               message="the expired heartbeat takes the agent out of discovery")
    assert [x["id"] for x in agent.discover()] == ["live"]


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_a_skewed_registered_at_changes_nothing_in_discovery(make_agent, r, skew) -> None:
    # registered_at comes from the agent's clock; discovery must not read it.
    agent = make_agent("observer")
    _registration(r, "skewed", time.time() + skew)
    r.set("agent:skewed:heartbeat", "1", px=300)
    assert [x["id"] for x in agent.discover(["x"])] == ["skewed"]
    started = time.monotonic()
    wait_until(lambda: agent.discover(["x"]) == [], 5, message="dropped with its heartbeat")
    assert time.monotonic() - started < 1.5


def test_discover_on_the_registry_alone_checks_heartbeats(r) -> None:
    registry = AgentRegistry(r)
    registry.register("beating", ["s"], heartbeat_ttl=5)
    registry.register("async-style", ["s"])  # registered; its first heartbeat not written yet
    assert [x["id"] for x in registry.discover(["s"])] == ["beating"]
    registry.update_heartbeat("async-style", ttl=5)
    assert [x["id"] for x in registry.discover(["s"])] == ["async-style", "beating"]


# -- pruning dead registrations (issue 9, item 8) ---------------------------------------


def test_prune_dead_removes_registrations_whose_heartbeat_stays_gone(r) -> None:
    registry = AgentRegistry(r)
    registry.register("alive", ["s"], heartbeat_ttl=30)
    _registration(r, "dead", time.time() + 3600)  # a skewed clock changes nothing
    r.hset("agent:dead", "status", "INACTIVE")
    _registration(r, "back", time.time())
    r.hset("agent.state:dead", "kept", "1")
    assert registry.prune_dead(0.5) == ["back", "dead"]
    assert r.pttl("agent:alive") == -1
    assert 0 < r.pttl("agent:dead") <= 500
    # "back" beats again before its time is up: the next pass keeps it.
    r.set("agent:back:heartbeat", "1", ex=30)
    assert registry.prune_dead(0.5) == []
    assert r.pttl("agent:back") == -1
    wait_until(lambda: not r.exists("agent:dead"), 5, message="Redis removes the dead one")
    assert r.exists("agent:alive") and r.exists("agent:back")
    assert r.exists("agent.state:dead")  # state survives, as with a clean stop


def test_prune_dead_checks_its_argument(r) -> None:
    registry = AgentRegistry(r)
    for bad in (0, -1, float("nan"), "10", True):
        with pytest.raises((TypeError, ValueError)):
            registry.prune_dead(bad)  # type: ignore[arg-type]


def test_remove_dead_removes_at_once_as_a_deregistration_does(r) -> None:
    registry = AgentRegistry(r)
    registry.register("alive", ["s"], heartbeat_ttl=30)
    _registration(r, "dead", time.time() + 3600)  # a skewed clock changes nothing
    r.hset("agent:dead", "status", "INACTIVE")
    _registration(r, "gone", time.time())
    r.hset("agent.state:dead", "kept", "1")
    r.hset("agent:dead:stats", "run", "{}")
    pubsub = r.pubsub()
    pubsub.subscribe("mas.system")
    pubsub.get_message(timeout=1)
    assert registry.remove_dead(dry_run=True) == ["dead", "gone"]
    assert r.exists("agent:dead", "agent:gone") == 2  # a dry run writes nothing
    assert registry.remove_dead() == ["dead", "gone"]
    assert not r.exists("agent:dead") and not r.exists("agent:gone")
    assert not r.exists("agent:dead:stats")
    assert r.exists("agent:alive") and r.exists("agent.state:dead")  # state survives
    events = sorted(json.loads(read_message(pubsub)["data"])["agent_id"] for _ in range(2))
    assert events == ["dead", "gone"]
    pubsub.close()
    assert registry.remove_dead() == []


def test_remove_dead_older_than_keeps_recent_signs_of_life(r) -> None:
    registry = AgentRegistry(r)
    _registration(r, "old", time.time() - 600)
    _registration(r, "counted", time.time() - 600)
    r.hset("agent:counted:stats", "run", json.dumps({
        "at": time.time() - 5, "interval": 1, "pending": 0, "in_progress": 0,
        "counters": {}, "rates": {}}))
    _registration(r, "young", time.time() - 5)
    assert registry.remove_dead(60) == ["old"]
    assert r.exists("agent:counted") and r.exists("agent:young")
    assert registry.remove_dead(1) == ["counted", "young"]
    for bad in (0, -1, float("nan"), "10", True):
        with pytest.raises((TypeError, ValueError)):
            registry.remove_dead(bad)  # type: ignore[arg-type]


def test_remove_dead_checks_again_as_it_removes(r) -> None:
    registry = AgentRegistry(r)
    _registration(r, "back", time.time())
    token = r.hget("agent:back", "token") or ""
    r.set("agent:back:heartbeat", "1", ex=30)  # it beat again since it was judged
    assert not registry._remove_one("back", token)
    r.delete("agent:back:heartbeat")
    assert not registry._remove_one("back", "another run's token")
    assert r.exists("agent:back")
    assert registry._remove_one("back", token)
    assert not r.exists("agent:back")


# -- identity: one live registration per id (issue 9, item 10) ---------------------------


def test_register_refuses_an_id_that_is_live(r) -> None:
    registry = AgentRegistry(r)
    first = registry.register("solo", ["s"], heartbeat_ttl=30)
    with pytest.raises(AgentIdInUseError, match="'solo'.*take_over=True") as caught:
        registry.register("solo", ["other"], heartbeat_ttl=30)
    assert caught.value.agent_id == "solo"
    assert 0 < caught.value.expires_in <= 30
    assert r.hget("agent:solo", "token") == first
    assert r.hget("agent:solo", "capabilities") == '["s"]'
    second = registry.register("solo", ["other"], heartbeat_ttl=30, take_over=True)
    assert r.hget("agent:solo", "token") == second != first


def test_register_replaces_a_dead_registration(r) -> None:
    registry = AgentRegistry(r)
    _registration(r, "phoenix", time.time())  # no heartbeat: its agent is dead
    token = registry.register("phoenix", ["s"], heartbeat_ttl=30)
    assert r.hget("agent:phoenix", "token") == token


def test_renewal_keeps_to_the_run_that_owns_the_registration(r) -> None:
    registry = AgentRegistry(r)
    mine = registry.register("me", ["s"], heartbeat_ttl=30)
    r.delete("agent:me")  # lost (a Redis restart, say); my heartbeat still there
    assert registry.register("me", ["s"], heartbeat_ttl=30, token=mine) == mine
    theirs = registry.register("me", ["s"], heartbeat_ttl=30, take_over=True)
    with pytest.raises(AgentIdInUseError):
        registry.register("me", ["s"], heartbeat_ttl=30, token=mine)
    assert r.hget("agent:me", "token") == theirs


def test_deregister_with_a_token_leaves_another_runs_registration(r) -> None:
    registry = AgentRegistry(r)
    old = registry.register("shared", ["s"], heartbeat_ttl=30)
    new = registry.register("shared", ["s"], heartbeat_ttl=30, take_over=True)
    assert registry.deregister("shared", token=old) is False
    assert r.hget("agent:shared", "token") == new and r.exists("agent:shared:heartbeat")
    assert registry.deregister("shared", token=new) is True
    assert not r.exists("agent:shared") and not r.exists("agent:shared:heartbeat")


def test_a_running_agent_removes_a_prune_ttl_on_its_next_beat(make_agent, r) -> None:
    make_agent("lively")
    r.pexpire("agent:lively", 60_000)  # as a prune pass does while a heartbeat is missing
    wait_until(lambda: r.pttl("agent:lively") == -1, 5, message="the next beat keeps it")
