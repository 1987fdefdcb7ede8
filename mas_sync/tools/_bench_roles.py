"""The benchmark's roles: receivers, senders and the responder, each run in a child process.

:mod:`mas_sync.tools.bench` starts them with ``multiprocessing`` (spawn),
which finds each function again by its module and name.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

PAYLOAD = {"action": "work", "text": "x" * 64}


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


def _pace(rate: Optional[float], n: int, send: Callable[[int], None]) -> float:
    """Call ``send(i)`` n times, at ``rate`` per second if given; returns the start time."""
    start = time.time()
    if not rate:
        for i in range(n):
            send(i)
        return start
    interval = 1.0 / rate
    for i in range(n):
        due = start + i * interval
        delay = due - time.time()
        if delay > 0.0002:
            time.sleep(delay)
        send(i)
    return start


def raw_receiver(url: str, channel: str, n: int, ready: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        pass
    ready.set()
    got, latencies, last = 0, [], 0.0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is None or message["type"] != "message":
            continue
        last = time.time()
        got += 1
        if got % 10 == 0:
            latencies.append(last - json.loads(message["data"])["payload"]["t"])
    out.put({"got": got, "last": last, "latencies": latencies})
    pubsub.close()
    client.close()


def raw_sender(url: str, channel: str, n: int, rate: Optional[float], out: Any) -> None:
    client = redis.Redis.from_url(url)

    def send(i: int) -> None:
        message = {"sender_id": "raw-tx", "target_id": "rx", "timestamp": time.time(),
                   "message_id": str(i), "payload": dict(PAYLOAD, t=time.time())}
        client.publish(channel, json.dumps(message))

    start = _pace(rate, n, send)
    out.put({"start": start, "end": time.time()})
    client.close()


class _Tally:
    """What a receiver counts: messages, the time of the last, every tenth latency."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.got = 0
        self.last = 0.0
        self.latencies: List[float] = []

    def record(self, payload: Dict[str, Any]) -> bool:
        """Count one message; true once ``n`` have arrived."""
        now = time.time()
        self.got += 1
        self.last = now
        if self.got % 10 == 0:
            self.latencies.append(now - payload["t"])
        return self.got >= self.n

    def result(self) -> Dict[str, Any]:
        return {"got": self.got, "last": self.last, "latencies": self.latencies}


def _tallying_agent(
    n: int, agent_id: str, **options: Any
) -> Tuple[Any, _Tally, threading.Event]:
    """An agent that tallies what it handles; the event is set at the n-th message."""
    from .. import Agent

    done = threading.Event()
    lock = threading.Lock()
    tally = _Tally(n)

    class Rx(Agent):
        def on_message(self, message: Any) -> None:
            with lock:
                if tally.record(message.payload):
                    done.set()

    return Rx(agent_id, **options), tally, done


def _bench_keyring() -> Any:
    """The keyring of the signed rows: one key, shared by sender and receiver."""
    from .. import Keyring, SigningKey

    return Keyring([SigningKey("bench", b"bench-secret-of-32-bytes-0123456")])


def sync_receiver(url: str, agent_id: str, n: int, ready: Any, out: Any,
                  signed: bool = False) -> None:
    options: Dict[str, Any] = {}
    if signed:
        options = dict(keyring=_bench_keyring(), require_signed=True)
    agent, tally, done = _tallying_agent(
        n, agent_id, redis_url=url, max_pending=max(1000, n), **options
    )
    agent.start()
    ready.set()
    done.wait(120)
    out.put(dict(tally.result(), missed=agent.stats.missed, dropped=agent.stats.dropped_overflow,
                 refused=agent.stats.refused))
    agent.stop()


def signed_receiver(url: str, agent_id: str, n: int, ready: Any, out: Any) -> None:
    """:func:`sync_receiver` with ``require_signed``, verifying every message."""
    sync_receiver(url, agent_id, n, ready, out, signed=True)


