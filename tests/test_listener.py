"""The listener's wake-up: stop() is prompt and puts nothing on the agent's channel.

Other subscribers of ``agent.{id}`` (a monitor, an async peer) must never see a
message that the library made up for its own use.
"""

from __future__ import annotations

import time
from typing import Iterator, List

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.utils import str_if_bytes

from mas_sync import Agent, MASService, _wire
from mas_sync._redis import close_client, make_client
from mas_sync._listener import ChannelListener
from mas_sync.testing import LocalCluster, RedisServer

from .conftest import FAST

#: Ids whose hash tags make the private channel's slot tricky on a cluster.
AWKWARD_IDS = ["plain", "tag{x}ed", "{}empty", "close}open{", "open{only", "{a}{b}"]


@pytest.mark.parametrize("agent_id", AWKWARD_IDS)
def test_the_wake_channel_is_private_and_in_the_channels_slot(agent_id: str) -> None:
    channel = _wire.agent_channel(agent_id)
    first, second = _wire.wake_channel(channel), _wire.wake_channel(channel)
    assert first != second  # one per listener
    assert first.startswith(_wire.WAKE_CHANNEL_PREFIX) and not first.startswith("agent.")
    assert key_slot(first.encode()) == key_slot(second.encode()) == key_slot(channel.encode())


