"""Benchmarks: ``python -m mas_sync.bench [--quick] [--redis-url URL]``.

Prints a table of what mas_sync does on this machine and this Redis, beside
the ceiling of raw redis-py pub/sub and, when ``mas-framework`` (the async MAS
framework) is installed, the async framework on the same loads:

- one-to-one burst: one sender process, one receiver process;
- batched and multi-threaded sending into one agent;
- latency (P50/P95/P99) at a paced 2,000 and 10,000 messages per second;
- request/reply round trip;
- ``discover()`` among 1,000 and 10,000 registered agents;
- start and stop of 1,000 agents in one process: time, threads,
  connections and memory per agent.

Senders and receivers run in separate processes. Without ``--redis-url`` a
private redis-server is started (and its database is used freely); with one,
the benchmark writes to that Redis's current database and flushes it: never
point it at a Redis you care about. ``--quick`` runs each load briefly, as a
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
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

from . import _bench_roles as roles

Row = Tuple[str, str, str]  # what, figure, note


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

    def paced(self, label: str, kind: str, rate: float, seconds: float) -> None:
        n = int(rate * seconds)
        # One sending process keeps up to about 5,000 msg/s with room to
        # spare on a small machine; a higher rate is offered by several.
        senders = max(1, int(rate // 5_000))
        share, share_rate = n // senders, rate / senders
        n = share * senders
        if kind == "raw":
            receiver, r_args = roles.raw_receiver, (self.url, "agent.rx", n)
            sender_list = [(roles.raw_sender, (self.url, "agent.rx", share, share_rate))] * senders
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
                 f"(offered {offered:,.0f} msg/s by {senders}; {lost:,} lost)")

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
            if self.has_async and not self.quick:
                self.add(f"discover() among {size:,} agents, async framework",
                         f"{self._async_discover() * 1e3:.1f} ms", "(one run)")

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


def kind_count(kind: str) -> int:
    return int(kind.split(":")[1]) if kind.startswith("senders:") else 1


def kind_mode(kind: str) -> str:
    return "send" if kind.startswith("senders:") else kind


def run(url: str, quick: bool) -> List[Row]:
    """Run every scenario against ``url``; returns the table's rows."""
    bench = Bench(url, quick)
    n = 2_000 if quick else 20_000
    seconds = 0.3 if quick else 3.0
    from redis.utils import HIREDIS_AVAILABLE

    print(f"mas_sync benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]},"
          f" redis-py {redis.__version__} {'with' if HIREDIS_AVAILABLE else 'without'} hiredis,"
          f" Redis at {url}" + (" (quick: the figures mean little)" if quick else ""),
          file=sys.stderr)

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
    bench.flush()
    return bench.rows


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
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 agents need descriptors
    from ..testing import local_redis

    with local_redis(args.redis_url) as url:
        rows = run(url, args.quick)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
