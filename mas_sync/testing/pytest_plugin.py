"""The pytest plugin of mas_sync: a private Redis, an agent factory, ``wait_until``.

Installing mas_sync registers it (entry point ``pytest11``, plugin name
``mas_sync``; ``-p no:mas_sync`` turns it off). Its fixtures carry a ``mas_``
prefix, so that they never shadow fixtures of the project under test (many
projects already have a ``redis_url``):

``mas_redis_server`` (session)
    A :class:`~mas_sync.testing.RedisServer` of the session: a private
    ``redis-server`` on a free loopback port, saving nothing to disk. With an
    external Redis (below) there is none, and a test that asks for it is
    skipped.
``mas_redis_url``
    The URL the fixtures use, emptied for each test: the private server's
    (FLUSHALL), or the external Redis (FLUSHDB: that database only).
``mas_agents``
    A factory, ``mas_agents(agent_id, cls=Agent, start=True, **kwargs)``, that
    creates agents on that Redis (and starts them, unless ``start=False``).
    Every agent it made is stopped when the test ends, whether it passed or
    failed.
``mas_wait_until``
    :func:`~mas_sync.testing.wait_until`, for tests that prefer a fixture to an
    import.

An external Redis replaces the private server: ``--mas-redis-url URL`` on the
command line, else ``$MAS_SYNC_TEST_REDIS_URL``, else the ``mas_redis_url``
ini option (``[pytest]`` / ``[tool:pytest]`` / ``[tool.pytest.ini_options]``).
Its database is emptied before each test: give it a database of its own.

Everything waits with a deadline and every thread the library starts is a
daemon thread, and an agent a test forgot to stop does not hang the session:
when the session ends, the agents still running on its Redis are stopped (a
warning names them) before the private server goes.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
import redis
from redis.exceptions import RedisClusterException

from .. import Agent, MASError
from .._process import running_agents
from .._redis import close_client, make_client, redact_url
from . import wait_until
from ._server import RedisServer

__all__ = ["wait_until"]

log = logging.getLogger(__name__)

#: Seconds each agent gets to stop at the end of a test, or of the session.
STOP_TIMEOUT = 5.0
#: Seconds an agent left running gets to stop before the session server goes.
LEFTOVER_STOP_TIMEOUT = 2.0

#: Environment variable that names an external Redis for the fixtures.
URL_ENV = "MAS_SYNC_TEST_REDIS_URL"
#: The ini option, and the ``--mas-redis-url`` option's ``dest``, that do the same.
URL_OPTION = "mas_redis_url"

AgentFactory = Callable[..., Any]

#: The names pytest may know this module by: the entry point's, this
#: module's and its alias's (mas_sync.pytest_plugin).
PLUGIN_NAMES = ("mas_sync", "mas_sync.testing.pytest_plugin", "mas_sync.pytest_plugin")


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Once registered under one name, keep pytest from registering it under another.

    With the entry point loaded, ``-p mas_sync.pytest_plugin`` or
    ``pytest_plugins = ["mas_sync.testing.pytest_plugin"]`` would register
    this module again, which pytest refuses ("already registered under a
    different name"). Blocking a name (what ``-p no:NAME`` does) makes pytest
    skip it, and each of these names stands for this one module.
    """
    if plugin is not sys.modules[__name__]:
        return
    own = manager.get_name(plugin)
    for name in PLUGIN_NAMES:
        if name != own and manager.get_plugin(name) is None and not manager.is_blocked(name):
            manager.set_blocked(name)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--mas-redis-url`` and the ``mas_redis_url`` ini option."""
    group = parser.getgroup("mas_sync", "mas_sync fixtures")
    group.addoption(
        "--mas-redis-url",
        dest=URL_OPTION,
        default=None,
        metavar="URL",
        help=(
            "run the mas_sync fixtures on this Redis instead of a private redis-server;"
            f" its database is emptied before each test (overrides ${URL_ENV} and the"
            f" {URL_OPTION} ini option)"
        ),
    )
    parser.addini(
        URL_OPTION,
        f"Redis URL for the mas_sync fixtures (emptied before each test); ${URL_ENV}"
        " and --mas-redis-url override it",
        default="",
    )


def external_redis_url(config: pytest.Config) -> Optional[Tuple[str, str]]:
    """The external Redis that the fixtures use, and where it was set; None for none.

    The command line wins over the environment, which wins over the ini file.
    An empty value counts as not set.
    """
    value = config.getoption(URL_OPTION)
    if value:
        return str(value), "--mas-redis-url"
    value = os.environ.get(URL_ENV, "").strip()
    if value:
        return value, f"${URL_ENV}"
    value = str(config.getini(URL_OPTION) or "").strip()
    if value:
        return value, f"the {URL_OPTION} ini option"
    return None


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Redis the fixtures use."""
    external = external_redis_url(config)
    if external is None:
        return "mas_sync: a private redis-server for the session"
    url, source = external
    return f"mas_sync: Redis at {redact_url(url)} (from {source}), emptied before each test"


