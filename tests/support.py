"""What the fault tests share: an agent that keeps its messages, and a probe."""

from __future__ import annotations

import threading
import time
from typing import Any, List

from mas_sync import Agent, AgentMessage, MASConnectionError

#: Fast heartbeats and a short retry window, for tests that break Redis.
FAST = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)


class Inbox(Agent):
    """Keeps every message; answers a request with ``{"pong": <its token>}``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.got: List[AgentMessage] = []

    def on_message(self, message: AgentMessage) -> None:
        if message.expects_reply:
            message.reply({"pong": message.payload.get("token")})
        with self.lock:
            self.got.append(message)

    def payloads(self) -> List[dict]:
        with self.lock:
            return [m.payload for m in self.got]


def flows(sender: Agent, receiver: Inbox, token: str, within: float = 0.5) -> bool:
    """Send ``token`` and report whether it arrives (sending may fail while Redis is down)."""
    try:
        sender.send(receiver.id, {"token": token})
    except MASConnectionError:
        return False
    deadline = time.monotonic() + within
    pause = threading.Event()
    while time.monotonic() < deadline:
        if {"token": token} in receiver.payloads():
            return True
        pause.wait(0.02)
    return False


class Blocking(Agent):
    """Each handler sets ``entered`` and waits until ``release`` is set (30 s at most)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        self.entered.set()
        self.release.wait(30)