def sync_sender(url: str, target: str, n: int, rate: Optional[float], mode: str, out: Any) -> None:
    from .. import Agent

    keyring = _bench_keyring() if mode == "signed" else None
    agent = Agent(f"tx-{os.getpid()}", redis_url=url, keyring=keyring)
    agent.start()
    if mode == "batch":
        start = time.time()
        for first in range(0, n, 100):
            agent.send_many([(target, dict(PAYLOAD, t=time.time()))
                             for _ in range(first, min(n, first + 100))])
    elif mode.startswith("threads"):
        threads_n = int(mode.split(":")[1])
        per = n // threads_n

        def work() -> None:
            for _ in range(per):
                agent.send(target, dict(PAYLOAD, t=time.time()))

        workers = [threading.Thread(target=work) for _ in range(threads_n)]
        start = time.time()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    else:
        start = _pace(rate, n, lambda i: agent.send(target, dict(PAYLOAD, t=time.time())))
    out.put({"start": start, "end": time.time()})
    agent.stop()


async def async_start(agent: Any, url: str) -> None:
    """Start an agent of the async framework and wait for its first heartbeat.

    Its heartbeat task opens a connection of its own as the agent starts. On
    Python 3.11 a ``cancel()`` that lands while redis-py sets a connection up
    can be lost, and ``stop()`` then waits out the task's 30 s sleep.
    """
    import redis.asyncio

    await agent.start()
    client = redis.asyncio.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 5.0
        while not await client.exists(f"agent:{agent.id}:heartbeat") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    finally:
        await client.aclose()


def async_receiver(url: str, agent_id: str, n: int, ready: Any, out: Any) -> None:
    import mas  # type: ignore[import-not-found]

    async def main() -> None:
        done = asyncio.Event()
        tally = _Tally(n)

        class Rx(mas.Agent):  # type: ignore[misc]
            async def on_message(self, message: Any) -> None:
                if tally.record(message.payload):
                    done.set()

        agent = Rx(agent_id, redis_url=url)
        await async_start(agent, url)
        ready.set()
        try:
            await asyncio.wait_for(done.wait(), 120)
        except asyncio.TimeoutError:
            pass
        out.put(tally.result())
        await agent.stop()

    asyncio.run(main())


def async_sender(url: str, target: str, n: int, rate: Optional[float], out: Any) -> None:
    import mas  # type: ignore[import-not-found]

    async def main() -> None:
        agent = mas.Agent(f"atx-{os.getpid()}", redis_url=url)
        await async_start(agent, url)
        start = time.time()
        interval = 1.0 / rate if rate else 0.0
        for i in range(n):
            if interval:
                delay = start + i * interval - time.time()
                if delay > 0.0002:
                    await asyncio.sleep(delay)
            await agent.send(target, dict(PAYLOAD, t=time.time()))
        out.put({"start": start, "end": time.time()})
        await agent.stop()

    asyncio.run(main())


def responder(url: str, agent_id: str, ready: Any, stop: Any) -> None:
    from .. import Agent

    class Echo(Agent):
        def on_message(self, message: Any) -> None:
            if message.expects_reply:
                message.reply({"ok": True})

    agent = Echo(agent_id, redis_url=url)
    agent.start()
    ready.set()
    stop.wait(300)
    agent.stop()


def requester(url: str, target: str, n: int, out: Any) -> None:
    from .. import Agent

    agent = Agent(f"asker-{os.getpid()}", redis_url=url)
    agent.start()
    for _ in range(min(100, n)):  # warm up
        agent.request(target, {"q": 1}, timeout=5)
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        agent.request(target, {"q": 1}, timeout=5)
        rtts.append(time.perf_counter() - t0)
    out.put({"rtts": rtts})
    agent.stop()


def many_agents(url: str, n: int, out: Any) -> None:
    from .. import Agent

    def rss_kib() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    probe = redis.Redis.from_url(url)
    gc.collect()
    threads0, rss0 = threading.active_count(), rss_kib()
    clients0 = len(probe.client_list())
    agents = [Agent(f"many-{i}", ["bench"], url) for i in range(n)]
    t0 = time.perf_counter()
    for agent in agents:
        agent.start()
    started = time.perf_counter() - t0
    threads, rss = threading.active_count() - threads0, rss_kib() - rss0
    clients = len(probe.client_list()) - clients0
    t0 = time.perf_counter()
    for agent in agents:
        agent.stop()
    stopped = time.perf_counter() - t0
    out.put({"start": started, "stop": stopped, "threads": threads, "rss_kib": rss,
             "clients": clients, "left": threading.active_count() - threads0})
    probe.close()


# -- reliable delivery (streams) ----------------------------------------------------

