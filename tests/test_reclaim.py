"""Reliable delivery: how fast the entries of a crashed instance are taken by another."""

from __future__ import annotations

import threading
import time
from typing import Any, Set

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