@pytest.fixture(scope="session")
def mas_redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A private redis-server for the session, on 127.0.0.1 and a free port.

    Runs in pytest's main thread. When the session ends, agents still running
    on this server are stopped (each for at most two seconds), with a warning
    that names them, then the server is stopped. On Linux the server dies with
    the pytest process, so a run killed by pytest-timeout leaves none behind.

    With an external Redis there is no private server (nothing the test could
    restart or kill), and a test that asks for it is skipped.
    """
    external = external_redis_url(request.config)
    if external is not None:
        url, source = external
        pytest.skip(
            f"mas_redis_server: the fixtures use the Redis at {redact_url(url)} (from"
            f" {source}); no private server to start, restart or kill"
        )
    with RedisServer() as server:
        yield server
        _stop_leftover_agents(server.url)


@pytest.fixture(scope="session")
def _mas_session_redis(request: pytest.FixtureRequest) -> Iterator[Tuple[str, bool]]:
    """The session's Redis URL, and whether it is external."""
    external = external_redis_url(request.config)
    if external is None:
        server: RedisServer = request.getfixturevalue("mas_redis_server")
        yield server.url, False
        return
    yield external[0], True
    _stop_leftover_agents(external[0])


@pytest.fixture
def mas_redis_url(_mas_session_redis: Tuple[str, bool]) -> str:
    """The URL of the session's Redis, emptied for this test.

    The private server is emptied whole (FLUSHALL); an external Redis, only
    the database of its URL (FLUSHDB).

    Raises:
        pytest.fail.Exception: the external Redis cannot be reached.
    """
    url, external = _mas_session_redis
    if not external:
        client = redis.Redis.from_url(url)
        try:
            client.flushall()
        finally:
            client.close()
        return url
    try:
        client = make_client(url, 1)
        try:
            client.flushdb()
        finally:
            close_client(client)
    except (ValueError, RuntimeError, MASError, redis.RedisError, RedisClusterException, OSError) as exc:
        pytest.fail(f"mas_sync: cannot reach the Redis at {redact_url(url)}: {exc}", pytrace=False)
    return url


@pytest.fixture
def mas_agents(mas_redis_url: str) -> Iterator[AgentFactory]:
    """A factory of agents that are all stopped when the test ends.

    ``mas_agents(agent_id, cls=Agent, start=True, **kwargs)`` builds
    ``cls(agent_id, redis_url=<the session's Redis>, **kwargs)`` and, unless
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
    for agent in leftover:
        try:
            agent.stop(timeout=LEFTOVER_STOP_TIMEOUT)
        except Exception:  # pragma: no cover - best effort at session end
            log.exception("Agent %s: stop at the end of the session failed", agent.id)
    # After the stops: under -W error the warning raises.
    names = ", ".join(sorted(agent.id for agent in leftover))
    warnings.warn(
        f"mas_sync: agents still running at the end of the session were stopped: {names}",
        pytest.PytestWarning,
        stacklevel=1,
    )