#: The consumer group of the raw stream rows, as mas_sync's (``agents``).
RAW_GROUP = "agents"


def raw_stream_receiver(url: str, stream: str, n: int, ready: Any, out: Any) -> None:
    """The ceiling: XREADGROUP up to 100 entries, then one XACK for them, as a bare loop."""
    client = redis.Redis.from_url(url)
    try:
        client.xgroup_create(stream, RAW_GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    ready.set()
    got, latencies, last = 0, [], 0.0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        reply = client.xreadgroup(RAW_GROUP, "raw-rx", {stream: ">"}, count=100, block=250)
        for _, entries in reply or ():
            ids = []
            for entry_id, fields in entries:
                ids.append(entry_id)
                got += 1
                if got % 10 == 0:
                    latencies.append(time.time() - json.loads(fields[b"envelope"])["payload"]["t"])
            client.xack(stream, RAW_GROUP, *ids)
            last = time.time()
    out.put({"got": got, "last": last, "latencies": latencies})
    client.close()


def raw_stream_sender(url: str, stream: str, n: int, rate: Optional[float], out: Any) -> None:
    """One XADD per message (the envelope field, as mas_sync writes it)."""
    client = redis.Redis.from_url(url)

    def send(i: int) -> None:
        message = {"sender_id": "raw-tx", "target_id": "rx", "timestamp": time.time(),
                   "message_id": str(i), "payload": dict(PAYLOAD, t=time.time())}
        client.xadd(stream, {"envelope": json.dumps(message)})

    start = _pace(rate, n, send)
    out.put({"start": start, "end": time.time()})
    client.close()


def _wait_acknowledged(client: redis.Redis, stream: str, deadline: float) -> float:
    """Wait until the group holds no pending entry; returns the time it was seen so."""
    while time.monotonic() < deadline:
        if int(client.xpending(stream, RAW_GROUP)["pending"]) == 0:
            return time.time()
        time.sleep(0.0005)
    return time.time()


def reliable_receiver(url: str, agent_id: str, n: int, ready: Any, out: Any) -> None:
    """A reliable agent; "last" is when the n-th message was handled *and* acknowledged."""
    agent, tally, done = _tallying_agent(
        n, agent_id, redis_url=url, delivery="reliable", instance="rx"
    )
    agent.start()
    ready.set()
    done.wait(120)
    probe = redis.Redis.from_url(url)
    result = tally.result()
    result["last"] = _wait_acknowledged(probe, f"agent.stream:{agent_id}", time.monotonic() + 10)
    probe.close()
    out.put(result)
    agent.stop()


def instance_receiver(url: str, agent_id: str, instance: str, workers: int, n: int,
                      counter: Any, finished: Any, ready: Any, stop: Any) -> None:
    """One instance of a reliable agent whose handler sleeps 1 ms (its work).

    ``counter`` (shared by the instances) counts the messages handled; the
    instance that handles the n-th stores the time in ``finished``.
    """
    from .. import Agent

    class Worker(Agent):
        def on_message(self, message: Any) -> None:
            time.sleep(0.001)
            with counter.get_lock():
                counter.value += 1
                if counter.value == n:
                    finished.value = time.time()

    agent = Worker(agent_id, redis_url=url, delivery="reliable", instance=instance,
                   max_workers=workers)
    agent.start()
    ready.set()
    stop.wait(300)
    agent.stop()


def indexed_sender(url: str, target: str, n: int, rate: Optional[float], out: Any) -> None:
    """Send ``{"i": i}`` for i < n by ``send()``; reports the indices whose send() returned."""
    from .. import Agent, MASError

    agent = Agent(f"itx-{os.getpid()}", redis_url=url)
    agent.start()
    acked: List[int] = []
    failed: List[str] = []

    def send(i: int) -> None:
        try:
            agent.send(target, {"i": i, "t": time.time()})
        except MASError as exc:
            failed.append(f"{i}: {type(exc).__name__}")
        else:
            acked.append(i)

    start = _pace(rate, n, send)
    out.put({"start": start, "end": time.time(), "acked": acked, "failed": failed})
    try:
        agent.stop()
    except MASError:
        pass


#: The hash where the chaos receiver counts each message index it handled.
CHAOS_HANDLED = "bench.chaos.handled"


def chaos_receiver(url: str, agent_id: str, instance: str, kill_after: int,
                   visibility: float, ready: Any, stop: Any) -> None:
    """A reliable agent that SIGKILLs its own process as its ``kill_after``-th message arrives.

    Each message handled is counted in Redis (HINCRBY per index) before the
    handler returns, so that the kill loses no record. ``kill_after`` 0 never kills.
    """
    import signal

    from .. import Agent

    record = redis.Redis.from_url(url)
    lock = threading.Lock()
    received = [0]

    class Victim(Agent):
        def on_message(self, message: Any) -> None:
            with lock:
                received[0] += 1
                now = received[0]
            if kill_after and now == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            record.hincrby(CHAOS_HANDLED, str(message.payload["i"]), 1)

    agent = Victim(agent_id, redis_url=url, delivery="reliable", instance=instance,
                   visibility_timeout=visibility)
    agent.start()
    ready.set()
    stop.wait(600)
    agent.stop()


def outage_receiver(url: str, agent_id: str, handled: Any, ready: Any, stop: Any, out: Any) -> None:
    """A reliable agent that keeps the indices it handled; ``handled`` counts the distinct ones."""
    from .. import Agent

    lock = threading.Lock()
    seen: set = set()

    class Rx(Agent):
        def on_message(self, message: Any) -> None:
            with lock:
                if message.payload["i"] not in seen:
                    seen.add(message.payload["i"])
                    with handled.get_lock():
                        handled.value += 1

    agent = Rx(agent_id, redis_url=url, delivery="reliable", instance="rx")
    agent.start()
    ready.set()
    stop.wait(300)
    with lock:
        out.put({"handled": sorted(seen), "disconnects": agent.stats.disconnects})
    agent.stop()


def rate_limited_instance(url: str, agent_id: str, rate: float, offered: float, index: int,
                          count: int, seconds: float, ready: Any, go: Any, start_at: Any,
                          out: Any) -> None:
    """One of ``count`` instances of a receiver whose limit is ``rate`` msg/s per sender.

    Once connected it sets ``ready``, and waits for ``go``. A sender offers
    ``offered`` msg/s in all, from ``start_at.value`` (``time.time()``) for
    ``seconds``; its messages reach the instances in turn, this one taking
    every ``count``-th from ``index``: one ``RateLimiter.allow()`` each, on
    this process's own client. Reports the times of those allowed, of the
    first refused, the attempts and the round trips.
    """
    from .._rates import RateLimit, RateLimiter
    from .._redis import close_client, make_client

    client = make_client(url, 2)
    limiter = RateLimiter(client, agent_id, RateLimit(rate))
    client.ping()
    ready.set()
    go.wait(60)
    start_at = start_at.value
    interval = 1.0 / offered
    pause = threading.Event()
    allowed: List[float] = []
    first_refused: Optional[float] = None
    round_trips: List[float] = []
    n = index
    total = int(offered * seconds)
    while n < total:
        due = start_at + n * interval
        delay = due - time.time()
        if delay > 0.0002:
            pause.wait(delay)
        began = time.perf_counter()
        answer = limiter.allow("tx")
        round_trips.append(time.perf_counter() - began)
        at = time.time()
        if answer:
            allowed.append(at)
        elif first_refused is None:
            first_refused = at
        n += count
    close_client(client)
    out.put({"allowed": allowed, "first_refused": first_refused, "attempts": len(round_trips),
             "round_trips": round_trips, "failed_open": limiter.failed_open, "last": time.time()})


def limited_receiver(url: str, agent_id: str, instance: str, rate: float, ready: Any,
                     stop: Any, out: Any) -> None:
    """One instance of a reliable agent with ``rate_limit``: counts what it handles and refuses."""
    from .. import Agent

    lock = threading.Lock()
    handled = [0]

    class Rx(Agent):
        def on_message(self, message: Any) -> None:
            with lock:
                handled[0] += 1

    agent = Rx(agent_id, redis_url=url, delivery="reliable", instance=instance,
               rate_limit=f"{rate:g}/s", max_pending=10_000, stream_maxlen=100_000)
    agent.start()
    ready.set()
    stop.wait(600)
    agent.stop()
    out.put({"handled": handled[0], "refused": agent.stats.refused_rate_limited})
