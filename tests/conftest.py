"""Fixtures: one private redis-server per session, flushed before each test."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
import redis

from mas_sync import Agent
from mas_sync.testing import LocalCluster, RedisServer, redis_version

from .support import REDIS_PY_RUNS_CLUSTER

# Fast heartbeats for tests; production defaults are 30 s and 60 s.
FAST = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)


# The fixtures below are the names the suite uses, on top of the fixtures of
# mas_sync's own pytest plugin (mas_sync/testing/pytest_plugin.py).


@pytest.fixture(scope="session")
def redis_server(mas_redis_server: RedisServer) -> RedisServer:
    return mas_redis_server


@pytest.fixture
def redis_url(mas_redis_url: str) -> str:
    """The session server's URL, flushed before each test."""
    return mas_redis_url


@pytest.fixture(scope="session")
def cluster_supported(redis_server: RedisServer) -> None:
    """Skip where mas_sync cannot run on a cluster: redis-server or redis-py too old."""
    if not REDIS_PY_RUNS_CLUSTER:
        pytest.skip(f"cluster mode needs redis-py 8.1+, not {redis.__version__}")
    if redis_version(redis_server) < (7,):
        pytest.skip("Redis Cluster sharded pub/sub needs redis-server 7+")


@pytest.fixture
def cluster(cluster_supported: None) -> Iterator[LocalCluster]:
    """A Redis Cluster of three primaries of the test's own."""
    with LocalCluster(primaries=3) as started:
        yield started


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test server, decoding to str."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_agent(mas_agents: Callable[..., Any]) -> Callable[..., Any]:
    """Create (and by default start) agents; every one is stopped at teardown."""

    def factory(agent_id: str, cls: type = Agent, start: bool = True, **kwargs: Any) -> Any:
        for key, value in FAST.items():
            kwargs.setdefault(key, value)
        return mas_agents(agent_id, cls, start, **kwargs)

    return factory


@pytest.fixture
def agents() -> Iterator[List[Agent]]:
    """Agents a test builds on servers of its own (see ``support.start``); stopped at teardown."""
    started: List[Agent] = []
    yield started
    for agent in started:
        agent.stop(timeout=5)


def mas_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mas-")]


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    """Every test ends with no thread of the library alive."""
    yield
    leftover = mas_threads()
    for thread in leftover:
        thread.join(2.0)
    assert not [t.name for t in leftover if t.is_alive()]


def read_message(pubsub: Any, timeout: float = 5.0) -> Any:
    """The next pub/sub message (subscribe confirmations skipped), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            return message
    return None
