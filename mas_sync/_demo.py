"""A small multi-agent system that runs on its own: ``python -m mas_sync demo``."""

from __future__ import annotations

import threading
from typing import Dict, List, Optional

from ._agent import Agent
from ._message import AgentMessage
from ._service import MASService
from .testing import local_redis


class Adder(Agent):
    """Answers ``{"action": "add", "a": x, "b": y}`` with the sum, and counts."""

    def on_message(self, message: AgentMessage) -> None:
        if message.payload.get("action") == "add":
            total = message.payload["a"] + message.payload["b"]
            done = int(self.state.get("done", "0")) + 1
            self.update_state({"done": done})
            self.send(message.sender_id, {"task": message.payload["task"], "sum": total})


class Coordinator(Agent):
    """Hands out tasks to the agents that can add, and collects the answers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.answers: Dict[int, AgentMessage] = {}
        self.all_in = threading.Event()
        self.expected = 0
        self._answers_lock = threading.Lock()

    def on_message(self, message: AgentMessage) -> None:
        with self._answers_lock:
            self.answers[message.payload["task"]] = message
            if len(self.answers) == self.expected:
                self.all_in.set()


def run(redis_url: Optional[str] = None, tasks: int = 6) -> int:
    """Run the demo and print what happens; returns the exit status."""
    with local_redis(redis_url) as url:
        where = url if redis_url else f"{url} (a private redis-server)"
        print(f"mas_sync demo: Redis at {where}")
        with MASService(url), Adder("adder-1", ["math"], url) as a1, Adder(
            "adder-2", ["math"], url
        ) as a2, Coordinator("coordinator", ["planning"], url) as boss:
            found = boss.discover(capabilities=["math"])
            names: List[str] = [agent["id"] for agent in found]
            print(f"coordinator discovered {names} by capability 'math'")
            boss.expected = tasks
            for task in range(tasks):
                target = names[task % len(names)]
                a, b = task, task * 10
                print(f"coordinator -> {target}: add {a} + {b}")
                boss.send(target, {"action": "add", "task": task, "a": a, "b": b})
            if not boss.all_in.wait(10.0):
                print(f"only {len(boss.answers)} of {tasks} answers arrived")
                return 1
            for task in sorted(boss.answers):
                answer = boss.answers[task]
                print(f"{answer.sender_id} -> coordinator: task {task} = {answer.payload['sum']}")
            print(
                f"state in Redis: adder-1 did {a1.state['done']} tasks,"
                f" adder-2 did {a2.state['done']}"
            )
        left = [t.name for t in threading.enumerate() if t.name.startswith("mas-")]
        print(f"stopped 3 agents and the service; threads left: {left or 'none'}")
    return 0