def received_before_marker(pubsub: redis.client.PubSub, timeout: float = 5.0) -> List[bytes]:
    """Everything ``pubsub`` received before the ``marker`` message, which must arrive."""
    got: List[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None:
            continue
        if message["data"] == b"marker":
            return got
        got.append(message["data"])
    pytest.fail(f"the marker did not arrive within {timeout} s; got {got!r}")


def test_stop_publishes_nothing_on_the_agents_channel(redis_url: str) -> None:
    watcher = redis.Redis.from_url(redis_url)
    pubsub = watcher.pubsub()
    try:
        pubsub.subscribe("agent.quiet")
        assert str_if_bytes(pubsub.get_message(timeout=5)["type"]) == "subscribe"
        agent = Agent("quiet", redis_url=redis_url, **FAST)
        agent.start()
        agent.stop(timeout=5)
        # Redis delivers one channel's messages in order: whatever stop()
        # published there arrives before the marker.
        watcher.publish("agent.quiet", b"marker")
        assert received_before_marker(pubsub) == []
    finally:
        pubsub.close()
        watcher.close()


def test_the_service_stop_publishes_nothing_on_the_system_channel(redis_url: str) -> None:
    watcher = redis.Redis.from_url(redis_url)
    pubsub = watcher.pubsub()
    try:
        pubsub.subscribe(_wire.SYSTEM_CHANNEL)
        assert str_if_bytes(pubsub.get_message(timeout=5)["type"]) == "subscribe"
        with MASService(redis_url, check_interval=60):
            pass
        watcher.publish(_wire.SYSTEM_CHANNEL, b"marker")
        assert received_before_marker(pubsub) == []  # every agent reads this channel
    finally:
        pubsub.close()
        watcher.close()


def _stops_within_a_second(url: str, channel: str) -> None:
    publisher = make_client(url, 1)
    listener = ChannelListener(
        url, channel, lambda data: None, name="mas-test-listener",
        owner="test", probe_interval=60.0, probe_timeout=30.0,
    )
    try:
        listener.start()
        started = time.monotonic()
        assert listener.stop(publisher, time.monotonic() + 5.0)
        assert time.monotonic() - started < 1.0
    finally:
        listener.stop(None, time.monotonic() + 5.0)
        close_client(publisher)


def test_a_stopped_listener_ends_promptly_even_with_a_long_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With reads that block for 30 s, only the wake-up can end the thread quickly.
    monkeypatch.setattr("mas_sync._listener.POLL_INTERVAL", 30.0)
    _stops_within_a_second(redis_url, "agent.slow")


def _acl_user(server: RedisServer, channels: List[str]) -> str:
    """A user limited to ``channels``; returns its URL."""
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command(
            "ACL", "SETUSER", "agent", "on", ">pw", "~*", "resetchannels",
            *[f"&{c}" for c in channels], "+@all",
        )
    finally:
        admin.close()
    return f"redis://agent:pw@127.0.0.1:{server.port}/0"


@pytest.mark.slow
def test_an_acl_that_refuses_the_wake_channel_only_slows_stop_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as server:
        url = _acl_user(server, ["mas.system", "agent.guarded"])
        agent = Agent("guarded", redis_url=url, **FAST)
        agent.start()  # as before the wake channel existed
        try:
            assert agent.is_running
            # The warning says what to allow.
            assert _wire.wake_channel_pattern("agent.guarded") in caplog.text
        finally:
            started = time.monotonic()
            agent.stop(timeout=5)
        assert time.monotonic() - started < 2.5  # one bounded read, at most
        assert not agent.is_running


def test_an_acl_that_allows_the_wake_channels_keeps_stop_prompt(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mas_sync._listener.POLL_INTERVAL", 30.0)
    with RedisServer() as server:
        url = _acl_user(server, ["mas.system", "agent.guarded", "mas_sync:wake:*"])
        agent = Agent("guarded", redis_url=url, probe_interval=60.0, **FAST)
        agent.start()
        started = time.monotonic()
        agent.stop(timeout=5)
        assert time.monotonic() - started < 1.0
        assert "wake" not in caplog.text


# -- Redis Cluster (sharded pub/sub) ----------------------------------------------


@pytest.fixture(scope="module")
def cluster(cluster_supported: None) -> Iterator[LocalCluster]:
    with LocalCluster(primaries=3) as started:
        yield started


def test_stop_publishes_nothing_on_the_agents_shard_channel(cluster: LocalCluster) -> None:
    finder = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        node = finder.get_node_from_key("agent.quiet")
    finally:
        finder.close()
    watcher = redis.Redis(host=node.host, port=node.port)
    pubsub = watcher.pubsub()
    try:
        pubsub.ssubscribe("agent.quiet")
        assert str_if_bytes(pubsub.get_message(timeout=5)["type"]) == "ssubscribe"
        agent = Agent("quiet", redis_url=cluster.url, **FAST)
        agent.start()
        agent.stop(timeout=5)
        watcher.spublish("agent.quiet", b"marker")
        assert received_before_marker(pubsub) == []
    finally:
        pubsub.close()
        watcher.close()


@pytest.mark.parametrize("agent_id", AWKWARD_IDS)
def test_a_stopped_listener_ends_promptly_on_a_cluster(
    cluster: LocalCluster, agent_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mas_sync._listener.POLL_INTERVAL", 30.0)
    _stops_within_a_second(cluster.url, f"agent.{agent_id}")


@pytest.mark.parametrize("idle_after", [0.0, 0.5])
def test_messages_that_trickle_in_are_handed_over_together_within_idle_after(
    redis_url: str, idle_after: float
) -> None:
    # A run that takes messages in batches (signed messages: one Redis call
    # records a batch's nonces) gets them together when they come within
    # ``idle_after`` of the first, and no later than that.
    import threading

    got: List[bytes] = []
    batches: List[int] = []
    idle = threading.Event()
    first_at: List[float] = []
    idle_at: List[float] = []

    def on_data(data: bytes) -> None:
        if not got:
            first_at.append(time.monotonic())
        got.append(data)

    def on_idle() -> None:
        batches.append(len(got) - sum(batches))
        idle_at.append(time.monotonic())
        if sum(batches) == 5:
            idle.set()

    listener = ChannelListener(
        redis_url, "agent.trickle", on_data, name="mas-test-trickle", owner="test",
        on_idle=on_idle, idle_after=idle_after,
    )
    listener.start()
    publisher = redis.Redis.from_url(redis_url)
    try:
        for n in range(5):
            publisher.publish("agent.trickle", f"m{n}")
            if n < 4:
                threading.Event().wait(0.04)  # the pace of a slow sender
        assert idle.wait(5.0)
        assert got == [f"m{n}".encode() for n in range(5)]
        if idle_after:
            assert batches == [5]
            assert idle_at[0] - first_at[0] >= idle_after - 0.01
            assert idle_at[0] - first_at[0] < idle_after + 1.0
        else:
            assert batches == [1, 1, 1, 1, 1]
    finally:
        listener.stop(publisher, time.monotonic() + 5)
        publisher.close()
