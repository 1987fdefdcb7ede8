"""The opt-in discovery cache: a copy of the registry kept fresh by ``mas.system``."""

from __future__ import annotations

import time
from typing import Any, List

import pytest
import redis

from mas_sync import Agent, AgentNotRunningError, AgentRegistry
from mas_sync.testing import RedisServer, wait_until

from .conftest import FAST


def _ids(found: List[Any]) -> List[str]:
    return [entry["id"] for entry in found]


def _cache(agent: Agent) -> Any:
    return agent._mas_run.discovery_cache  # type: ignore[union-attr]


def test_a_new_agent_appears_and_a_stopped_one_leaves(make_agent) -> None:
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=True)
    wait_until(lambda: _ids(watcher.discover()) == ["watcher"], 5)
    started = time.monotonic()
    newcomer = make_agent("newcomer", capabilities=["n"])
    wait_until(lambda: "newcomer" in _ids(watcher.discover(["n"])), 5,
               message="the new agent in the cache's answer")
    assert time.monotonic() - started < 1.0
    assert _cache(watcher).valid, "answered by the cache, not by Redis"
    newcomer.stop()
    started = time.monotonic()
    wait_until(lambda: _ids(watcher.discover()) == ["watcher"], 5,
               message="the stopped agent out of the cache's answer")
    assert time.monotonic() - started < 1.0


def test_answers_from_the_cache_without_reading_redis(make_agent, r) -> None:
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=60.0)
    wait_until(lambda: _cache(watcher).valid, 5)
    # Written without an announcement: only a full read would find it.
    r.hset("agent:quiet", mapping={"id": "quiet", "capabilities": '["w"]', "metadata": "{}",
                                   "status": "ACTIVE", "token": "t", "registered_at": "1"})
    r.set("agent:quiet:heartbeat", "1", ex=60)
    assert _ids(watcher.discover(["w"])) == ["watcher"]


def test_a_hostile_event_leaves_no_stale_answer(make_agent, r) -> None:
    """Anyone may publish on mas.system. JSON nested too deep for the parser
    used to restart the cache's listener without invalidating the copy: the
    DEREGISTER published meanwhile was lost, and the stopped agent stayed in
    the answers until the next full read (here, in a minute)."""
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=60.0)
    leaving = make_agent("leaving", capabilities=["x"])
    wait_until(lambda: _ids(watcher.discover(["x"])) == ["leaving"], 5)
    r.publish("mas.system", b"[" * 100_000)
    leaving.stop()
    wait_until(lambda: _ids(watcher.discover(["x"])) == [], 5,
               message="the stopped agent out of the answer")
    # The next event is heard as always.
    make_agent("coming", capabilities=["x"])
    wait_until(lambda: _ids(watcher.discover(["x"])) == ["coming"], 5,
               message="a new agent in the answer")


@pytest.mark.slow
def test_a_killed_agent_leaves_at_the_refresh(make_agent, r) -> None:
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=0.3)
    registry = AgentRegistry(r)
    registry.register("doomed", ["x"], heartbeat_ttl=60)
    wait_until(lambda: "doomed" in _ids(watcher.discover()), 5)
    r.delete("agent:doomed:heartbeat")  # it dies: no DEREGISTER
    wait_until(lambda: "doomed" not in _ids(watcher.discover()), 5,
               message="the dead agent out of the cache")
    assert r.exists("agent:doomed"), "the registration is still there: the heartbeat decided"


@pytest.mark.slow
def test_marked_inactive_leaves_at_the_refresh(make_agent, r) -> None:
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=0.3)
    AgentRegistry(r).register("sleepy", ["x"], heartbeat_ttl=60)
    wait_until(lambda: "sleepy" in _ids(watcher.discover()), 5)
    r.hset("agent:sleepy", "status", "INACTIVE")
    wait_until(lambda: "sleepy" not in _ids(watcher.discover()), 5)


def test_capabilities_and_metadata_changes_show(make_agent, r) -> None:
    watcher = make_agent("watcher", capabilities=["w"], discovery_cache=60.0)
    registry = AgentRegistry(r)
    registry.register("shifty", ["x"], {"v": 1}, heartbeat_ttl=60)
    wait_until(lambda: _ids(watcher.discover(["x"])) == ["shifty"], 5)
    registry.register("shifty", ["y"], {"v": 2}, heartbeat_ttl=60, take_over=True)
    wait_until(lambda: _ids(watcher.discover(["y"])) == ["shifty"], 5,
               message="the new capabilities in the cache")
    assert watcher.discover(["x"]) == []
    assert watcher.discover(["y"])[0]["metadata"] == {"v": 2}


