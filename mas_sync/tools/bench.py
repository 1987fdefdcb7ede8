"""Benchmarks: ``python -m mas_sync.bench [--quick] [--only pubsub|reliable|security|behaviours] [--json PATH]``.

Prints a table of what mas_sync does on this machine and this Redis, beside
the ceiling of raw redis-py pub/sub and, when ``mas-framework`` (the async MAS
framework) is installed, the async framework on the same loads:

- one-to-one burst: one sender process, one receiver process;
- one agent's ``send()`` from 1, 4 and 16 threads; batches (``send_many()``)
  and four sender processes into one agent;
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
  trying 1,000 msg/s for 4 s; the rate accepted past the burst, and its
  deviation from 100 msg/s; then the same through agents: two instances of
  a reliable agent with ``rate_limit="100/s"``;
- behaviours, in one process: 1,000 requests with ``request()`` in a row and
  with ``request_future()`` then waiting for all; ``request_many()`` over 45
  answering agents, and over 50 of which 5 are silent (returned within its
  timeout +-10%); handled messages per second with and without
  ``handler_timeout``; how far an ``@periodic(0.01)`` method's runs are
  behind its grid.

The loads that are compared run in **interleaved rounds**: a group starts its
processes once (a receiver and its senders per load), then each round runs
every load of the group once in turn, so that drift and the neighbours' noise
hit all alike. A row shows the median and the min-max over its rounds (a
latency row: the median P50 and P99 of its runs, and the worst P99), and the
ratios to the peers follow as rows of their own.

``--only pubsub`` runs the first part (everything but reliable delivery, the
protections and the behaviours), ``--only reliable`` the second, ``--only
security`` the third (signing and rate limits), ``--only behaviours`` the
fourth. A row with a target says it, and ends with
MISSED when the figure misses it. ``--json PATH`` (``-`` for standard output)
writes every row with its samples, its target and whether it was met, and the
facts of the machine (with what it charges for a thread's wake and a
``PUBLISH`` round trip, see :func:`machine_costs`); ``--readme PATH`` prints
the README's tables from such a file, running nothing.

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
import datetime
import json
import multiprocessing
import os
import platform
import queue
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import redis

from .._errors import MASConnectionError
from .._rates import RateLimit
from .._redis import check_redis_url, close_client, make_client, ping
from . import _bench_roles as roles


class Row(NamedTuple):
    """One row of the table: the three columns, then what ``--json`` adds."""

    what: str
    figure: str
    note: str = ""
    part: str = ""
    samples: Tuple[Any, ...] = ()
    target: Optional[str] = None
    met: Optional[bool] = None


#: The stream of the raw redis-py rows of reliable delivery.
RAW_STREAM = "agent.stream:rx-stream"

#: What each load of the interleaved groups runs: (receiver class, its
#: arguments after the URL, sender class, its arguments after the URL, job).
#: A receiver listens on a channel or agent id of its own, so that the
#: receivers of a group can all be up at once.
LOADS: Dict[str, Tuple[str, tuple, str, tuple, Dict[str, Any]]] = {
    "raw": ("RawReceiver", ("agent.rx-raw",), "RawSender", ("agent.rx-raw",), {}),
    "send": ("AgentReceiver", ("rx-send", "pubsub"), "AgentSender", (False,),
             {"target": "rx-send", "mode": "send"}),
    "async": ("AsyncReceiver", ("rx-async",), "AsyncSender", (), {"target": "rx-async"}),
    "batch": ("AgentReceiver", ("rx-batch", "pubsub"), "AgentSender", (False,),
              {"target": "rx-batch", "mode": "batch"}),
    "threads:1": ("AgentReceiver", ("rx-threads1", "pubsub"), "AgentSender", (False,),
                  {"target": "rx-threads1", "mode": "threads:1"}),
    "threads:4": ("AgentReceiver", ("rx-threads4", "pubsub"), "AgentSender", (False,),
                  {"target": "rx-threads4", "mode": "threads:4"}),
    "threads:16": ("AgentReceiver", ("rx-threads16", "pubsub"), "AgentSender", (False,),
                   {"target": "rx-threads16", "mode": "threads:16"}),
    "senders:4": ("AgentReceiver", ("rx-senders4", "pubsub"), "AgentSender", (False,),
                  {"target": "rx-senders4", "mode": "send"}),
    "signed": ("AgentReceiver", ("rx-signed", "signed"), "AgentSender", (True,),
               {"target": "rx-signed", "mode": "send"}),
    "raw-stream": ("RawStreamReceiver", (RAW_STREAM,), "RawStreamSender", (RAW_STREAM,), {}),
    "reliable": ("AgentReceiver", ("rx-reliable", "reliable"), "AgentSender", (False,),
                 {"target": "rx-reliable", "mode": "send"}),
    "reliable:batch": ("AgentReceiver", ("rx-rbatch", "reliable"), "AgentSender", (False,),
                       {"target": "rx-rbatch", "mode": "batch"}),
}


class Worker:
    """A child process serving the jobs of one endpoint of :mod:`._bench_roles`, until closed."""

    def __init__(self, ctx: Any, make: str, args: tuple) -> None:
        self.make = make
        self.inbox, self.out = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=roles.serve, args=(make, args, self.inbox, self.out),
                                name=f"mas-bench-{make}", daemon=True)
        self.proc.start()

    def submit(self, **job: Any) -> None:
        self.inbox.put(job)

    def get(self, timeout: float = 180.0) -> Dict[str, Any]:
        """The next answer; raises RuntimeError if the process died or stays silent."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.out.get(timeout=0.5)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the {self.make} process ended (exit code {self.proc.exitcode})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {self.make} process did not answer in {timeout:g} s")

    def close(self) -> None:
        if self.proc.is_alive():
            self.inbox.put(None)
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _median_range(values: Sequence[float], fmt: str) -> str:
    """``"median (min-max)"`` of ``values`` formatted by ``fmt``, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


# -- the scenarios, run from the parent ------------------------------------------


class Bench:
    """Runs the scenarios and collects the rows of the table."""

    def __init__(self, url: str, quick: bool, rounds: Optional[int] = None) -> None:
        self.url = url
        self.quick = quick
        self.rounds = rounds
        self.part = ""
        self.began = time.monotonic()
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

    def add(self, what: str, figure: str, note: str = "", *, samples: Sequence[Any] = (),
            target: Optional[str] = None, met: Optional[bool] = None) -> None:
        """Add a row; one whose target (``target``, said in ``note``) was missed ends with MISSED."""
        if met is False:
            note = f"{note} MISSED".strip()
        self.rows.append(Row(what, figure, note, self.part, tuple(samples), target, met))
        print(f"  [{time.monotonic() - self.began:5.1f} s] {what}: {figure} {note}".rstrip(),
              file=sys.stderr, flush=True)

    def ratio(self, what: str, value: float, target: Optional[float] = None, note: str = "") -> bool:
        """Add a ratio row, with its target (a minimum) if given; returns whether it was met."""
        met = None if target is None else value >= target
        text = note if target is None else f"(target >= {target:.2f}){' ' + note if note else ''}"
        self.add(what, f"{value:.2f}", text, samples=(value,),
                 target=None if target is None else f">= {target:.2f}", met=met)
        return bool(met) if met is not None else True

    def rounds_of(self, default: int) -> int:
        """The rounds of an interleaved group: ``--rounds`` if given, else ``default`` (2 if quick)."""
        if self.rounds:
            return self.rounds
        return min(default, 2) if self.quick else default

    # -- interleaved groups --------------------------------------------------------

    def group(self, kinds: Sequence[str], rounds: int, job: Callable[[str], Dict[str, Any]],
              senders: Callable[[str], int] = lambda kind: 1) -> Dict[str, List[Dict[str, Any]]]:
        """Run the loads ``kinds`` in ``rounds`` interleaved rounds; each load's results by round.

        The processes (a receiver and ``senders(kind)`` senders a load) start
        once, together, and serve every round. ``job(kind)`` gives the round's
        ``n`` (messages in all), ``rate`` (in all, or None for a burst) and
        ``every`` (one latency kept per ``every`` messages).
        """
        self.flush()
        workers: Dict[str, Tuple[Worker, List[Worker]]] = {}
        try:
            for kind in kinds:
                r_make, r_args, s_make, s_args, _ = LOADS[kind]
                if r_make == "AgentReceiver":
                    r_args = r_args + (job(kind)["n"],)
                rx = Worker(self.ctx, r_make, (self.url,) + r_args)
                txs = [Worker(self.ctx, s_make, (self.url,) + s_args) for _ in range(senders(kind))]
                workers[kind] = (rx, txs)
            for rx, txs in workers.values():
                for worker in [rx] + txs:
                    worker.get(60)  # started
            results: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in kinds}
            for _ in range(rounds):
                for kind in kinds:
                    results[kind].append(self._round(kind, *workers[kind], job(kind)))
            return results
        finally:
            for rx, txs in workers.values():
                for worker in txs + [rx]:
                    worker.close()

    def _round(self, kind: str, rx: Worker, txs: List[Worker], job: Dict[str, Any]) -> Dict[str, Any]:
        """One load once: the receiver counts afresh, the senders share the job."""
        n, rate = job["n"] // len(txs) * len(txs), job.get("rate")
        rx.submit(n=n, every=job.get("every", 10))
        rx.get(30)  # ready
        for tx in txs:
            tx.submit(**dict(LOADS[kind][4], n=n // len(txs), rate=rate / len(txs) if rate else None))
        sent = [tx.get() for tx in txs]
        got = rx.get()
        start, end = min(s["start"] for s in sent), max(s["end"] for s in sent)
        elapsed = got["last"] - start
        result = {"n": n, "got": got["got"], "lost": n - got["got"],
                  "rate": got["got"] / elapsed if elapsed > 0 else 0.0,
                  "send_rate": n / (end - start) if end > start else 0.0}
        latencies = got["latencies"]
        result.update(roles.percentiles(latencies), max=max(latencies) if latencies else float("nan"))
        return result

    def rate_rows(self, labels: Sequence[Tuple[str, str]], results: Dict[str, List[Dict[str, Any]]],
                  key: str = "rate") -> Dict[str, float]:
        """A row per load: the median rate over its rounds (min-max); returns the medians."""
        medians = {}
        for label, kind in labels:
            rates = [r[key] for r in results[kind]]
            lost = sum(r["lost"] for r in results[kind])
            medians[kind] = statistics.median(rates)
            parts = [f"median of {len(rates)} rounds: {min(rates):,.0f}-{max(rates):,.0f}"] if len(rates) > 1 else []
            if key == "send_rate":
                parts.append("as send() returned")
            if lost:
                parts.append(f"{lost:,} lost")
            note = f"({'; '.join(parts)})" if parts else ""
            self.add(label, f"{medians[kind]:,.0f} msg/s", note, samples=rates)
        return medians

    def latency_row(self, label: str, runs: List[Dict[str, Any]], offered: float, senders: int,
                    target: Optional[str] = None, met: Optional[bool] = None) -> None:
        """A paced load's row: median P50/P95/P99 over its runs, and the worst P99."""
        p50 = statistics.median(r["p50"] for r in runs)
        p95 = statistics.median(r["p95"] for r in runs)
        p99s = [r["p99"] for r in runs]
        lost = sum(r["lost"] for r in runs)
        runs_text = f"median of {len(runs)} runs, worst P99 {_ms(max(p99s))}; " if len(runs) > 1 else ""
        note = f"({runs_text}offered {offered:,.0f} msg/s by {senders}; {lost:,} lost"
        note += f"; target {target})" if target else ")"
        self.add(label, f"P50 {_ms(p50)} / P95 {_ms(p95)} / P99 {_ms(statistics.median(p99s))} ms", note,
                 samples=[{k: r[k] for k in ("p50", "p95", "p99", "max", "lost", "send_rate")} for r in runs],
                 target=target, met=met)

    # -- pub/sub ------------------------------------------------------------------

    def paced(self, rate: int, seconds: float, rounds: int, kinds: Sequence[Tuple[str, str]]
              ) -> Dict[str, List[Dict[str, Any]]]:
        """The loads ``kinds`` paced at ``rate`` msg/s for ``seconds``, interleaved; runs by kind.

        One sending process keeps up to about 5,000 msg/s with room to spare
        on a small machine; a higher rate is offered by several.
        """
        senders = max(1, rate // 5_000)
        n = int(rate * seconds)
        return self.group([kind for _, kind in kinds], rounds,
                          lambda kind: {"n": n, "rate": float(rate), "every": 1},
                          senders=lambda kind: senders)

    def request_reply(self, n: int, rounds: int) -> None:
        """Round trips of ``request()``, mas_sync and the async framework interleaved."""
        self.flush()
        pairs = {"mas_sync": ("Responder", "Requester", "echo")}
        if self.has_async:
            pairs["async framework"] = ("AsyncResponder", "AsyncRequester", "aecho")
        workers = {}
        try:
            for who, (responder, requester, target) in pairs.items():
                workers[who] = (Worker(self.ctx, responder, (self.url, target)),
                                Worker(self.ctx, requester, (self.url,)))
            for pair in workers.values():
                for worker in pair:
                    worker.get(60)
            runs: Dict[str, List[Dict[str, float]]] = {who: [] for who in pairs}
            for i in range(rounds):
                for who, (_, asker) in workers.items():
                    asker.submit(target=pairs[who][2], n=n, warm=100 if i == 0 else 0)
                    runs[who].append(roles.percentiles(asker.get()["rtts"]))
        finally:
            for pair in workers.values():
                for worker in pair:
                    worker.close()
        p50 = {who: statistics.median(r["p50"] for r in rs) for who, rs in runs.items()}
        p99 = {who: statistics.median(r["p99"] for r in rs) for who, rs in runs.items()}
        worst = {who: max(r["p99"] for r in rs) for who, rs in runs.items()}
        self.results["rtt-p50"] = p50["mas_sync"]
        for who in pairs:
            target, met = None, None
            if who == "mas_sync":
                target = "P50 <= 0.35 ms, P99 <= 1 ms"
                met = p50[who] <= 0.00035 and p99[who] <= 0.001
            runs_text = f"median of {rounds} runs, worst P99 {_ms(worst[who])}; " if rounds > 1 else ""
            self.add(f"request/reply round trip, {who}", f"P50 {_ms(p50[who])} / P99 {_ms(p99[who])} ms",
                     f"({runs_text}{n:,} requests a run" + (f"; target {target})" if target else ")"),
                     samples=runs[who], target=target, met=met)
        if self.has_async:
            ratio = p50["mas_sync"] / p50["async framework"] if p50["async framework"] else 0.0
            self.add("request/reply P50, mas_sync / async framework", f"{ratio:.2f}", "(target <= 0.40)",
                     samples=(ratio,), target="<= 0.40", met=ratio <= 0.40)


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
            target = "<= 20 ms" if size >= 10_000 else None
            self.add(f"discover() among {size:,} agents, mas_sync", f"{median * 1e3:.1f} ms",
                     f"(median of {len(times)} calls{'; target ' + target if target else ''})",
                     samples=times, target=target, met=median <= 0.020 if target else None)
            self._discover_cached(size)
            if self.has_async and not self.quick:
                took = self._async_discover()
                self.add(f"discover() among {size:,} agents, async framework",
                         f"{took * 1e3:.1f} ms", "(one run)", samples=(took,))

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
            target = "<= 1 ms" if size >= 10_000 else None
            self.add(f"discover() among {size:,} agents, cached, repeated",
                     f"{median * 1e3:.2f} ms",
                     f"(median of {len(times)} calls{'; target ' + target if target else ''})",
                     samples=times, target=target, met=median <= 0.001 if target else None)
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
                     "(register() to discover(), one run; target <= 100 ms)",
                     samples=(took,), target="<= 100 ms", met=took <= 0.100)

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
                 f"(stop {r['stop']:.2f} s; threads left after stop: {r['left']}; target <= {n / 500:g} s)",
                 samples=(r,), target=f"<= {n / 500:g} s", met=r["start"] <= n / 500 and not r["left"])
        self.add(f"{n:,} agents: per agent", f"{r['threads'] / n:.1f} threads, {r['clients'] / n:.1f} connections,"
                 f" {r['rss_kib'] / n:.0f} KiB", "(target <= 100 KiB)", samples=(r["rss_kib"] / n,),
                 target="<= 100 KiB", met=r["rss_kib"] / n <= 100)

    # -- behaviours ---------------------------------------------------------------

    def behaviours(self) -> None:
        """Futures, scatter-gather, a handler's time limit and a periodic method (one process)."""
        self.flush()
        out = self.ctx.Queue()
        proc = self.ctx.Process(target=roles.behaviours, args=(self.url, self.quick, out))
        proc.start()
        r = out.get(timeout=300)
        proc.join(30)
        n = r["n"]
        note = "(one process; the agent asked answers at once)"
        self.add(f"{n:,} requests in a row, request()", _median_range(r["sequential"], "{:.2f} s"),
                 note, samples=r["sequential"])
        self.add(f"{n:,} request_future() from one thread, then wait for all",
                 _median_range(r["futures"], "{:.2f} s"), note, samples=r["futures"])
        gather = sorted(r["gather"])
        answering = r["gather_targets"] - r["gather_silent_missing"]
        self.add(f"request_many() over {answering} agents, all answering",
                 f"P50 {_ms(statistics.median(gather))} / P90 {_ms(gather[int(0.9 * len(gather))])} ms",
                 "(the same process runs them all)", samples=gather)
        timeout, took = r["gather_timeout"], r["gather_silent"]
        self.add(f"request_many() over {r['gather_targets']} agents, {r['gather_silent_missing']} silent,"
                 f" timeout {timeout:g} s", _median_range(took, "{:.3f} s"), "(target: timeout +-10%)",
                 samples=took, target="timeout +-10%",
                 met=all(0.9 * timeout <= t <= 1.1 * timeout for t in took))
        rates = r["rates"]
        self.add(f"{r['messages']:,} messages, a handler that does nothing, no time limit",
                 _median_range(rates["none"], "{:,.0f} msg/s"), samples=rates["none"])
        self.add(f"{r['messages']:,} messages, the same with handler_timeout=5",
                 _median_range(rates["limit"], "{:,.0f} msg/s"), samples=rates["limit"])
        self.ratio("ratio with a time limit / without (medians)",
                   statistics.median(rates["limit"]) / statistics.median(rates["none"]))
        lags = sorted(r["lags"])
        self.add(f"@periodic(0.01) over {len(lags)} runs: behind its grid",
                 f"P50 {_ms(statistics.median(lags))} / P99 {_ms(lags[int(0.99 * (len(lags) - 1))])}"
                 f" / max {_ms(lags[-1])} ms", samples=lags)

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
                     f"{rates[count]:,.0f} msg/s", f"({n:,} messages; {n - handled:,} not handled)",
                     samples=(rates[count],))
        ratio = rates[2] / rates[1] if rates[1] else 0.0
        self.ratio(f"ratio 2 instances / 1, {workers} worker{'s' if workers > 1 else ''}", ratio,
                   1.6 if workers == 1 else None, "" if workers == 1 else "(no target)")
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
                 f"(target exactly max_attempts = {attempts}; full message kept:"
                 f" {'yes' if full else 'no'})", samples=(letter.attempts, len(calls)),
                 target=f"exactly {attempts} deliveries, the full message kept", met=ok)

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
                 f"(target 0; {len(kills)} kills; {len(acked):,} sent; {dead_letters} dead-lettered)",
                 samples=(len(lost),), target="0", met=not lost and not unreclaimed)
        self.add("chaos: duplicates", f"{len(duplicates):,}",
                 f"(target: only among the {len(in_flight):,} in flight at the kills;"
                 f" {len(stray):,} others)", samples=(len(duplicates),),
                 target="only among those in flight at the kills", met=not stray)
        self.add(f"chaos: reclaim after a kill (visibility_timeout {visibility:g} s)",
                 f"max {slowest:.2f} s",
                 f"(target <= {visibility + 1:g} s; each: "
                 + ", ".join("-" if r is None else f"{r:.1f}" for r in reclaims) + ")",
                 samples=reclaims, target=f"<= {visibility + 1:g} s",
                 met=slowest <= visibility + 1 and not unreclaimed)

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
                 f"(deviation {deviation:+.1%} past the burst; {len(allowed):,} of"
                 f" {attempts:,} taken in all, the burst included; {tried:,.0f} msg/s"
                 f" tried; target within +-5%)", samples=(sustained,), target="within +-5%",
                 met=abs(deviation) <= 0.05 and not failed_open)
        p = roles.percentiles([t for result in results for t in result["round_trips"]])
        self.add("RateLimiter.allow(), one EVALSHA", f"P50 {p['p50'] * 1e3:.2f} / P99"
                 f" {p['p99'] * 1e3:.2f} ms", f"({attempts:,} calls; {failed_open} failed open)",
                 samples=(p,))

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
                 f"(deviation {deviation:+.1%} past the burst of {burst}; {handled:,}"
                 f" handled, {refused:,} refused as rate_limited, of {n:,} sent in"
                 f" {elapsed:.1f} s; target within +-5%)", samples=(sustained,),
                 target="within +-5%", met=abs(deviation) <= 0.05)

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
                 f"(target 0; Redis down {down:.2f} s; {len(sent['failed'])} send() raised)",
                 samples=(len(lost),), target="0", met=not lost)


