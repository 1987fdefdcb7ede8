"""Benchmarks: ``python -m mas_sync.bench [--quick] [--only pubsub|reliable|security] [--redis-url URL]``.

Prints a table of what mas_sync does on this machine and this Redis, beside
the ceiling of raw redis-py pub/sub and, when ``mas-framework`` (the async MAS
framework) is installed, the async framework on the same loads:

- one-to-one burst: one sender process, one receiver process;
- batched and multi-threaded sending into one agent;
- latency (P50/P95/P99) at a paced 2,000 and 10,000 messages per second;
- request/reply round trip;
- ``discover()`` among 1,000 and 10,000 registered agents, read from Redis
  and answered by the discovery cache (repeated; and how soon a new agent
  shows in it);
- start and stop of 1,000 agents in one process: time, threads,
  connections and memory per agent;
- reliable delivery (``delivery="reliable"``), beside raw redis-py
  ``XADD``/``XREADGROUP``/``XACK``: bursts of ``send()`` and ``send_many()``
  (acknowledged), paced latency, one and two instances of an agent whose
  handler sleeps 1 ms, a poison message, a receiving process SIGKILLed every
  1,000 messages (what was lost, duplicated, and how soon the entries it held
  were taken), and Redis restarted (AOF on) in the middle of a run;
- signed messages: bursts with and without signing (the receiver with
  ``require_signed``, so every message is verified and its nonce recorded);
- a receiver's rate limit alone (``RateLimiter``): two instances (processes,
  each with its own client) of one receiver limited to 100 msg/s, a sender
  trying 1,000 msg/s for 10 s; the rate accepted past the burst, and its
  deviation from 100 msg/s; then the same through agents: two instances of
  a reliable agent with ``rate_limit="100/s"``.

``--only pubsub`` runs the first part (everything but reliable delivery and
the protections), ``--only reliable`` the second, ``--only security`` the
third (signing and rate limits). A row with a target says it, and ends with
MISSED when the figure misses it.

Senders and receivers run in separate processes. Without ``--redis-url`` a
private redis-server is started (and its database is used freely); with one,
the benchmark writes to that Redis's current database and flushes it: never
point it at a Redis you care about (the Redis restart always uses a private
redis-server, with AOF on). ``--quick`` runs each load briefly, as a
smoke test of the harness; its figures mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

from .._rates import RateLimit
from . import _bench_roles as roles

Row = Tuple[str, str, str]  # what, figure, note

#: The stream of the raw redis-py rows of reliable delivery (mas_sync's key for agent "rx").
RAW_STREAM = "agent.stream:rx"


# -- the scenarios, run from the parent ------------------------------------------


class Bench:
    """Runs the scenarios and collects the rows of the table."""

    def __init__(self, url: str, quick: bool) -> None:
        self.url = url
        self.quick = quick
        self.ctx = multiprocessing.get_context("spawn")
        self.rows: List[Row] = []
        self.results: Dict[str, float] = {}
        try:
            import mas  # type: ignore[import-not-found]  # noqa: F401

            self.has_async = True
        except ImportError:
            self.has_async = False

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushdb()

    def add(self, what: str, figure: str, note: str = "") -> None:
        self.rows.append((what, figure, note))
        print(f"  {what}: {figure} {note}".rstrip(), file=sys.stderr, flush=True)

    def pair(self, receiver: Callable, r_args: tuple, senders: List[Tuple[Callable, tuple]]) -> Dict[str, Any]:
        self.flush()
        out, ready = self.ctx.Queue(), self.ctx.Event()
        rx = self.ctx.Process(target=receiver, args=r_args + (ready, out))
        rx.start()
        if not ready.wait(30):
            rx.terminate()
            raise RuntimeError("the receiver did not start")
        txs = [self.ctx.Process(target=fn, args=args + (out,)) for fn, args in senders]
        for tx in txs:
            tx.start()
        results = [out.get(timeout=180) for _ in range(len(txs) + 1)]
        for proc in txs + [rx]:
            proc.join(30)
        received = next(r for r in results if "got" in r)
        starts = [r["start"] for r in results if "start" in r]
        received["elapsed"] = received["last"] - min(starts)
        ends = [r["end"] for r in results if "end" in r]
        received["send_seconds"] = max(ends) - min(starts) if ends else None
        return received

    def burst(self, kind: str, n: int) -> Tuple[float, int]:
        """One burst of ``n`` messages; returns (messages per second, messages lost)."""
        if kind == "raw":
            result = self.pair(roles.raw_receiver, (self.url, "agent.rx", n),
                               [(roles.raw_sender, (self.url, "agent.rx", n, None))])
        elif kind == "raw-stream":
            result = self.pair(roles.raw_stream_receiver, (self.url, RAW_STREAM, n),
                               [(roles.raw_stream_sender, (self.url, RAW_STREAM, n, None))])
        elif kind.startswith("reliable:"):
            mode = kind.split(":", 1)[1]
            result = self.pair(roles.reliable_receiver, (self.url, "rx", n),
                               [(roles.sync_sender, (self.url, "rx", n, None, mode))])
        elif kind == "signed":
            result = self.pair(roles.signed_receiver, (self.url, "rx", n),
                               [(roles.sync_sender, (self.url, "rx", n, None, "signed"))])
            if result.get("refused"):
                raise RuntimeError(f"the signed receiver refused {result['refused']} messages")
        elif kind == "async":
            result = self.pair(roles.async_receiver, (self.url, "rx", n),
                               [(roles.async_sender, (self.url, "rx", n, None))])
        else:
            count = kind_count(kind)
            senders = [(roles.sync_sender, (self.url, "rx", n // count, None, kind_mode(kind)))] * count
            result = self.pair(roles.sync_receiver, (self.url, "rx", n), senders)
        rate = result["got"] / result["elapsed"] if result["elapsed"] > 0 else 0.0
        return rate, n - result["got"]

    def bursts(self, loads: Sequence[Tuple[str, str]], n: int, rounds: int) -> Dict[str, float]:
        """Run the loads in turn, ``rounds`` times (so that drift hits all alike); report medians."""
        rates: Dict[str, List[float]] = {kind: [] for _, kind in loads}
        lost: Dict[str, int] = {kind: 0 for _, kind in loads}
        for _ in range(rounds):
            for _, kind in loads:
                rate, missing = self.burst(kind, n)
                rates[kind].append(rate)
                lost[kind] += missing
        medians = {}
        for label, kind in loads:
            medians[kind] = statistics.median(rates[kind])
            spread = f"{min(rates[kind]):,.0f}-{max(rates[kind]):,.0f}" if rounds > 1 else ""
            note = f"(median of {rounds}: {spread})" if rounds > 1 else ""
            if lost[kind]:
                note += f" {lost[kind]:,} lost"
            self.add(label, f"{medians[kind]:,.0f} msg/s", note)
        return medians

    def paced(self, label: str, kind: str, rate: float, seconds: float, target: str = "") -> float:
        n = int(rate * seconds)
        # One sending process keeps up to about 5,000 msg/s with room to
        # spare on a small machine; a higher rate is offered by several.
        senders = max(1, int(rate // 5_000))
        share, share_rate = n // senders, rate / senders
        n = share * senders
        if kind == "raw":
            receiver, r_args = roles.raw_receiver, (self.url, "agent.rx", n)
            sender_list = [(roles.raw_sender, (self.url, "agent.rx", share, share_rate))] * senders
        elif kind == "raw-stream":
            receiver, r_args = roles.raw_stream_receiver, (self.url, RAW_STREAM, n)
            sender_list = [(roles.raw_stream_sender, (self.url, RAW_STREAM, share, share_rate))] * senders
        elif kind == "reliable":
            receiver, r_args = roles.reliable_receiver, (self.url, "rx", n)
            sender_list = [(roles.sync_sender, (self.url, "rx", share, share_rate, "send"))] * senders
        elif kind == "async":
            receiver, r_args = roles.async_receiver, (self.url, "rx", n)
            sender_list = [(roles.async_sender, (self.url, "rx", share, share_rate))] * senders
        else:
            receiver, r_args = roles.sync_receiver, (self.url, "rx", n)
            sender_list = [(roles.sync_sender, (self.url, "rx", share, share_rate, "send"))] * senders
        result = self.pair(receiver, r_args, sender_list)
        p = roles.percentiles(result["latencies"])
        lost = n - result["got"]
        offered = n / result["send_seconds"] if result["send_seconds"] else 0.0
        self.results[f"{kind}-p99-{int(rate)}"] = p["p99"]
        self.add(label, f"P50 {p['p50'] * 1e3:.2f} / P95 {p['p95'] * 1e3:.2f} / P99 {p['p99'] * 1e3:.2f} ms",
                 f"(offered {offered:,.0f} msg/s by {senders}; {lost:,} lost{target})")
        return p["p99"]

    def request_reply(self, n: int) -> None:
        self.flush()
        ready, stop, out = self.ctx.Event(), self.ctx.Event(), self.ctx.Queue()
        responder = self.ctx.Process(target=roles.responder, args=(self.url, "echo", ready, stop))
        responder.start()
        ready.wait(30)
        asker = self.ctx.Process(target=roles.requester, args=(self.url, "echo", n, out))
        asker.start()
        rtts = out.get(timeout=180)["rtts"]
        asker.join(30)
        stop.set()
        responder.join(30)
        p = roles.percentiles(rtts)
        self.results["rtt-p50"] = p["p50"]
        self.add("request/reply round trip, mas_sync",
                 f"P50 {p['p50'] * 1e3:.2f} / P99 {p['p99'] * 1e3:.2f} ms", f"({n:,} requests)")

    def discover(self, sizes: Sequence[int]) -> None:
        from .. import Agent

        for size in sizes:
            self.flush()
            with redis.Redis.from_url(self.url) as client:
                pipe = client.pipeline(transaction=False)
                for i in range(size):
                    pipe.hset(f"agent:reg-{i:05d}", mapping={
                        "id": f"reg-{i:05d}", "capabilities": json.dumps(["even" if i % 2 else "odd"]),
                        "metadata": "{}", "status": "ACTIVE", "token": "t",
                        "registered_at": str(time.time())})
                    pipe.set(f"agent:reg-{i:05d}:heartbeat", "1", ex=600)
                pipe.execute()
            with Agent("discoverer", redis_url=self.url) as agent:
                times = []
                for _ in range(3 if self.quick else 7):
                    t0 = time.perf_counter()
                    found = agent.discover(["even"])
                    times.append(time.perf_counter() - t0)
                assert len(found) == size // 2
            median = statistics.median(times)
            self.results[f"discover-{size}"] = median
            self.add(f"discover() among {size:,} agents, mas_sync", f"{median * 1e3:.1f} ms", "(median)")
            self._discover_cached(size)
            if self.has_async and not self.quick:
                self.add(f"discover() among {size:,} agents, async framework",
                         f"{self._async_discover() * 1e3:.1f} ms", "(one run)")

    def _discover_cached(self, size: int) -> None:
        """Rows of the discovery cache among ``size`` agents: a repeat, and a newcomer's delay."""
        from .. import Agent, AgentRegistry

        with Agent("discoverer", redis_url=self.url, discovery_cache=60.0) as agent:
            agent.discover(["even"])
            times = []
            for _ in range(3 if self.quick else 7):
                t0 = time.perf_counter()
                agent.discover(["even"])
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            self.results[f"discover-cached-{size}"] = median
            self.add(f"discover() among {size:,} agents, cached, repeated",
                     f"{median * 1e3:.2f} ms", "(median)")
            with redis.Redis.from_url(self.url, decode_responses=True) as client:
                t0 = time.perf_counter()
                AgentRegistry(client).register("newcomer", ["even"], heartbeat_ttl=600)
                pause = threading.Event()
                while not any(r["id"] == "newcomer" for r in agent.discover(["even"])):
                    if time.perf_counter() - t0 > 10:
                        break
                    pause.wait(0.0005)
                took = time.perf_counter() - t0
                client.delete("agent:newcomer", "agent:newcomer:heartbeat")
            self.results[f"discover-cached-new-{size}"] = took
            self.add(f"a new agent in the cache's answer, among {size:,}", f"{took * 1e3:.1f} ms",
                     "(register() to discover(), one run)")

    def _async_discover(self) -> float:
        import mas  # type: ignore[import-not-found]

        async def main() -> float:
            agent = mas.Agent("async-discoverer", redis_url=self.url)
            await roles.async_start(agent, self.url)
            t0 = time.perf_counter()
            await agent.discover(["even"])
            took = time.perf_counter() - t0
            await agent.stop()
            return took

        return asyncio.run(main())

    def many_agents(self, n: int) -> None:
        self.flush()
        out = self.ctx.Queue()
        proc = self.ctx.Process(target=roles.many_agents, args=(self.url, n, out))
        proc.start()
        r = out.get(timeout=300)
        proc.join(30)
        self.results["many-start"] = r["start"]
        self.add(f"start {n:,} agents in one process", f"{r['start']:.2f} s",
                 f"(stop {r['stop']:.2f} s; threads left after stop: {r['left']})")
        self.add(f"{n:,} agents: per agent", f"{r['threads'] / n:.1f} threads, {r['clients'] / n:.1f} connections,"
                 f" {r['rss_kib'] / n:.0f} KiB", "")

    # -- reliable delivery -------------------------------------------------------

    def instances(self, n: int, workers: int) -> Dict[int, float]:
        """Rates of one and of two instances of a reliable agent whose handler sleeps 1 ms."""
        rates: Dict[int, float] = {}
        for count in (1, 2):
            self.flush()
            counter, finished = self.ctx.Value("l", 0), self.ctx.Value("d", 0.0)
            stop, out = self.ctx.Event(), self.ctx.Queue()
            procs = []
            for k in range(count):
                ready = self.ctx.Event()
                proc = self.ctx.Process(target=roles.instance_receiver, args=(
                    self.url, "work", f"i{k}", workers, n, counter, finished, ready, stop))
                proc.start()
                procs.append(proc)
                if not ready.wait(30):
                    raise RuntimeError("an instance did not start")
            tx = self.ctx.Process(target=roles.sync_sender, args=(self.url, "work", n, None, "batch", out))
            tx.start()
            start = out.get(timeout=180)["start"]
            deadline = time.monotonic() + 300
            while counter.value < n and time.monotonic() < deadline:
                time.sleep(0.01)
            handled = counter.value
            stop.set()
            for proc in procs + [tx]:
                proc.join(30)
            rates[count] = handled / (finished.value - start) if finished.value > start else 0.0
            what = "one instance" if count == 1 else f"{count} instances (processes)"
            self.add(f"reliable, {what}, handler sleeps 1 ms, {workers} worker{'s' if workers > 1 else ''}",
                     f"{rates[count]:,.0f} msg/s", f"({n:,} messages; {n - handled:,} not handled)")
        ratio = rates[2] / rates[1] if rates[1] else 0.0
        self.add(f"ratio 2 instances / 1, {workers} worker{'s' if workers > 1 else ''}", f"{ratio:.2f}",
                 _target(ratio >= 1.6, "(target >= 1.6)") if workers == 1 else "(no target)")
        return rates

    def poison(self, attempts: int) -> None:
        """A message whose handler always raises: where it ends, after how many deliveries."""
        from .. import Agent
        from ..testing import wait_until

        self.flush()
        calls: List[int] = []

        class Poisoned(Agent):
            def on_message(self, message: Any) -> None:
                calls.append(message.attempt)
                raise RuntimeError("poison")

        payload = {"action": "poison", "text": "x" * 64}
        with Poisoned("poisoned", redis_url=self.url, delivery="reliable", max_attempts=attempts,
                      retry_delay=0.01) as agent, Agent("poisoner", redis_url=self.url) as sender:
            message_id = sender.send("poisoned", payload)
            wait_until(lambda: bool(agent.dead_letters()), timeout=30, message="no dead letter")
            letters = agent.dead_letters()
        letter = letters[0]
        full = (letter.message is not None and letter.message.message_id == message_id
                and letter.message.payload == payload and letter.message.sender_id == "poisoner"
                and letter.message.target_id == "poisoned")
        ok = letter.attempts == attempts and calls == list(range(1, attempts + 1)) and full and len(letters) == 1
        self.add("poison message to agent.dlq:{id}, mas_sync",
                 f"after {letter.attempts} deliveries, {len(calls)} handler calls",
                 _target(ok, f"(target exactly max_attempts = {attempts}; full message kept:"
                             f" {'yes' if full else 'no'})"))

    def chaos(self, n: int, every: int, visibility: float) -> None:
        """SIGKILL the receiving process every ``every`` messages received; restart it, renamed."""
        self.flush()
        agent_id, stream = "victim", "agent.stream:victim"
        client = redis.Redis.from_url(self.url)
        kills_wanted = n // every
        # Each life has its own stop event: an event that a killed process
        # waited on can no longer be set (set() waits for its waiters to wake).
        stop = self.ctx.Event()

        def launch(life: int, kill_after: int) -> Any:
            nonlocal stop
            ready, stop = self.ctx.Event(), self.ctx.Event()
            proc = self.ctx.Process(target=roles.chaos_receiver, args=(
                self.url, agent_id, f"life{life}", kill_after, visibility, ready, stop))
            proc.start()
            if not ready.wait(30):
                raise RuntimeError("the chaos receiver did not start")
            return proc

        life = 0
        proc = launch(life, every)
        out = self.ctx.Queue()
        tx = self.ctx.Process(target=roles.indexed_sender, args=(self.url, agent_id, n, None, out))
        tx.start()
        sent: Optional[Dict[str, Any]] = None
        kills: List[Dict[str, Any]] = []
        t0 = time.monotonic()
        deadline = t0 + 600
        while time.monotonic() < deadline:
            if sent is None and not out.empty():
                sent = out.get()
            proc.join(0.005)
            if proc.exitcode is not None:
                killed_at = time.monotonic()
                dead = f"{agent_id}-life{life}"
                held = [p["message_id"] for p in client.xpending_range(stream, "agents", "-", "+", 100_000, dead)]
                pipe = client.pipeline(transaction=False)
                for entry_id in held:
                    pipe.xrange(stream, entry_id, entry_id)
                indices = set()
                for found in pipe.execute():
                    for _, fields in found:
                        indices.add(json.loads(fields[b"envelope"])["payload"]["i"])
                kills.append({"at": killed_at, "dead": dead, "held": len(held), "indices": indices,
                              "code": proc.exitcode, "reclaimed": None if held else 0.0})
                life += 1
                proc = launch(life, every if len(kills) < kills_wanted else 0)
            now = time.monotonic()
            open_kills = [k for k in kills if k["reclaimed"] is None]
            if open_kills:
                holding = {c["name"].decode(): c["pending"]
                           for c in client.xinfo_consumers(stream, "agents")}
                for k in open_kills:
                    if holding.get(k["dead"], 0) == 0:
                        k["reclaimed"] = now - k["at"]
            if (sent is not None and not open_kills and client.hlen(roles.CHAOS_HANDLED) >= len(sent["acked"])
                    and int(client.xpending(stream, "agents")["pending"]) == 0):
                break
        if sent is None:
            sent = out.get(timeout=30)
        stop.set()
        proc.join(30)
        tx.join(30)
        counts = {int(k): int(v) for k, v in client.hgetall(roles.CHAOS_HANDLED).items()}
        dead_letters = client.xlen("agent.dlq:victim")
        client.close()
        acked = set(sent["acked"])
        lost = acked - set(counts)
        duplicates = {i for i, c in counts.items() if c > 1}
        in_flight = set().union(*(k["indices"] for k in kills)) if kills else set()
        stray = duplicates - in_flight
        reclaims = [k["reclaimed"] for k in kills]
        slowest = max((r for r in reclaims if r is not None), default=0.0)
        unreclaimed = sum(r is None for r in reclaims)
        self.add(f"chaos: {n:,} messages, SIGKILL every {every:,} received: not handled", f"{len(lost):,}",
                 _target(not lost and not unreclaimed,
                         f"(target 0; {len(kills)} kills; {len(acked):,} sent; {dead_letters} dead-lettered)"))
        self.add("chaos: duplicates", f"{len(duplicates):,}",
                 _target(not stray, f"(target: only among the {len(in_flight):,} in flight at the kills;"
                                    f" {len(stray):,} others)"))
        self.add(f"chaos: reclaim after a kill (visibility_timeout {visibility:g} s)",
                 f"max {slowest:.2f} s",
                 _target(slowest <= visibility + 1 and not unreclaimed,
                         f"(target <= {visibility + 1:g} s; each: "
                         + ", ".join("-" if r is None else f"{r:.1f}" for r in reclaims) + ")"))

    def rate_limit(self, rate: float, offered: float, seconds: float, instances: int = 2) -> None:
        """A receiver's limit alone: ``instances`` RateLimiters (processes, clients) of one agent."""
        self.flush()
        out, go, shared_start = self.ctx.Queue(), self.ctx.Event(), self.ctx.Value("d", 0.0)
        readies = [self.ctx.Event() for _ in range(instances)]
        procs = [self.ctx.Process(target=roles.rate_limited_instance,
                                  args=(self.url, "rx", rate, offered, i, instances, seconds,
                                        readies[i], go, shared_start, out))
                 for i in range(instances)]
        for proc in procs:
            proc.start()
        if not all(ready.wait(60) for ready in readies):
            for proc in procs:
                proc.terminate()
            raise RuntimeError("the rate-limited instances did not start")
        start_at = shared_start.value = time.time() + 0.05
        go.set()
        results = [out.get(timeout=seconds + 60) for _ in procs]
        for proc in procs:
            proc.join(30)
        allowed = sorted(at for result in results for at in result["allowed"])
        attempts = sum(result["attempts"] for result in results)
        refused = [r["first_refused"] for r in results if r["first_refused"] is not None]
        failed_open = sum(result["failed_open"] for result in results)
        limit = RateLimit(rate)
        # Past the burst (from the first refusal on), the limit alone decides.
        since = min(refused) if refused else start_at
        end = start_at + seconds
        after = sum(1 for at in allowed if at > since)
        sustained = after / (end - since) if end > since else 0.0
        deviation = (sustained - rate) / rate
        label = (f"rate limit {rate:,.0f}/s (burst {limit.burst}), {instances} instances,"
                 f" a sender trying {offered:,.0f} msg/s for {seconds:g} s")
        self.results["rate-limit-deviation"] = deviation
        tried = attempts / (max(r["last"] for r in results) - start_at)
        self.add(label, f"{sustained:.1f} msg/s accepted",
                 _target(abs(deviation) <= 0.05 and not failed_open,
                         f"(deviation {deviation:+.1%} past the burst; {len(allowed):,} of"
                         f" {attempts:,} taken in all, the burst included; {tried:,.0f} msg/s"
                         f" tried; target within +-5%)"))
        p = roles.percentiles([t for result in results for t in result["round_trips"]])
        self.add("RateLimiter.allow(), one EVALSHA", f"P50 {p['p50'] * 1e3:.2f} / P99"
                 f" {p['p99'] * 1e3:.2f} ms", f"({attempts:,} calls; {failed_open} failed open)")

    def rate_limited_agents(self, rate: float, offered: float, seconds: float) -> None:
        """The limit through agents: two instances of a reliable agent with ``rate_limit``."""
        self.flush()
        out, stop = self.ctx.Queue(), self.ctx.Event()
        readies = [self.ctx.Event() for _ in range(2)]
        receivers = [self.ctx.Process(target=roles.limited_receiver,
                                      args=(self.url, "rx", f"i{i}", rate, readies[i], stop, out))
                     for i in range(2)]
        for proc in receivers:
            proc.start()
        if not all(ready.wait(60) for ready in readies):
            stop.set()
            raise RuntimeError("the rate-limited agents did not start")
        n = int(offered * seconds)
        sender = self.ctx.Process(target=roles.sync_sender,
                                  args=(self.url, "rx", n, offered, "send", out))
        sender.start()
        sent = out.get(timeout=seconds + 120)
        sender.join(30)
        # Every message is handled or refused: wait for the last to be decided.
        with redis.Redis.from_url(self.url) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                groups = client.xinfo_groups("agent.stream:rx")
                if groups and groups[0].get("lag", 0) == 0 and groups[0]["pending"] == 0:
                    break
                time.sleep(0.1)
        stop.set()
        results = [out.get(timeout=60) for _ in receivers]
        for proc in receivers:
            proc.join(30)
        handled = sum(r["handled"] for r in results)
        refused = sum(r["refused"] for r in results)
        burst = RateLimit(rate).burst
        elapsed = sent["end"] - sent["start"]
        sustained = (handled - burst) / elapsed if elapsed > 0 else 0.0
        deviation = (sustained - rate) / rate
        self.add(f"rate_limit=\"{rate:,.0f}/s\", 2 instances of a reliable agent, a sender"
                 f" trying {offered:,.0f} msg/s", f"{sustained:.1f} msg/s handled",
                 _target(abs(deviation) <= 0.05,
                         f"(deviation {deviation:+.1%} past the burst of {burst}; {handled:,}"
                         f" handled, {refused:,} refused as rate_limited, of {n:,} sent in"
                         f" {elapsed:.1f} s; target within +-5%)"))

    def outage(self, n: int, rate: float) -> None:
        """Restart Redis (SHUTDOWN, start, AOF on) while a reliable agent receives."""
        from ..testing import RedisServer, find_redis_server

        label = "Redis restarted mid-run (AOF): acknowledged sends not handled"
        if find_redis_server() is None:
            self.add(label, "skipped", "(no redis-server to restart)")
            return
        with RedisServer(extra_args=["--appendonly", "yes"]) as server:
            url = server.url
            handled = self.ctx.Value("l", 0)
            ready, stop, rx_out, tx_out = self.ctx.Event(), self.ctx.Event(), self.ctx.Queue(), self.ctx.Queue()
            rx = self.ctx.Process(target=roles.outage_receiver, args=(url, "steady", handled, ready, stop, rx_out))
            rx.start()
            if not ready.wait(30):
                raise RuntimeError("the receiver did not start")
            tx = self.ctx.Process(target=roles.indexed_sender, args=(url, "steady", n, rate, tx_out))
            tx.start()
            deadline = time.monotonic() + 120
            while handled.value < n * 0.4 and time.monotonic() < deadline:
                time.sleep(0.005)
            t0 = time.monotonic()
            with redis.Redis.from_url(url) as client:
                client.shutdown()
            assert server.process is not None
            server.process.wait(30)
            server.process = None
            server.start()
            down = time.monotonic() - t0
            sent = tx_out.get(timeout=180)
            acked = set(sent["acked"])
            deadline = time.monotonic() + 60
            while handled.value < len(acked) and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            got = rx_out.get(timeout=60)
            rx.join(30)
            tx.join(30)
        lost = acked - set(got["handled"])
        self.add(label, f"{len(lost):,} of {len(acked):,}",
                 _target(not lost, f"(target 0; Redis down {down:.2f} s; {len(sent['failed'])} send() raised)"))

