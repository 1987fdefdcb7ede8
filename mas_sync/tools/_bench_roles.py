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
from typing import Any, Callable, Dict, List, Optional, Sequence

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


class _Tally:
    """What a receiver counts: messages, the time of the last, every ``every``-th latency."""

    def __init__(self, n: int, every: int = 10) -> None:
        self.n = n
        self.every = every
        self.got = 0
        self.last = 0.0
        self.latencies: List[float] = []

    def record(self, payload: Dict[str, Any]) -> bool:
        """Count one message; true once ``n`` have arrived."""
        now = time.time()
        self.got += 1
        self.last = now
        if self.got % self.every == 0:
            self.latencies.append(now - payload["t"])
        return self.got >= self.n

    def result(self) -> Dict[str, Any]:
        return {"got": self.got, "last": self.last, "latencies": self.latencies}


def _bench_keyring() -> Any:
    """The keyring of the signed rows: one key, shared by sender and receiver."""
    from .. import Keyring, SigningKey

    return Keyring([SigningKey("bench", b"bench-secret-of-32-bytes-0123456")])


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


def behaviours(url: str, quick: bool, out: Any) -> None:
    """Futures, scatter-gather, a handler's time limit and a periodic method, in one process.

    Puts a dict: ``sequential``/``futures`` (seconds for ``n`` requests each,
    by round), ``gather`` (seconds of each ``request_many()`` over the
    answering agents), ``gather_silent`` (seconds of those with silent agents,
    and their timeout), ``rates`` (messages/s handled without and with a
    limit, by round), ``lags`` (seconds behind the grid of each periodic run).
    """
    import concurrent.futures

    from .. import Agent, periodic

    class Echo(Agent):
        def on_message(self, message: Any) -> None:
            if message.expects_reply:
                message.reply({"ok": 1})

    class Silent(Agent):
        def on_message(self, message: Any) -> None:
            pass

    class Sink(Agent):
        def __init__(self, *args: Any, n: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.n, self.count = n, 0
            self.done, self.lock = threading.Event(), threading.Lock()

        def on_message(self, message: Any) -> None:
            with self.lock:
                self.count += 1
                if self.count == self.n:
                    self.done.set()

    period = 0.01

    class Ticker(Agent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.starts: List[float] = []

        @periodic(period, initial_delay=0)
        def tick(self) -> None:
            self.starts.append(time.monotonic())

    rounds = 2 if quick else 3
    n = 200 if quick else 1_000
    result: Dict[str, Any] = {"n": n, "sequential": [], "futures": [], "gather": [],
                              "gather_silent": [], "rates": {"none": [], "limit": []}}
    echo = Echo("bh-echo", redis_url=url, max_workers=8)
    client = Agent("bh-client", redis_url=url)
    workers = [(Silent if i % 10 == 3 else Echo)(f"bh-w{i:02}", ["bh-work"], redis_url=url)
               for i in range(50)]
    for agent in [echo, client, *workers]:
        agent.start()
    try:
        for _ in range(100):
            client.request("bh-echo", {}, timeout=5)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                client.request("bh-echo", {}, timeout=5)
            result["sequential"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            futures = [client.request_future("bh-echo", {}, timeout=10) for _ in range(n)]
            concurrent.futures.wait(futures, 30)
            result["futures"].append(time.perf_counter() - t0)
        answering = [a.id for a in workers if isinstance(a, Echo)]
        for _ in range(10 if quick else 30):
            t0 = time.perf_counter()
            gathered = client.request_many(answering, {}, timeout=5)
            result["gather"].append(time.perf_counter() - t0)
            if gathered.errors:
                raise RuntimeError(f"request_many() failed: {gathered.errors}")
        timeout = 0.5
        result["gather_timeout"], result["gather_targets"] = timeout, len(workers)
        for _ in range(rounds):
            t0 = time.perf_counter()
            gathered = client.request_many("bh-work", {}, timeout=timeout)
            result["gather_silent"].append(time.perf_counter() - t0)
            result["gather_silent_missing"] = len(gathered.timed_out)
        messages = 4_000 if quick else 20_000
        result["messages"] = messages
        for r in range(rounds):
            for kind, limit in (("none", None), ("limit", 5.0)):
                sink = Sink(f"bh-sink-{r}-{kind}", redis_url=url, n=messages,
                            handler_timeout=limit, max_pending=messages)
                sink.start()
                t0 = time.perf_counter()
                for first in range(0, messages, 500):
                    client.send_many([(sink.id, {"i": i}) for i in range(first, first + 500)])
                sink.done.wait(60)
                result["rates"][kind].append(messages / (time.perf_counter() - t0))
                sink.stop()
        ticker = Ticker("bh-ticker", redis_url=url)
        ticker.start()
        threading.Event().wait(1.0 if quick else 3.0)
        ticker.stop()
        # Behind the grid, whose origin is taken where the earliest run would put it.
        offsets = [start - k * period for k, start in enumerate(ticker.starts)]
        result["lags"] = [offset - min(offsets) for offset in offsets]
    finally:
        for agent in [client, echo, *workers]:
            agent.stop()
    out.put(result)


# -- reliable delivery (streams) ----------------------------------------------------

#: The consumer group of the raw stream rows, as mas_sync's (``agents``).
RAW_GROUP = "agents"


def _wait_acknowledged(client: redis.Redis, stream: str, deadline: float) -> float:
    """Wait until the group holds no pending entry; returns the time it was seen so."""
    while time.monotonic() < deadline:
        if int(client.xpending(stream, RAW_GROUP)["pending"]) == 0:
            return time.time()
        time.sleep(0.0005)
    return time.time()


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


# -- endpoints that serve one job after another ------------------------------------
#
# The interleaved groups of the benchmark start each process once and give it a
# job per round (spawning a process costs about 0.3 s): ``serve`` builds the
# endpoint, reports {"started": True}, then answers every job of its inbox
# until it reads None. A receiver's job answers {"ready": True} once it counts
# afresh, then its result.


def serve(make: str, args: Sequence[Any], inbox: Any, out: Any) -> None:
    """Build ``make(*args)`` (a class of this module) and run the jobs of ``inbox`` until None."""
    endpoint = globals()[make](*args)
    out.put({"started": True})
    try:
        while True:
            job = inbox.get()
            if job is None:
                break
            out.put(endpoint.run(job, out))
    finally:
        endpoint.close()


class _Receiver:
    """The part of every receiver: a fresh tally per job, and the wait for its n-th message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tally = _Tally(0)
        self.done = threading.Event()

    def record(self, payload: Dict[str, Any]) -> None:
        with self.lock:
            if self.tally.record(payload):
                self.done.set()

    def begin(self, job: Dict[str, Any], out: Any) -> _Tally:
        with self.lock:
            self.tally = _Tally(job["n"], job.get("every", 10))
            self.done = threading.Event()
        out.put({"ready": True})
        return self.tally

    def close(self) -> None:
        pass


class RawReceiver(_Receiver):
    """A bare redis-py ``PubSub`` loop on ``channel``."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        while (self.pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
            pass

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        tally = self.begin(job, out)
        deadline = time.monotonic() + job.get("timeout", 60)
        while tally.got < tally.n and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                tally.record(json.loads(message["data"])["payload"])
        return tally.result()

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


class AgentReceiver(_Receiver):
    """A mas_sync agent that tallies what it handles (``kind``: "pubsub", "signed" or "reliable")."""

    def __init__(self, url: str, agent_id: str, kind: str, most: int) -> None:
        from .. import Agent

        super().__init__()
        self.url, self.agent_id, self.kind = url, agent_id, kind
        options: Dict[str, Any] = {}
        if kind == "signed":
            options = dict(keyring=_bench_keyring(), require_signed=True)
        elif kind == "reliable":
            options = dict(delivery="reliable", instance="rx")
        receiver = self

        class Rx(Agent):
            def on_message(self, message: Any) -> None:
                receiver.record(message.payload)

        self.agent = Rx(agent_id, redis_url=url, max_pending=max(1000, most), **options)
        self.agent.start()
        self.probe = redis.Redis.from_url(url)

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        tally = self.begin(job, out)
        before = self.agent.stats
        self.done.wait(job.get("timeout", 60))
        result = tally.result()
        stats = self.agent.stats
        result.update(missed=stats.missed - before.missed,
                      dropped=stats.dropped_overflow - before.dropped_overflow,
                      refused=stats.refused - before.refused)
        if self.kind == "reliable":
            # "last" is when the n-th message was handled *and* acknowledged.
            result["last"] = _wait_acknowledged(self.probe, f"agent.stream:{self.agent_id}",
                                                time.monotonic() + 10)
        return result

    def close(self) -> None:
        self.agent.stop()
        self.probe.close()


class RawStreamReceiver(_Receiver):
    """The ceiling of streams: XREADGROUP up to 100 entries, then one XACK for them."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__()
        self.stream = stream
        self.client = redis.Redis.from_url(url)
        try:
            self.client.xgroup_create(stream, RAW_GROUP, id="$", mkstream=True)
        except redis.ResponseError:
            pass

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        tally = self.begin(job, out)
        deadline = time.monotonic() + job.get("timeout", 60)
        while tally.got < tally.n and time.monotonic() < deadline:
            reply = self.client.xreadgroup(RAW_GROUP, "raw-rx", {self.stream: ">"}, count=100, block=250)
            for _, entries in reply or ():
                for _, fields in entries:
                    tally.record(json.loads(fields[b"envelope"])["payload"])
                self.client.xack(self.stream, RAW_GROUP, *(entry_id for entry_id, _ in entries))
                tally.last = time.time()
        return tally.result()

    def close(self) -> None:
        self.client.close()


class _Loop:
    """An asyncio loop in a thread of its own, for the async framework's endpoints."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mas-bench-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: Optional[float] = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class AsyncReceiver(_Receiver):
    """An agent of the async framework that tallies what it handles."""

    def __init__(self, url: str, agent_id: str) -> None:
        import mas  # type: ignore[import-not-found]

        super().__init__()
        receiver = self

        class Rx(mas.Agent):  # type: ignore[misc]
            async def on_message(self, message: Any) -> None:
                receiver.record(message.payload)

        self.runner = _Loop()
        self.agent = Rx(agent_id, redis_url=url)
        self.runner.call(async_start(self.agent, url), 30)

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        tally = self.begin(job, out)
        self.done.wait(job.get("timeout", 60))
        return tally.result()

    def close(self) -> None:
        self.runner.call(self.agent.stop(), 60)
        self.runner.close()


class RawSender:
    """``publish()`` of a message of mas_sync's size on ``channel``, one at a time."""

    def __init__(self, url: str, channel: str) -> None:
        self.client, self.channel = redis.Redis.from_url(url), channel

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        def send(i: int) -> None:
            message = {"sender_id": "raw-tx", "target_id": "rx", "timestamp": time.time(),
                       "message_id": str(i), "payload": dict(PAYLOAD, t=time.time())}
            self.client.publish(self.channel, json.dumps(message))

        start = _pace(job.get("rate"), job["n"], send)
        return {"start": start, "end": time.time()}

    def close(self) -> None:
        self.client.close()


class RawStreamSender(RawSender):
    """One ``XADD`` per message (the envelope field, as mas_sync writes it)."""

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        def send(i: int) -> None:
            message = {"sender_id": "raw-tx", "target_id": "rx", "timestamp": time.time(),
                       "message_id": str(i), "payload": dict(PAYLOAD, t=time.time())}
            self.client.xadd(self.channel, {"envelope": json.dumps(message)})

        start = _pace(job.get("rate"), job["n"], send)
        return {"start": start, "end": time.time()}


class AgentSender:
    """A mas_sync agent that sends (job "mode": "send", "batch" or "threads:N")."""

    def __init__(self, url: str, signed: bool) -> None:
        from .. import Agent

        self.agent = Agent(f"tx-{os.getpid()}", redis_url=url,
                           keyring=_bench_keyring() if signed else None)
        self.agent.start()

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        agent, target, n, mode = self.agent, job["target"], job["n"], job.get("mode", "send")
        if mode == "batch":
            start = time.time()
            for first in range(0, n, 100):
                agent.send_many([(target, dict(PAYLOAD, t=time.time()))
                                 for _ in range(first, min(n, first + 100))])
        elif mode.startswith("threads:"):
            count = int(mode.split(":")[1])
            go = threading.Event()

            def work(share: int) -> None:
                go.wait()
                for _ in range(share):
                    agent.send(target, dict(PAYLOAD, t=time.time()))

            workers = [threading.Thread(target=work, args=(n // count + (k < n % count),),
                                        name=f"mas-bench-tx-{k}", daemon=True) for k in range(count)]
            for worker in workers:
                worker.start()
            start = time.time()
            go.set()
            for worker in workers:
                worker.join(120)
        else:
            start = _pace(job.get("rate"), n, lambda i: agent.send(target, dict(PAYLOAD, t=time.time())))
        return {"start": start, "end": time.time()}

    def close(self) -> None:
        self.agent.stop()


class AsyncSender:
    """An agent of the async framework that sends, one ``await send()`` at a time."""

    def __init__(self, url: str) -> None:
        import mas  # type: ignore[import-not-found]

        self.runner = _Loop()
        self.agent = mas.Agent(f"atx-{os.getpid()}", redis_url=url)
        self.runner.call(async_start(self.agent, url), 30)

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        target, n, rate = job["target"], job["n"], job.get("rate")

        async def send_all() -> float:
            start = time.time()
            interval = 1.0 / rate if rate else 0.0
            for i in range(n):
                if interval:
                    delay = start + i * interval - time.time()
                    if delay > 0.0002:
                        await asyncio.sleep(delay)
                await self.agent.send(target, dict(PAYLOAD, t=time.time()))
            return start

        start = self.runner.call(send_all())
        return {"start": start, "end": time.time()}

    def close(self) -> None:
        self.runner.call(self.agent.stop(), 60)
        self.runner.close()


class Responder:
    """A mas_sync agent that answers every request with ``{"ok": True}``."""

    def __init__(self, url: str, agent_id: str) -> None:
        from .. import Agent

        class Echo(Agent):
            def on_message(self, message: Any) -> None:
                if message.expects_reply:
                    message.reply({"ok": True})

        self.agent = Echo(agent_id, redis_url=url)
        self.agent.start()

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        return {}

    def close(self) -> None:
        self.agent.stop()


class Requester:
    """A mas_sync agent that asks ``request()`` n times in a row; reports each round trip."""

    def __init__(self, url: str) -> None:
        from .. import Agent

        self.agent = Agent(f"asker-{os.getpid()}", redis_url=url)
        self.agent.start()

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        target, n = job["target"], job["n"]
        for _ in range(job.get("warm", 0)):
            self.agent.request(target, {"q": 1}, timeout=5)
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.agent.request(target, {"q": 1}, timeout=5)
            rtts.append(time.perf_counter() - t0)
        return {"rtts": rtts}

    def close(self) -> None:
        self.agent.stop()


class AsyncResponder:
    """An agent of the async framework that answers every request (``message.reply()``)."""

    def __init__(self, url: str, agent_id: str) -> None:
        import mas  # type: ignore[import-not-found]

        class Echo(mas.Agent):  # type: ignore[misc]
            async def on_message(self, message: Any) -> None:
                if message.expects_reply:
                    await message.reply({"ok": True})

        self.runner = _Loop()
        self.agent = Echo(agent_id, redis_url=url)
        self.runner.call(async_start(self.agent, url), 30)

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        return {}

    def close(self) -> None:
        self.runner.call(self.agent.stop(), 60)
        self.runner.close()


class AsyncRequester:
    """An agent of the async framework that awaits ``request()`` n times in a row."""

    def __init__(self, url: str) -> None:
        import mas  # type: ignore[import-not-found]

        self.runner = _Loop()
        self.agent = mas.Agent(f"aasker-{os.getpid()}", redis_url=url)
        self.runner.call(async_start(self.agent, url), 30)

    def run(self, job: Dict[str, Any], out: Any) -> Dict[str, Any]:
        target, n = job["target"], job["n"]

        async def ask() -> List[float]:
            for _ in range(job.get("warm", 0)):
                await self.agent.request(target, {"q": 1}, timeout=5)
            rtts = []
            for _ in range(n):
                t0 = time.perf_counter()
                await self.agent.request(target, {"q": 1}, timeout=5)
                rtts.append(time.perf_counter() - t0)
            return rtts

        return {"rtts": self.runner.call(ask())}

    def close(self) -> None:
        self.runner.call(self.agent.stop(), 60)
        self.runner.close()
