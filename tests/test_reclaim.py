"""Reliable delivery: how fast the entries of a crashed instance are taken by another."""

from __future__ import annotations

import threading
import time
from typing import Any, Set

import pytest
import redis

from mas_sync import Agent, AgentMessage
from mas_sync._wire import frame_message
from mas_sync.testing import wait_until


class Counter(Agent):
    """Keeps the ``n`` of every message it handles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.handled: Set[int] = set()

    def on_message(self, message: AgentMessage) -> None:
        with self.lock:
            self.handled.add(message.payload["n"])

    def count(self, wanted: Set[int]) -> int:
        with self.lock:
            return len(self.handled & wanted)


@pytest.mark.slow
def test_every_idle_entry_is_taken_in_one_pass_before_new_ones(
    make_agent: Any, r: redis.Redis
) -> None:
    # A crashed instance held 500 entries (more than one XAUTOCLAIM page),
    # and 2,000 new entries wait behind them.
    worker = make_agent("worker", Counter, delivery="reliable", instance="first")
    worker.stop()
    pipe = r.pipeline(transaction=False)
    for n in range(500):
        pipe.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", f'{{"n":{n}}}')})
    pipe.execute()
    r.xreadgroup("agents", "worker-dead", {"agent.stream:worker": ">"}, count=500)
    for n in range(500, 2500):
        pipe.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", f'{{"n":{n}}}')})
    pipe.execute()
    idle_from = time.monotonic()
    again = make_agent("worker", Counter, delivery="reliable", instance="second",
                       visibility_timeout=0.5)
    held = set(range(500))
    wait_until(lambda: again.count(held) == 500, timeout=20, message="idle entries not taken")
    took = time.monotonic() - idle_from
    # One claim pass after the visibility timeout takes them all; one page of
    # 100 a second took five.
    assert took < 0.5 + 1.0 + 1.0, f"took {took:.2f} s"
    assert again.stats.reclaimed == 500
    wait_until(lambda: again.count(set(range(2500))) == 2500, message="new entries not handled")


@pytest.mark.slow
def test_a_stop_does_not_hand_over_a_message_its_handler_still_handles(
    make_agent: Any, r: redis.Redis
) -> None:
    """A handler still running past stop(timeout): its message used to be handed
    over with the rest, and another instance handled it at the same time."""
    release = threading.Event()

    class Slow(Agent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.busy = threading.Event()

        def on_message(self, message: AgentMessage) -> None:
            self.busy.set()
            release.wait(10)

    try:
        a = make_agent("worker", Slow, delivery="reliable", instance="a", visibility_timeout=5.0)
        r.xadd("agent.stream:worker", {"envelope": frame_message("x", "worker", '{"n":1}')})
        assert a.busy.wait(5)
        b = make_agent("worker", Slow, delivery="reliable", instance="b", visibility_timeout=5.0)
        a.stop(timeout=0.2)  # leaves its handler running
        # Two claim passes of b: the entry is not idle to it (visibility 5 s).
        assert not b.busy.wait(2.5), "handled by b while a's handler runs"
    finally:
        release.set()


def xack_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_xack", {}).get("calls", 0))


def test_acknowledgements_of_a_backlog_go_in_batches(make_agent: Any, r: redis.Redis) -> None:
    # 1,000 messages of one sender wait: one worker handles them in order.
    worker = make_agent("worker", Counter, delivery="reliable", instance="one")
    worker.stop()
    pipe = r.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", f'{{"n":{n}}}')})
    pipe.execute()
    r.config_resetstat()
    again = make_agent("worker", Counter, delivery="reliable", instance="one")
    wait_until(lambda: again.count(set(range(1000))) == 1000, message="not handled")
    wait_until(lambda: int(r.xpending("agent.stream:worker", "agents")["pending"]) == 0,
               message="not acknowledged")
    # One XACK per message made the worker wait a round trip for each.
    assert xack_calls(r) <= 100


def test_an_acknowledgement_waits_little_behind_a_busy_sender(
    make_agent: Any, r: redis.Redis
) -> None:
    gate = threading.Event()

    class Gated(Counter):
        def on_message(self, message: AgentMessage) -> None:
            if message.sender_id == "slow":
                gate.wait(10)
            super().on_message(message)

    worker = make_agent("worker", Gated, delivery="reliable", instance="one")
    slow, quick = make_agent("slow"), make_agent("quick")
    try:
        for n in range(5):
            slow.send("worker", {"n": 1000 + n})  # the first blocks a worker, four wait
        wait_until(lambda: int(r.xpending("agent.stream:worker", "agents")["pending"]) == 5,
                   message="not read")
        for n in range(20):
            quick.send("worker", {"n": n})
        wait_until(lambda: worker.count(set(range(20))) == 20, message="not handled")
        # Messages still wait for a worker, yet what was handled is acknowledged.
        wait_until(lambda: int(r.xpending("agent.stream:worker", "agents")["pending"]) == 5,
                   timeout=2.0, message="handled messages not acknowledged")
    finally:
        gate.set()
    wait_until(lambda: int(r.xpending("agent.stream:worker", "agents")["pending"]) == 0,
               message="not acknowledged")


def test_a_short_visibility_timeout_is_checked_more_often_than_every_second(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Counter, delivery="reliable", instance="first")
    worker.stop()
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"n":7}')})
    r.xreadgroup("agents", "worker-dead", {"agent.stream:worker": ">"})
    (entry_id,) = [p["message_id"] for p in r.xpending_range("agent.stream:worker", "agents", "-", "+", 10)]
    # Idle for 0.8 s already: it may be taken 0.2 s from now; a claim pass
    # at start is too early for it, and the next came a second later.
    r.xclaim("agent.stream:worker", "agents", "worker-dead", 0, [entry_id], idle=800, justid=True)
    started = time.monotonic()
    again = make_agent("worker", Counter, delivery="reliable", instance="second",
                       visibility_timeout=1.0)
    wait_until(lambda: again.count({7}) == 1, timeout=5, message="idle entry not taken")
    took = time.monotonic() - started
    assert took < 0.75, f"took {took:.2f} s"