def kind_count(kind: str) -> int:
    return int(kind.split(":")[1]) if kind.startswith("senders:") else 1


def kind_mode(kind: str) -> str:
    return "send" if kind.startswith("senders:") else kind


def _target(met: bool, note: str) -> str:
    """``note``, marked when its target was missed."""
    return note if met else f"{note} MISSED"


def run(url: str, quick: bool, only: Optional[str] = None) -> List[Row]:
    """Run the scenarios (``only`` "pubsub", "reliable" or "security": that part) against ``url``.

    Returns:
        The table's rows.
    """
    bench = Bench(url, quick)
    n = 2_000 if quick else 20_000
    seconds = 0.3 if quick else 3.0
    from redis.utils import HIREDIS_AVAILABLE

    print(f"mas_sync benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]},"
          f" redis-py {redis.__version__} {'with' if HIREDIS_AVAILABLE else 'without'} hiredis,"
          f" Redis at {url}" + (" (quick: the figures mean little)" if quick else ""),
          file=sys.stderr)
    if only in (None, "pubsub"):
        run_pubsub(bench, n, seconds)
    if only in (None, "reliable"):
        run_reliable(bench, n, seconds)
    if only in (None, "security"):
        run_security(bench, n)
    bench.flush()
    return bench.rows


def run_pubsub(bench: Bench, n: int, seconds: float) -> None:
    """The rows of pub/sub delivery (the default), and the rest of the library."""
    quick = bench.quick
    loads = [("one-to-one burst, raw redis-py publish (ceiling)", "raw"),
             ("one-to-one burst, mas_sync send()", "send")]
    if bench.has_async:
        loads.append(("one-to-one burst, async framework send()", "async"))
    rates = bench.bursts(loads, n, 1 if quick else 3)
    bench.add("ratio mas_sync / raw redis-py", f"{rates['send'] / rates['raw']:.2f}", "(target >= 0.90)")
    if bench.has_async:
        bench.add("ratio mas_sync / async framework", f"{rates['send'] / rates['async']:.2f}",
                  "(target >= 1.3)")
    bench.bursts([("send_many(), 100 a batch, into one agent", "batch"),
                  ("4 threads of one agent send() into one agent", "threads:4"),
                  ("4 sender processes into one agent", "senders:4")], n * 2, 1)
    for rate in (2_000, 10_000):
        bench.paced(f"paced {rate:,} msg/s, raw redis-py", "raw", rate, seconds)
        bench.paced(f"paced {rate:,} msg/s, mas_sync", "send", rate, seconds)
        if bench.has_async:
            bench.paced(f"paced {rate:,} msg/s, async framework", "async", rate, seconds)
    bench.request_reply(300 if quick else 5_000)
    bench.discover([1_000, 10_000] if not quick else [1_000])
    bench.many_agents(100 if quick else 1_000)


