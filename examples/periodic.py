"""Work on a clock: a periodic method, a one-shot call_later, and how stop() ends them.

Run it as is: it uses $MAS_REDIS_URL when set, or starts a private redis-server.

    python examples/periodic.py
"""

import os
import threading
from typing import Optional

from mas_sync import Agent, AgentMessage, periodic
from mas_sync.testing import local_redis


class Monitor(Agent):
    """Reports its load every 0.2 s to a collector; the third report fails."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reports = 0

    @periodic(0.2, initial_delay=0, jitter=0.02)
    def report(self) -> None:  # runs on one of the agent's workers, never twice at once
        self.reports += 1
        if self.reports == 3:
            raise RuntimeError("the load sensor hiccuped")
        self.send("collector", {"report": self.reports})

    def on_error(self, message: Optional[AgentMessage], error: Exception) -> None:
        # message is None: a periodic method (or a call_later function) raised.
        print(f"monitor: report failed ({error}); the schedule goes on")


class Collector(Agent):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.got = []
        self.enough = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        self.got.append(message.payload["report"])
        if len(self.got) == 4:
            self.enough.set()


with local_redis(os.environ.get("MAS_REDIS_URL")) as url:
    with Collector("collector", redis_url=url) as collector:
        monitor = Monitor("monitor", redis_url=url)
        monitor.start()
        reminder = monitor.call_later(0.1, print, "monitor: a reminder, 0.1 s after start")
        forgotten = monitor.call_later(60, print, "never printed: stop() cancels it")
        collector.enough.wait(10)
        monitor.stop()
        print("collector got reports", collector.got[:4])
        print(f"monitor: {monitor.stats.scheduled_errors} run raised")
        print("the call in 60 s was cancelled by stop():", forgotten.cancelled)
