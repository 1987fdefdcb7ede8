"""Sentinel: agents follow a failover, killed or graceful.

Each test runs one master, one replica and three sentinels on loopback.
Recovery times are printed (pytest -s).
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, Iterator, List

import pytest
import redis

from mas_sync import MASService
from mas_sync._redis import SentinelURL
from mas_sync._redis import sentinel as _sentinel
from mas_sync.testing import SentinelGroup, wait_until

from .support import FAST as SUPPORT_FAST, Forked, HeldLocks, Inbox, flows

FAST = dict(SUPPORT_FAST, retry_timeout=1.0)




@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as started:
        yield started


@pytest.fixture
def pair(group) -> Iterator[List[Inbox]]:
    agents = [Inbox(name, ["s"], group.url, **FAST) for name in ("a", "b")]
    for agent in agents:
        agent.start()
    yield agents
    for agent in agents:
        agent.stop(timeout=3)


def numsub(address, channel: str) -> int:
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1) as client:
        return client.pubsub_numsub(channel)[0][1]


def both_ways(a: Inbox, b: Inbox) -> Any:
    n = [0]

    def check() -> bool:
        n[0] += 1
        return flows(a, b, f"ab{n[0]}") and flows(b, a, f"ba{n[0]}")

    return check


def test_sentinel_url_parsing() -> None:
    url = SentinelURL("redis+sentinel://user:pw@h1:26379,h2:26380/mymaster/2")
    assert url.sentinels == [("h1", 26379), ("h2", 26380)]
    assert (url.service, url.db, url.username, url.password) == ("mymaster", 2, "user", "pw")
    for bad in ("redis+sentinel://h1/mymaster", "redis+sentinel://h1:1", "redis+sentinel://h1:1/a/b/c"):
        with pytest.raises(ValueError):
            SentinelURL(bad)


def test_agents_follow_a_killed_master(group, pair) -> None:
    a, b = pair
    with MASService(group.url, check_interval=0.5):
        assert flows(a, b, "before")
        killed_at = time.monotonic()
        old = group.kill_master()
        wait_until(lambda: group.master_address() != old, 20, message="sentinels promote")
        promoted = time.monotonic() - killed_at
        wait_until(both_ways(a, b), 20, interval=0.05, message="messages flow again")
        flowing = time.monotonic() - killed_at
        wait_until(lambda: [x["id"] for x in a.discover(["s"])] == ["a", "b"], 10)
        print(f"\nsentinel, master killed: promoted after {promoted:.2f} s,"
              f" messages both ways after {flowing:.2f} s")


@pytest.mark.slow
def test_agents_follow_a_graceful_failover(group, pair) -> None:
    a, b = pair
    assert flows(a, b, "before")
    started = time.monotonic()
    old = group.failover()  # the old master stays up, as a replica
    wait_until(lambda: group.master_address() != old, 20, message="failover done")
    new = group.master_address()
    # Every subscriber leaves the demoted master for the new one.
    wait_until(lambda: numsub(new, "agent.a") == 1 and numsub(new, "agent.b") == 1, 10,
               message="subscribers on the new master")
    moved = time.monotonic() - started
    assert numsub(old, "agent.a") == 0 and numsub(old, "agent.b") == 0
    wait_until(both_ways(a, b), 10, interval=0.05)
    with redis.Redis(host=new[0], port=new[1]) as client:
        assert client.exists("agent:a") and client.exists("agent:b")
    print(f"\nsentinel, graceful failover: subscribers on the new master after {moved:.2f} s")


def read_byte(fd: int, timeout: float) -> bytes:
    """One byte from the pipe ``fd``; b"" when none comes within ``timeout`` seconds."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1) if ready else b""


@pytest.mark.slow
def test_a_forked_child_follows_a_failover_with_a_watcher_of_its_own(group, pair) -> None:
    # The parent follows the master (its watcher thread runs) and holds the
    # watchers' lock while it forks: the child must start a watcher of its own.
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    holder = HeldLocks(_sentinel._lock)

    def child() -> int:
        agent = Inbox("forked-child", ["s"], group.url, **FAST)
        agent.start()
        watching = any(
            t.name.startswith("mas-sentinel[") and t.is_alive() for t in threading.enumerate()
        )
        os.write(ready_w, b"1" if watching else b"0")
        read_byte(done_r, 60)
        agent.stop(timeout=3)
        return 0

    try:
        forked = Forked(child)
    finally:
        holder.release()
    try:
        assert read_byte(ready_r, 20) == b"1", "the child hung, or runs no watcher thread"
        old = group.failover()
        wait_until(lambda: group.master_address() != old, 20, message="failover done")
        new = group.master_address()
        wait_until(lambda: numsub(new, "agent.forked-child") == 1, 10,
                   message="the child's subscriber on the new master")
        assert numsub(old, "agent.forked-child") == 0
        # The parent's agents followed too: the child did not take their watcher.
        wait_until(lambda: numsub(new, "agent.a") == 1 and numsub(new, "agent.b") == 1, 10)
    finally:
        os.write(done_w, b"1")
        code = forked.wait(15)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    assert code == 0
    a, b = pair
    wait_until(both_ways(a, b), 10, interval=0.05, message="the parent's agents still talk")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_start_stop_cycles_leak_no_file_descriptors(group) -> None:
    import gc

    from mas_sync import Agent

    def cycle() -> None:
        agent = Agent("cycler", redis_url=group.url, **FAST)
        agent.start()
        agent.stop(timeout=3)
        with MASService(group.url, check_interval=0.5):
            pass

    cycle()  # imports, and whatever else is made once per process
    gc.collect()
    gc.disable()  # what is not closed explicitly would stay open
    try:
        before = open_fds()
        counts = []
        for _ in range(20):
            cycle()
            counts.append(open_fds())
    finally:
        gc.enable()
    print(f"\nopen file descriptors: {before} before, then {counts}")
    assert max(counts) <= before, f"{before} before, then {counts}"