@pytest.mark.slow
def test_same_records_as_reading_redis(make_agent, r) -> None:
    class Meta(Agent):
        def get_metadata(self) -> dict:
            return {"region": "eu", "n": [1, 2]}

    # An instance joining a reliable agent announces nothing: the count follows at the refresh.
    cached = make_agent("cached", capabilities=["a"], discovery_cache=0.3)
    plain = make_agent("plain", capabilities=["a", "b"])
    make_agent("meta", cls=Meta, capabilities=["b"])
    make_agent("rel", capabilities=["a"], delivery="reliable", instance="one")
    make_agent("rel", capabilities=["a"], delivery="reliable", instance="two")
    for wanted in (None, ["a"], ["b"], ["a", "b"], ["none"]):
        wait_until(lambda: cached.discover(wanted) == plain.discover(wanted), 5,
                   message=f"the same answer for {wanted}")
    assert [x["instances"] for x in cached.discover() if x["id"] == "rel"] == [2]
    # The records handed out are the caller's: changing one changes no later answer.
    cached.discover(["b"])[0]["id"] = "changed"
    assert _ids(cached.discover(["b"])) == ["meta", "plain"]


def test_a_redis_restart_refills_the_cache() -> None:
    with RedisServer() as server:
        raw = redis.Redis.from_url(server.url)
        watcher = Agent("watcher", ["w"], server.url, discovery_cache=60.0, **FAST)
        watcher.start()
        try:
            wait_until(lambda: _cache(watcher).valid, 5)
            raw.hset("agent:quiet", mapping={"id": "quiet", "capabilities": '["w"]',
                                             "metadata": "{}", "status": "ACTIVE", "token": "t",
                                             "registered_at": "1"})
            raw.set("agent:quiet:heartbeat", "1", ex=600)
            assert _ids(watcher.discover()) == ["watcher"]
            server.restart(keep_data=True)
            raw.close()
            # Read from Redis while the subscription is lost, then from the cache refilled.
            wait_until(lambda: _ids(watcher.discover()) == ["quiet", "watcher"], 10,
                       message="the full read after the restart")
            wait_until(lambda: _cache(watcher).valid, 10, message="the cache refilled")
            assert _ids(watcher.discover()) == ["quiet", "watcher"]
        finally:
            watcher.stop(timeout=5)


def test_discover_on_a_stopped_agent_raises(make_agent) -> None:
    agent = make_agent("gone", capabilities=["g"], discovery_cache=True)
    assert _ids(agent.discover()) == ["gone"]
    agent.stop()
    with pytest.raises(AgentNotRunningError):
        agent.discover()
    assert not [t.name for t in __import__("threading").enumerate()
                if t.name.startswith("mas-agent[gone]") and t.is_alive()]


@pytest.mark.parametrize("value, error", [("yes", TypeError), (0, ValueError),
                                          (-1.0, ValueError), (float("nan"), ValueError)])
def test_a_bad_setting_is_refused(value, error) -> None:
    with pytest.raises(error, match="discovery_cache"):
        Agent("bad", discovery_cache=value)


def test_the_cache_on_a_cluster(cluster) -> None:
    url = cluster.url
    watcher = Agent("watcher", ["w"], url, discovery_cache=True, **FAST)
    newcomer = Agent("newcomer", ["n"], url, **FAST)
    watcher.start()
    try:
        wait_until(lambda: _cache(watcher).valid, 5)
        newcomer.start()
        wait_until(lambda: _ids(watcher.discover()) == ["newcomer", "watcher"], 5)
        assert _cache(watcher).valid
        newcomer.stop()
        wait_until(lambda: _ids(watcher.discover()) == ["watcher"], 5)
    finally:
        newcomer.stop(timeout=5)
        watcher.stop(timeout=5)


@pytest.mark.slow
def test_the_cache_follows_a_sentinel_failover() -> None:
    from mas_sync.testing import SentinelGroup

    with SentinelGroup() as group:
        watcher = Agent("watcher", ["w"], group.url, discovery_cache=True, retry_timeout=1.0,
                        **FAST)
        late = Agent("late", ["l"], group.url, retry_timeout=1.0, **FAST)
        watcher.start()
        try:
            wait_until(lambda: _cache(watcher).valid, 5)
            old = group.failover()  # the old master stays up, as a replica
            wait_until(lambda: group.master_address() != old, 20, message="failover done")
            late.start()
            # The agent hears of the move on its own (a Sentinel watcher): until its
            # cache is refilled, discover() reads Redis; at the end, the cache answers.
            wait_until(lambda: _ids(watcher.discover()) == ["late", "watcher"]
                       and _cache(watcher).valid, 20,
                       message="an agent started after the failover, in the refilled cache")
        finally:
            late.stop(timeout=5)
            watcher.stop(timeout=5)