def run_reliable(bench: Bench, n: int, seconds: float) -> None:
    """The rows of reliable delivery (a stream inbox), beside raw redis-py streams."""
    quick = bench.quick
    rates = bench.bursts([("reliable burst, raw redis-py XADD/XREADGROUP/XACK (ceiling)", "raw-stream"),
                          ("reliable burst, mas_sync send()", "reliable:send"),
                          ("pub/sub burst, mas_sync send() (same rounds)", "send")], n, 1 if quick else 3)
    ratio = rates["reliable:send"] / rates["send"] if rates["send"] else 0.0
    bench.add("ratio reliable / pub/sub send()", f"{ratio:.2f}", _target(ratio >= 0.8, "(target >= 0.80)"))
    batch = bench.bursts([("reliable send_many(), 100 a batch, acknowledged", "reliable:batch")], n * 2, 1)
    if not quick and batch["reliable:batch"] < 10_000:
        bench.rows[-1] = bench.rows[-1][:2] + ((bench.rows[-1][2] + " (target >= 10,000) MISSED").strip(),)
    elif not quick:
        bench.rows[-1] = bench.rows[-1][:2] + ((bench.rows[-1][2] + " (target >= 10,000)").strip(),)
    bench.paced("paced 2,000 msg/s, raw redis-py streams", "raw-stream", 2_000, seconds)
    p99 = bench.paced("paced 2,000 msg/s, mas_sync reliable", "reliable", 2_000, seconds)
    if not quick:
        what, figure, note = bench.rows[-1]
        bench.rows[-1] = (what, figure, note[:-1] + "; target P99 <= 5 ms)" + ("" if p99 <= 0.005 else " MISSED"))
    # One sender: its messages are handled in order, one at a time, whatever
    # max_workers; a second instance adds a second handler at work.
    bench.instances(1_000 if quick else 10_000, 1)
    bench.poison(3)
    bench.chaos(1_000 if quick else 10_000, 500 if quick else 1_000, 2.0)
    bench.outage(1_000 if quick else 10_000, 2_000.0)