def machine_facts(url: str) -> Dict[str, Any]:
    """What a run's figures depend on: cores, versions, hiredis, the load of the machine."""
    from redis.utils import HIREDIS_AVAILABLE

    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            mas_version: Optional[str] = version("mas-framework")
        except PackageNotFoundError:
            mas_version = None
        try:
            own_version: Optional[str] = version("mas_sync")
        except PackageNotFoundError:
            own_version = None
    except ImportError:  # pragma: no cover - Python < 3.8
        mas_version = own_version = None
    with redis.Redis.from_url(url) as client:
        server = client.info("server")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": sys.version.split()[0],
        "redis_py": redis.__version__,
        "hiredis": bool(HIREDIS_AVAILABLE),
        "redis_server": server.get("redis_version"),
        "mas_framework": mas_version,
        "mas_sync": own_version,
        "load_average": list(os.getloadavg()),
    }


def machine_costs(url: str, calls: int = 2_000) -> Dict[str, float]:
    """What this machine charges for the two things a ``send()`` pays most: a wake and a round trip.

    ``thread_wake_us`` is the time for a thread blocked on a lock to be woken
    and answer (half of a ping-pong between two threads, median of three
    runs): what each message costs a process whose threads wait on one
    another, as concurrent ``send()`` calls and the hand-off from listener to
    worker do. ``publish_cpu_us`` is the CPU time of one raw redis-py
    ``PUBLISH`` round trip from one thread (system calls included, median of
    three runs): the most a burst from one thread can save per message by
    sharing round trips. Both run in this process, before the loads.
    """
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def answer() -> None:
        for _ in range(3 * calls):
            ping.acquire()
            pong.release()

    other = threading.Thread(target=answer, name="mas-bench-wake", daemon=True)
    other.start()
    wakes = []
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(calls):
            ping.release()
            pong.acquire()
        wakes.append((time.perf_counter() - began) / calls / 2)
    other.join(10)
    cpu = []
    with redis.Redis.from_url(url) as client:
        message = json.dumps(roles.PAYLOAD)
        for _ in range(3):
            began = time.thread_time()
            for _ in range(calls):
                client.publish("mas-bench-nobody", message)
            cpu.append((time.thread_time() - began) / calls)
    return {"thread_wake_us": round(statistics.median(wakes) * 1e6, 1),
            "publish_cpu_us": round(statistics.median(cpu) * 1e6, 1)}


