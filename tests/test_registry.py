"""Discovery through the registration hashes."""

from __future__ import annotations

import pytest

from mas_sync import AgentRegistry


def test_discover_by_capability_and_all(make_agent) -> None:
    a = make_agent("a", capabilities=["nlp", "text"])
    make_agent("b", capabilities=["vision"])
    make_agent("c", capabilities=["nlp"])
    assert [x["id"] for x in a.discover(capabilities=["nlp"])] == ["a", "c"]
    assert [x["id"] for x in a.discover(["vision", "text"])] == ["a", "b"]
    assert [x["id"] for x in a.discover()] == ["a", "b", "c"]
    assert a.discover(["none"]) == []
    assert a.discover(["nlp"])[0] == {"id": "a", "capabilities": ["nlp", "text"], "metadata": {}}


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
    pipe.execute()
    found = registry.discover(["even"])
    assert len(found) == 1250
    assert [x["id"] for x in found] == sorted(x["id"] for x in found)
    assert len(registry.discover()) == 2500
