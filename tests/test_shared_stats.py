"""Each agent's counters in Redis (``agent:{id}:stats``), read without its process."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

import redis

from mas_sync import Agent, AgentMessage
from mas_sync._shared_stats import STATS_TTL, read_stats
from mas_sync._stats import TIMING_BOUNDS
from mas_sync.testing import wait_until

RELIABLE = dict(delivery="reliable", visibility_timeout=2.0)


class Slow(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        if message.payload.get("hold"):
            self.release.wait(5)


def test_an_agent_writes_its_counters_on_each_heartbeat(
    make_agent: Callable[..., Any], r: redis.Redis
) -> None:
    receiver = make_agent("receiver", Slow)
    sender = make_agent("sender")
    for n in range(5):
        sender.send("receiver", {"n": n})
    sender.send("receiver", {"hold": True})
    stats = wait_until(
        lambda: (s := read_stats(r, "receiver")) is not None
        and s.counters.get("handled") == 5 and s.in_progress == 1 and s,
        5, message="the counters of the receiver in Redis",
    )
    assert stats.counters["received"] == 6
    assert stats.counters["handler_errors"] == 0
    assert stats.runs == stats.fresh == 1
    assert stats.counters["handler_seconds"] >= 0
    assert 0 < r.ttl("agent:receiver:stats") <= STATS_TTL
    receiver.release.set()
    wait_until(lambda: read_stats(r, "receiver").in_progress == 0, 5)  # type: ignore[union-attr]
    # The rates: what came since the write before.
    for n in range(20):
        sender.send("receiver", {"n": n})
    wait_until(lambda: read_stats(r, "receiver").rates["received"] > 0, 5)  # type: ignore[union-attr]


def test_a_clean_stop_removes_the_counters(make_agent: Callable[..., Any], r: redis.Redis) -> None:
    agent = make_agent("brief")
    wait_until(lambda: r.exists("agent:brief:stats"), 5)
    agent.stop()
    assert not r.exists("agent:brief:stats")
    assert read_stats(r, "brief") is None


def test_the_instances_of_a_reliable_agent_each_write_and_are_summed(
    make_agent: Callable[..., Any], r: redis.Redis
) -> None:
    a = make_agent("worker", instance="a", **RELIABLE)
    b = make_agent("worker", instance="b", **RELIABLE)
    sender = make_agent("sender")
    for n in range(40):
        sender.send("worker", {"n": n})
    wait_until(lambda: a.stats.handled + b.stats.handled == 40, 5)
    stats = wait_until(
        lambda: (s := read_stats(r, "worker")) is not None and s.counters.get("handled") == 40 and s,
        5, message="both instances' counters",
    )
    assert sorted(r.hkeys("agent:worker:stats")) == ["a", "b"]
    assert stats.runs == 2
    b.stop()
    assert r.hkeys("agent:worker:stats") == ["a"]


def test_records_that_are_not_ours_are_skipped(make_agent: Callable[..., Any], r: redis.Redis) -> None:
    make_agent("mixed")
    wait_until(lambda: r.exists("agent:mixed:stats"), 5)
    r.hset("agent:mixed:stats", mapping={
        "junk": "not json", "list": "[1]", "nan": json.dumps({"at": "x"}), "deep": "[" * 100_000,
        "half": json.dumps({"at": 1.0, "interval": 1, "pending": 0, "in_progress": 0,
                            "counters": {"received": "many", "handled": 3}}),
    })
    stats = read_stats(r, "mixed")
    assert stats is not None and stats.runs == 2  # ours, and "half" (its bad counter dropped)
    assert stats.fresh == 1


def test_handler_times_and_request_round_trips_are_timed(make_agent: Callable[..., Any]) -> None:
    class Echo(Agent):
        def on_message(self, message: AgentMessage) -> Any:
            return {"ok": True}

    make_agent("echo", Echo)
    asker = make_agent("asker")
    for _ in range(3):
        asker.request("echo", {}, timeout=5)
    timing = asker._mas_counters.timings()["request"]
    assert timing.count == 3 and timing.total > 0
    assert len(timing.counts) == len(TIMING_BOUNDS) + 1


def test_the_overview_lists_agents_with_liveness_and_counters(
    make_agent: Callable[..., Any], r: redis.Redis, redis_url: str
) -> None:
    from mas_sync._overview import agent_view, list_agents

    class Versioned(Agent):
        def get_metadata(self) -> Any:
            return {"v": 1}

    make_agent("alpha", Versioned, capabilities=["math"])
    make_agent("beta", capabilities=["text"], instance="b1", **RELIABLE)
    gone = make_agent("gone", capabilities=["math"])
    wait_until(lambda: all(v.stats is not None for v in list_agents(r)), 5)
    views = {v.id: v for v in list_agents(r)}
    assert sorted(views) == ["alpha", "beta", "gone"]
    alpha = views["alpha"]
    assert (alpha.status, alpha.stale, alpha.delivery, alpha.metadata) == ("ACTIVE", False, "pubsub", {"v": 1})
    assert 0 <= alpha.heartbeat_age() < 5  # type: ignore[operator]
    assert (views["beta"].delivery, views["beta"].instances) == ("reliable", 1)
    assert [v.id for v in list_agents(r, capability="math")] == ["alpha", "gone"]
    # An agent that dies without deregistering turns stale when its heartbeat expires.
    gone._mas_run.heartbeat.stop()  # beats no more, as if killed
    r.delete("agent:gone:heartbeat")
    view = agent_view(r, "gone")
    assert view is not None and view.stale and view.heartbeat_age() is None
    r.hset("agent:gone", "status", "INACTIVE")
    assert [v.id for v in list_agents(r)] == ["alpha", "beta"]
    assert [v.id for v in list_agents(r, include_inactive=True)] == ["alpha", "beta", "gone"]
    assert agent_view(r, "nobody") is None
    assert list_agents(r)[0].to_json()["stats"]["counters"]["received"] == 0


def test_the_overview_reads_a_cluster(cluster: Any, make_agent: Callable[..., Any]) -> None:
    from mas_sync._overview import agent_view, list_agents
    from mas_sync._redis import close_client, make_client

    for n in range(6):
        make_agent(f"node{n}", redis_url=cluster.url, capabilities=["c"],
                   **(RELIABLE if n % 2 else {}))
    client = make_client(cluster.url, 4)
    try:
        views = wait_until(
            lambda: (v := list_agents(client)) and all(x.stats is not None for x in v)
            and len(v) == 6 and v, 10,
        )
        assert [v.id for v in views] == [f"node{n}" for n in range(6)]
        assert [v.delivery for v in views] == ["pubsub", "reliable"] * 3
        assert all(v.instances == 1 and not v.stale for v in views)
        view = agent_view(client, "node1")
        assert view is not None and view.delivery == "reliable" and view.instances == 1
    finally:
        close_client(client)
