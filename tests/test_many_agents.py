"""Many agents in one process: what start() guarantees, and what the agents share."""

from __future__ import annotations

import threading
from typing import Any, List

import pydantic
import pytest
import redis

from mas_sync import Agent, AgentMessage, StateError
from mas_sync import _listener
from mas_sync._redis import close_client, make_client
from mas_sync.testing import wait_until

from .conftest import mas_threads


class Inbox(Agent):
    """Keeps what it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: List[AgentMessage] = []
        self.got = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        self.received.append(message)
        self.got.set()


class Counted(pydantic.BaseModel):
    counter: int = 0


def agent_connections(r: redis.Redis, prefix: str) -> List[str]:
    """The names of the connections of agents whose ids start with ``prefix``."""
    names = (c.get("name", "") for c in r.client_list())
    return [name for name in names if name.startswith(f"mas-agent:{prefix}")]


def test_a_message_sent_right_after_start_reaches_each_of_50_agents(make_agent, r) -> None:
    sender = make_agent("fifty-sender")
    agents = []
    for i in range(50):
        agent = make_agent(f"fifty-{i}", Inbox)
        sender.send(agent.id, {"n": i})  # at once: start() confirmed the subscription
        agents.append(agent)
    for i, agent in enumerate(agents):
        assert agent.got.wait(5.0), agent.id
        assert [m.payload["n"] for m in agent.received] == [i]


def test_every_heartbeat_key_has_its_ttl_after_start(make_agent, r) -> None:
    agents = [make_agent(f"beat-{i}", heartbeat_ttl=30, heartbeat_interval=10) for i in range(50)]
    for agent in agents:
        ttl = r.pttl(f"agent:{agent.id}:heartbeat")
        assert 25_000 < ttl <= 30_000, (agent.id, ttl)
        assert r.hget(f"agent:{agent.id}", "status") == "ACTIVE"


def test_after_stop_no_thread_and_no_connection_is_left(make_agent, r) -> None:
    agents = [make_agent(f"gone-{i}") for i in range(20)]
    assert len(agent_connections(r, "gone-")) == 2 * len(agents)
    for agent in agents:
        agent.stop()
    assert not [t.name for t in mas_threads() if t.is_alive()]
    wait_until(lambda: not agent_connections(r, "gone-"), message="connections left")
    assert not [key for key in r.keys("agent:gone-*")]


def test_a_state_that_fails_to_load_leaves_no_listener_behind(make_agent, r) -> None:
    # The listener subscribes while the state loads: a failed load undoes it.
    r.hset("agent.state:unfit", mapping={"counter": "not a number"})
    agent = make_agent("unfit", state_model=Counted, start=False)
    with pytest.raises(StateError):
        agent.start()
    assert not [t.name for t in mas_threads() if t.is_alive()]
    wait_until(lambda: not agent_connections(r, "unfit"), message="connections left")
    assert not r.exists("agent:unfit")
    assert r.pubsub_numsub("agent.unfit") == [("agent.unfit", 0)]


def test_agents_started_from_8_threads_at_once_all_register(make_agent, r) -> None:
    agents = [make_agent(f"crowd-{i}", start=False) for i in range(80)]
    errors: List[BaseException] = []

    def start(mine: List[Agent]) -> None:
        try:
            for agent in mine:
                agent.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(agents[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not [t for t in threads if t.is_alive()]
    assert not errors
    assert all(agent.is_running for agent in agents)
    assert all(r.exists(f"agent:{agent.id}:heartbeat") for agent in agents)
    assert len(agent_connections(r, "crowd-")) == 2 * len(agents)


def test_clients_share_what_never_changes(redis_url: str) -> None:
    # Built once per process, not per client: a thousand agents make two
    # thousand clients.
    one, two = make_client(redis_url, 2), make_client(redis_url, 2)
    try:
        assert one.response_callbacks is two.response_callbacks
        for client in (one, two):
            dispatcher = getattr(client, "_event_dispatcher", None)
            if dispatcher is not None:
                assert dispatcher is client.connection_pool._event_dispatcher
                assert dispatcher is getattr(one, "_event_dispatcher")
            kwargs = client.connection_pool.connection_kwargs
            if "driver_info" in kwargs:
                assert kwargs["driver_info"] is one.connection_pool.connection_kwargs["driver_info"]
    finally:
        close_client(one)
        close_client(two)
    if redis.__version__ >= "7.1" and not redis.__version__.startswith(("5.", "6.")):
        assert "driver_info" in one.connection_pool.connection_kwargs


def test_no_handshake_command_is_refused_after_the_first_connection(make_agent, r) -> None:
    # redis-py sends CLIENT SETINFO (twice) and CLIENT MAINT_NOTIFICATIONS with
    # each connection; a server that refuses them is not asked again.
    version = tuple(int(p) for p in r.info("server")["redis_version"].split(".")[:2])
    if version < (7, 2) and not hasattr(redis, "driver_info"):
        pytest.skip("this redis-py sends CLIENT SETINFO its own way")
    make_agent("handshake-first")  # the process learns what the server lacks
    r.config_resetstat()
    agent = make_agent("handshake-second")
    agent.stop()
    assert "errorstat_ERR" not in r.info("errorstats")


def test_the_listener_reads_in_small_pieces_and_gets_big_messages_whole(make_agent) -> None:
    receiver = make_agent("big-rx", Inbox)
    listener = receiver._mas_run.transport._listener
    read_size = getattr(_listener, "READ_SIZE", None)
    assert read_size is not None
    assert listener._client.connection_pool.connection_kwargs["socket_read_size"] == read_size
    text = "x" * (50 * read_size + 7)
    make_agent("big-tx").send("big-rx", {"text": text})
    assert receiver.got.wait(5.0)
    assert receiver.received[0].payload["text"] == text


def test_a_thread_waiting_for_a_pooled_connection_gets_the_one_put_back(redis_url: str) -> None:
    # The pool's queue of free connections has one Condition for its three.
    client = make_client(redis_url, 1)
    pool = client.connection_pool
    try:
        assert pool.pool.not_empty is pool.pool.not_full
        held = pool.get_connection(*_command_name())
        got: List[Any] = []
        waiter = threading.Thread(target=lambda: got.append(client.ping()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not got  # waits: the one connection is taken
        pool.release(held)
        waiter.join(5.0)
        assert got == [True]
    finally:
        close_client(client)


def test_hello_names_the_connection(make_agent, r) -> None:
    # One round trip less per connection: HELLO 3 SETNAME, no CLIENT SETNAME.
    probe = make_client(_url(r), 1)
    try:
        probe.ping()
        connection = probe.connection_pool.get_connection(*_command_name())
        protocol = getattr(connection, "protocol", None)
        probe.connection_pool.release(connection)
    finally:
        close_client(probe)
    if protocol not in (3, "3"):
        pytest.skip("this redis-py speaks RESP2 by default: no HELLO")
    r.config_resetstat()
    make_agent("hello-named")
    stats = r.info("commandstats")
    assert "cmdstat_client|setname" not in stats
    assert stats["cmdstat_hello"]["calls"] >= 2
    assert len(agent_connections(r, "hello-named")) == 2


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}"


def _command_name() -> List[str]:
    """What get_connection() takes: a command name before redis-py 5.3."""
    return ["PING"] if tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3) else []