def run_security(bench: Bench, n: int) -> None:
    """The rows of the opt-in protections: what signing and verifying cost."""
    rates = bench.bursts([("pub/sub burst, mas_sync send(), unsigned", "send"),
                          ("pub/sub burst, signed, receiver require_signed", "signed")],
                         n, 1 if bench.quick else 5)
    ratio = rates["signed"] / rates["send"] if rates["send"] else 0.0
    bench.add("ratio signed / unsigned", f"{ratio:.2f}", _target(ratio >= 0.9, "(target >= 0.90)"))
    seconds = 0.5 if bench.quick else 10.0
    bench.rate_limit(100.0, 1_000.0, seconds)
    bench.rate_limited_agents(100.0, 1_000.0, seconds)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a reStructuredText table."""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    widths = [max(w, 4) for w in widths]
    rule = "  ".join("=" * w for w in widths)
    header = "  ".join(h.ljust(w) for h, w in zip(("load", "result", "note"), widths)).rstrip()
    lines = [rule, header, rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv``, run the benchmarks and print the table."""
    parser = argparse.ArgumentParser(prog="python -m mas_sync.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="Redis to use; its database is flushed (default: a private redis-server)")
    parser.add_argument("--quick", action="store_true", help="short loads, to check the harness")
    parser.add_argument("--only", choices=("pubsub", "reliable", "security"),
                        help="run one part: pub/sub delivery (and the rest), reliable delivery,"
                             " or the opt-in protections (signing, rate limits)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 agents need descriptors
    from ..testing import local_redis

    with local_redis(args.redis_url) as url:
        rows = run(url, args.quick, args.only)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