def _costs_text(facts: Dict[str, Any]) -> str:
    """The machine's costs (:func:`machine_costs`) in words; empty for a run that has none."""
    if "thread_wake_us" not in facts:
        return ""
    return (f"a thread woken in {facts['thread_wake_us']:.0f} µs, a raw PUBLISH round trip"
            f" {facts['publish_cpu_us']:.0f} µs of CPU")


def run(url: str, quick: bool, only: Optional[str] = None, rounds: Optional[int] = None,
        report: Optional[Dict[str, Any]] = None) -> List[Row]:
    """Run the scenarios (``only`` "pubsub", "reliable", "security" or "behaviours": that part) against ``url``.

    Args:
        url: The Redis to use (its database is flushed).
        quick: Short loads, to check the harness.
        only: One part, or None for all four.
        rounds: The rounds of every interleaved group (default: each group's own).
        report: If given, filled with the run's facts (``machine``, ``seconds``, ...).

    Returns:
        The table's rows.
    """
    began = time.monotonic()
    bench = Bench(url, quick, rounds)
    facts = machine_facts(url)
    facts.update(machine_costs(url, 500 if quick else 2_000))
    print(f"mas_sync benchmark on {facts['cores']} cores, Python {facts['python']},"
          f" redis-py {facts['redis_py']} {'with hiredis' if facts['hiredis'] else 'without hiredis (pure-Python parser)'},"
          f" redis-server {facts['redis_server']},"
          f" mas-framework {facts['mas_framework'] or 'not installed'}, Redis at {url};"
          f" load average {facts['load_average'][0]:.2f}; {_costs_text(facts)}"
          + (" (quick: the figures mean little)" if quick else ""),
          file=sys.stderr)
    parts: Dict[str, float] = {}
    for part, run_part in (("pubsub", run_pubsub), ("reliable", run_reliable), ("security", run_security),
                           ("behaviours", run_behaviours)):
        if only in (None, part):
            bench.part, part_began = part, time.monotonic()
            run_part(bench)
            parts[part] = time.monotonic() - part_began
    bench.flush()
    seconds = time.monotonic() - began
    print(f"mas_sync benchmark: {seconds:.0f} s in all ("
          + ", ".join(f"{part} {took:.0f} s" for part, took in parts.items()) + ")", file=sys.stderr)
    if report is not None:
        facts["load_average_after"] = list(os.getloadavg())
        report.update(machine=facts, seconds=seconds, part_seconds=parts, quick=quick, only=only, rounds=rounds,
                      command=["python", "-m", "mas_sync.bench"] + (["--quick"] if quick else [])
                      + (["--only", only] if only else []) + (["--rounds", str(rounds)] if rounds else []))
    return bench.rows


