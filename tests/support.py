"""What the tests share: agents kept to stop, an agent that keeps its messages, a probe,
forks and held locks."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
import warnings
from typing import Any, Callable, List, Optional

import redis

from mas_sync import Agent, AgentMessage, MASConnectionError
from mas_sync._redis import CLUSTER_MIN_REDIS_PY

#: Fast heartbeats and a short retry window, for tests that break Redis.
FAST = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)

#: Whether the installed redis-py runs cluster mode (8.1 and newer).
REDIS_PY_RUNS_CLUSTER = (
    tuple(int(p) for p in redis.__version__.split(".")[:2]) >= CLUSTER_MIN_REDIS_PY[:2]
)


def start(agents: List[Agent], agent: Agent) -> Any:
    """Start ``agent`` and keep it in ``agents`` (the ``agents`` fixture stops them)."""
    agents.append(agent)
    agent.start()
    return agent


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


class Forked:
    """A child process made by ``os.fork()`` that runs ``body`` and exits with its result.

    The child exits with ``body()``'s return value (1 if it raised) through
    ``os._exit``: no atexit handler, no pytest teardown runs in it. The parent
    waits with a deadline and kills a child that does not finish.
    """

    def __init__(self, body: Callable[[], int]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
            self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                code = body()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.status: Optional[int] = None

    def wait(self, timeout: float) -> Optional[int]:
        """The child's exit code; None if it had to be killed after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
            pause.wait(0.02)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return None


class HeldLocks:
    """A thread that holds ``locks`` until :meth:`release` (30 s at most)."""

    def __init__(self, *locks: Any) -> None:
        self.locks = locks
        self.held = threading.Event()
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._hold, name="test-lock-holder", daemon=True)
        self.thread.start()
        assert self.held.wait(5), "could not take the locks"

    def _hold(self) -> None:
        for lock in self.locks:
            lock.acquire()
        self.held.set()
        self._release.wait(30)
        for lock in reversed(self.locks):
            lock.release()

    def release(self) -> None:
        self._release.set()
        self.thread.join(5)
