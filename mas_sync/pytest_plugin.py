"""The pytest plugin of mas_sync: a private Redis, an agent factory, ``wait_until``.

Installing mas_sync registers it (entry point ``pytest11``, plugin name
``mas_sync``; ``-p no:mas_sync`` turns it off). Its fixtures carry a ``mas_``
prefix, so that they never shadow fixtures of the project under test (many
projects already have a ``redis_url``):

``mas_redis_server`` (session)
    A :class:`~mas_sync.testing.RedisServer` of the session: a private
    ``redis-server`` on a free loopback port, saving nothing to disk.
``mas_redis_url``
    Its URL, after emptying it (FLUSHALL), so that each test starts clean.
``mas_agents``
    A factory, ``mas_agents(agent_id, cls=Agent, start=True, **kwargs)``, that
    creates agents on that server (and starts them, unless ``start=False``).
    Every agent it made is stopped when the test ends, whether it passed or
    failed.
``mas_wait_until``
    :func:`~mas_sync.testing.wait_until`, for tests that prefer a fixture to an
    import.

Everything waits with a deadline and every thread the library starts is a
daemon thread, so the plugin works under pytest-timeout's ``thread`` method,
and an agent a test forgot to stop does not hang the session: when the session
server shuts down, the agents still running on it are stopped (a warning names
them) before the server goes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Iterator, List

import pytest
import redis

from ._agent import Agent, running_agents
from .testing import RedisServer, wait_until

__all__ = ["wait_until"]

log = logging.getLogger(__name__)

#: Seconds each agent gets to stop at the end of a test, or of the session.
STOP_TIMEOUT = 5.0
#: Seconds an agent left running gets to stop before the session server goes.
LEFTOVER_STOP_TIMEOUT = 2.0

AgentFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def mas_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session, on 127.0.0.1 and a free port.

    Runs in pytest's main thread. When the session ends, agents still running
    on this server are stopped (each for at most two seconds), with a warning
    that names them, then the server is stopped. On Linux the server dies with
    the pytest process, so a run killed by pytest-timeout leaves none behind.
    """
    with RedisServer() as server:
        yield server
        _stop_leftover_agents(server.url)


@pytest.fixture
def mas_redis_url(mas_redis_server: RedisServer) -> str:
    """The URL of the session's private Redis, emptied for this test."""
    client = redis.Redis.from_url(mas_redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return mas_redis_server.url


@pytest.fixture
def mas_agents(mas_redis_url: str) -> Iterator[AgentFactory]:
    """A factory of agents that are all stopped when the test ends.

    ``mas_agents(agent_id, cls=Agent, start=True, **kwargs)`` builds
    ``cls(agent_id, redis_url=<the private server>, **kwargs)`` and, unless
    ``start=False``, starts it in the test's thread. At teardown, which runs
    also when the test failed, every agent it made is stopped, the last made
    first, each within ``STOP_TIMEOUT`` seconds; an error while stopping one
    does not keep the others running.
    """
    agents: List[Agent] = []

    def factory(agent_id: str, cls: type = Agent, start: bool = True, **kwargs: Any) -> Any:
        kwargs.setdefault("redis_url", mas_redis_url)
        agent = cls(agent_id, **kwargs)
        agents.append(agent)
        if start:
            agent.start()
        return agent

    yield factory
    errors: List[BaseException] = []
    for agent in reversed(agents):
        try:
            agent.stop(timeout=STOP_TIMEOUT)
        except Exception as exc:  # pragma: no cover - stop() logs and goes on
            errors.append(exc)
    if errors:  # pragma: no cover
        raise errors[0]


@pytest.fixture
def mas_wait_until() -> Callable[..., Any]:
    """:func:`mas_sync.testing.wait_until`: ``mas_wait_until(predicate, timeout=5.0)``."""
    return wait_until


def _stop_leftover_agents(url: str) -> None:
    leftover = [a for a in running_agents() if a.redis_url == url and a.is_running]
    if not leftover:
        return
    names = ", ".join(sorted(agent.id for agent in leftover))
    warnings.warn(
        f"mas_sync: agents still running at the end of the session were stopped: {names}",
        pytest.PytestWarning,
        stacklevel=1,
    )
    for agent in leftover:
        try:
            agent.stop(timeout=LEFTOVER_STOP_TIMEOUT)
        except Exception:  # pragma: no cover - best effort at session end
            log.exception("Agent %s: stop at the end of the session failed", agent.id)