def run_pubsub(bench: Bench) -> None:
    """The rows of pub/sub delivery (the default), and the rest of the library."""
    quick = bench.quick
    peers = [("one-to-one burst, raw redis-py publish (ceiling)", "raw"),
             ("one-to-one burst, mas_sync send()", "send")]
    if bench.has_async:
        peers.append(("one-to-one burst, async framework send()", "async"))
    results = bench.group([kind for _, kind in peers], bench.rounds_of(5),
                          lambda kind: {"n": 1_000 if quick else 4_000})
    rates = bench.rate_rows(peers, results)
    bench.ratio("ratio mas_sync / raw redis-py (medians)", rates["send"] / rates["raw"], 0.90)
    slowest = min(r["rate"] for r in results["send"])
    bench.ratio("slowest mas_sync round / median raw redis-py round", slowest / rates["raw"], 1.0)
    if bench.has_async:
        bench.ratio("ratio mas_sync / async framework (medians)", rates["send"] / rates["async"], 1.3)

    # One agent's send() from 1, 4 and 16 threads (the rate at which send()
    # returns, every message received), and the other ways to send more.
    n = 1_600 if quick else 4_000
    loads = [("one agent's send() from 1 thread, into one agent", "threads:1"),
             ("one agent's send() from 4 threads, into one agent", "threads:4"),
             ("one agent's send() from 16 threads, into one agent", "threads:16")]
    others = [("send_many(), 100 a batch, into one agent", "batch"),
              ("4 sender processes into one agent", "senders:4")]
    results = bench.group([kind for _, kind in loads + others], bench.rounds_of(3),
                          lambda kind: {"n": n}, senders=lambda kind: 4 if kind == "senders:4" else 1)
    rates = bench.rate_rows(loads, results, key="send_rate")
    bench.rate_rows(others, results)
    bench.ratio("ratio 4 threads / 1 thread, one agent's send()", rates["threads:4"] / rates["threads:1"], 2.0)
    bench.ratio("ratio 16 threads / 1 thread, one agent's send()", rates["threads:16"] / rates["threads:1"], 2.5)

    # Latency at a paced rate: 2,000 msg/s once, 10,000 msg/s in three runs.
    seconds = 0.3 if quick else 1.0
    for rate, rounds in ((2_000, 1), (10_000, bench.rounds_of(3))):
        kinds = [(f"paced {rate:,} msg/s, raw redis-py", "raw"), (f"paced {rate:,} msg/s, mas_sync", "send")]
        if bench.has_async:
            kinds.append((f"paced {rate:,} msg/s, async framework", "async"))
        runs = bench.paced(rate, seconds if rate < 10_000 else seconds * 1.5, rounds, kinds)
        senders = max(1, rate // 5_000)
        mine, theirs = runs["send"], runs.get("async")
        good = [r["p99"] <= 0.002 and not r["lost"] and (theirs is None or r["p99"] <= theirs[i]["p99"])
                for i, r in enumerate(mine)]
        for label, kind in kinds:
            offered = statistics.median(r["send_rate"] for r in runs[kind])
            if rate == 10_000 and kind == "send":
                target = "P99 <= 2 ms" + (" and <= the async framework's" if theirs else "") + " in each run, no message missing"
                bench.latency_row(label, runs[kind], offered, senders, target, all(good))
            else:
                bench.latency_row(label, runs[kind], offered, senders)
            bench.results[f"{kind}-p99-{rate}"] = statistics.median(r["p99"] for r in runs[kind])
        if rate == 10_000:
            bench.add(f"paced {rate:,} msg/s, mas_sync runs within the target", f"{sum(good)} of {len(good)}",
                      "(each: " + ", ".join(f"P99 {_ms(m['p99'])}" + (f" vs {_ms(t['p99'])}" if theirs else "")
                                            for m, t in zip(mine, theirs or mine)) + " ms)",
                      samples=good, target="every run", met=all(good))
            for peer, name in (("raw", "raw redis-py"), ("async", "async framework")):
                if peer in runs:
                    ratio = statistics.median(m["p99"] / p["p99"] for m, p in zip(mine, runs[peer]) if p["p99"])
                    bench.add(f"paced {rate:,} msg/s P99, mas_sync / {name}", f"{ratio:.2f}",
                              "(median of the runs' ratios)", samples=(ratio,))
    bench.request_reply(300 if quick else 1_000, bench.rounds_of(3))
    bench.discover([1_000, 10_000] if not quick else [1_000])
    bench.many_agents(100 if quick else 1_000)


def run_reliable(bench: Bench) -> None:
    """The rows of reliable delivery (a stream inbox), beside raw redis-py streams."""
    quick = bench.quick
    n = 1_000 if quick else 4_000
    loads = [("reliable burst, raw redis-py XADD/XREADGROUP/XACK (ceiling)", "raw-stream"),
             ("reliable burst, mas_sync send()", "reliable"),
             ("pub/sub burst, mas_sync send() (same rounds)", "send")]
    results = bench.group([kind for _, kind in loads], bench.rounds_of(3), lambda kind: {"n": n})
    rates = bench.rate_rows(loads, results)
    bench.ratio("ratio reliable / pub/sub send()", rates["reliable"] / rates["send"] if rates["send"] else 0.0, 0.8)
    results = bench.group(["reliable:batch"], 1, lambda kind: {"n": n * 2})
    rate = results["reliable:batch"][0]["rate"]
    lost = results["reliable:batch"][0]["lost"]
    target = None if quick else ">= 10,000 msg/s"
    bench.add("reliable send_many(), 100 a batch, acknowledged", f"{rate:,.0f} msg/s",
              ("(target >= 10,000)" if target else "") + (f" {lost:,} lost" if lost else ""),
              samples=(rate,), target=target, met=None if quick else rate >= 10_000)
    runs = bench.paced(2_000, 0.3 if quick else 1.5, 1, [("", "raw-stream"), ("", "reliable")])
    bench.latency_row("paced 2,000 msg/s, raw redis-py streams", runs["raw-stream"],
                      runs["raw-stream"][0]["send_rate"], 1)
    p99 = runs["reliable"][0]["p99"]
    bench.latency_row("paced 2,000 msg/s, mas_sync reliable", runs["reliable"], runs["reliable"][0]["send_rate"],
                      1, None if quick else "P99 <= 5 ms", None if quick else p99 <= 0.005)
    # One sender: its messages are handled in order, one at a time, whatever
    # max_workers; a second instance adds a second handler at work.
    bench.instances(1_000 if quick else 2_000, 1)
    bench.poison(3)
    bench.chaos(1_000 if quick else 3_000, 500 if quick else 1_000, 2.0)
    bench.outage(1_000 if quick else 4_000, 2_000.0)


def run_security(bench: Bench) -> None:
    """The rows of the opt-in protections: what signing and verifying cost."""
    quick = bench.quick
    loads = [("pub/sub burst, mas_sync send(), unsigned", "send"),
             ("pub/sub burst, signed, receiver require_signed", "signed")]
    results = bench.group([kind for _, kind in loads], bench.rounds_of(5),
                          lambda kind: {"n": 1_000 if quick else 4_000})
    for run in results["signed"]:
        if run["lost"]:
            raise RuntimeError(f"the signed receiver missed {run['lost']} messages")
    rates = bench.rate_rows(loads, results)
    bench.ratio("ratio signed / unsigned", rates["signed"] / rates["send"] if rates["send"] else 0.0, 0.9)
    seconds = 0.5 if quick else 4.0
    bench.rate_limit(100.0, 1_000.0, seconds)
    bench.rate_limited_agents(100.0, 1_000.0, seconds)


def run_behaviours(bench: Bench) -> None:
    """The rows of the agent's behaviours: futures, scatter-gather, time limits, periodic work."""
    bench.behaviours()


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """The rows (their first three columns) as a reStructuredText table."""
    titles = ("load", "result", "note")
    widths = [max([len(titles[i])] + [len(r[i]) for r in rows]) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    header = "  ".join(h.ljust(w) for h, w in zip(titles, widths)).rstrip()
    lines = [rule, header, rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def to_json(rows: Sequence[Row], report: Dict[str, Any]) -> Dict[str, Any]:
    """The document ``--json`` writes: the run's facts, and every row with its samples."""
    return dict(report, rows=[row._asdict() for row in rows],
                missed=[row.what for row in rows if row.met is False])


#: The parts of the README's tables, as ``--readme`` prints them.
PARTS = {"pubsub": "pub/sub delivery, and the rest of the library",
         "reliable": "reliable delivery (``--only reliable``)",
         "security": "the protections (``--only security``)",
         "behaviours": "behaviours (``--only behaviours``)"}


def readme_tables(document: Dict[str, Any]) -> str:
    """The README's text for one run's ``--json`` document: how it was measured, then a table a part."""
    m = document["machine"]
    load = m.get("load_average") or [0.0]
    after = m.get("load_average_after") or load
    costs = f" {_costs_text(m)};" if "thread_wake_us" in m else ""
    lines = [
        f"Measured on {m['date'][:10]} on a {m['cores']}-core {m['machine']} machine ({m['system']}),"
        f" Python {m['python']}, redis-py {m['redis_py']} {'with' if m['hiredis'] else 'without'} hiredis,"
        f" redis-server {m['redis_server']}, mas-framework {m['mas_framework'] or 'not installed'},"
        f" all on loopback; load average {load[0]:.2f} at the start and {after[0]:.2f} at the end;"
        f"{costs} {document['seconds']:.0f} s in all,"
        f" with ``{' '.join(document['command'])} --json run.json``"
        f" then ``python -m mas_sync.bench --readme run.json``:",
    ]
    for part, title in PARTS.items():
        rows = [row for row in document["rows"] if row["part"] == part]
        if not rows:
            continue
        table = format_table([(r["what"], r["figure"], r["note"]) for r in rows])
        lines += ["", f"{title[0].upper()}{title[1:]}::", "", "\n".join("    " + line for line in table.splitlines())]
    missed = document.get("missed") or []
    lines += ["", f"Targets missed: {len(missed)}" + (" (" + "; ".join(missed) + ")." if missed else ".")]
    return "\n".join(lines)


def reach(url: str) -> None:
    """Check that the Redis of ``url`` answers.

    Raises:
        MASConnectionError: it does not.
    """
    client = make_client(url, 1, client_name="mas-bench")
    try:
        ping(client, url)
    finally:
        close_client(client)


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv``, run the benchmarks and print the table (or, with ``--readme``, print one run's)."""
    parser = argparse.ArgumentParser(prog="python -m mas_sync.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="Redis to use; its database is flushed (default: a private redis-server)")
    parser.add_argument("--quick", action="store_true", help="short loads, to check the harness")
    parser.add_argument("--only", choices=("pubsub", "reliable", "security", "behaviours"),
                        help="run one part: pub/sub delivery (and the rest), reliable delivery,"
                             " the opt-in protections (signing, rate limits), or the behaviours"
                             " (futures, scatter-gather, time limits, periodic work)")
    parser.add_argument("--rounds", type=int, metavar="R",
                        help="rounds of every interleaved group (default: 5 for bursts, 3 for the rest)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every row, its samples and targets, and the machine's facts"
                             " as JSON to PATH ('-': standard output, instead of the table)")
    parser.add_argument("--readme", metavar="PATH",
                        help="run nothing: print the README's tables from the JSON of a run")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.redis_url:
        try:
            check_redis_url(args.redis_url)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            reach(args.redis_url)
        except MASConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.readme:
        with open(args.readme, encoding="utf-8") as source:
            print(readme_tables(json.load(source)))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 agents need descriptors
    from ..testing import local_redis

    report: Dict[str, Any] = {}
    with local_redis(args.redis_url) as url:
        rows = run(url, args.quick, args.only, args.rounds, report)
    if args.json:
        document = json.dumps(to_json(rows, report), indent=1, default=str)
        if args.json == "-":
            print(document)
            return 0
        with open(args.json, "w", encoding="utf-8") as sink:
            sink.write(document + "\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
