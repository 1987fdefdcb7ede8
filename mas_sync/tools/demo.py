"""A small multi-agent system that runs on its own: ``python -m mas_sync demo``."""

from __future__ import annotations

import contextlib
import threading
from typing import Optional

from pydantic import BaseModel

from .. import Agent, AgentMessage, MASService, RequestError, handler, stop_on_signals
from .._redis import redact_url
from ..testing import local_redis


class AddTask(BaseModel):
    a: int
    b: int


class Adder(Agent):
    """Answers ``{"action": "add", "a": x, "b": y}`` with the sum, and counts its work."""

    @handler("add")
    def add(self, message: AgentMessage, task: AddTask) -> dict:
        done = int(self.state.get("done", "0")) + 1
        self.update_state({"done": done})
        return {"sum": task.a + task.b}


def run(redis_url: Optional[str] = None, tasks: int = 6) -> int:
    """Run the demo and print what happens; returns the exit status.

    Run from the main thread, a first SIGTERM or SIGINT stops the demo cleanly
    (agents deregister, the service and a private server stop) and exits 0.
    """
    signals = (
        stop_on_signals()
        if threading.current_thread() is threading.main_thread()
        else contextlib.nullcontext()
    )
    with signals, local_redis(redis_url) as url:
        where = redact_url(url) if redis_url else f"{url} (a private redis-server)"
        print(f"mas_sync demo: Redis at {where}")
        with MASService(url), Adder("adder-1", ["math"], url) as a1, Adder(
            "adder-2", ["math"], url
        ) as a2, Agent("coordinator", ["planning"], url) as boss:
            names = [agent["id"] for agent in boss.discover(capabilities=["math"])]
            print(f"coordinator discovered {names} by capability 'math'")
            for task in range(tasks):
                target = names[task % len(names)]
                a, b = task, task * 10
                reply = boss.request(target, {"action": "add", "a": a, "b": b}, timeout=5)
                print(f"coordinator asked {target}: {a} + {b} = {reply.payload['sum']}")
            try:
                boss.request(names[0], {"action": "add", "a": "one"}, timeout=5)
            except RequestError as exc:
                print(f"an invalid request is refused at once: {exc.kind}")
            print(
                f"state in Redis: adder-1 did {a1.state['done']} tasks,"
                f" adder-2 did {a2.state['done']}"
            )
        left = [t.name for t in threading.enumerate() if t.name.startswith("mas-")]
        print(f"stopped 3 agents and the service; threads left: {left or 'none'}")
    return 0
