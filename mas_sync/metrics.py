"""Prometheus metrics of the agents that run in this process (the ``metrics`` extra).

Install with ``pip install mas_sync[metrics]`` (it adds ``prometheus_client``).
Serve them with :func:`start_metrics_server` (an exporter on a port of its
own), mount :func:`metrics_app` (a WSGI app) in a Flask or other WSGI
application, route :func:`mas_sync.contrib.django.metrics.metrics_view` in
Django, or run ``manage.py runagents --metrics-port P``.

Every series has the labels ``agent_id`` and ``agent_instance`` (the
instance of a reliable agent; empty for a pub/sub agent). The label is not
called ``instance``: Prometheus gives that name to the scraped target, and
would rename ours. The stream series of a reliable agent (read from Redis at
scrape time, with a short timeout) have ``agent_id`` only: they are the
agent's, shared by its instances.

Example::

    from mas_sync.metrics import start_metrics_server

    server = start_metrics_server(9100)  # http://127.0.0.1:9100/metrics
    ...
    server.close()
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        "mas_sync.metrics needs prometheus_client: pip install mas_sync[metrics]"
    ) from exc

import redis

from . import _process, _wire
from ._agent import Agent
from ._errors import MASConnectionError
from ._redis import close_client, make_client, redact_url
from ._stats import TIMING_BOUNDS, AgentStats, Timing

__all__ = [
    "REGISTRY",
    "AgentCollector",
    "MetricsServer",
    "metrics_app",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

#: Seconds a scrape waits for Redis (to connect, and for each answer) when it
#: reads a reliable agent's stream; a Redis that does not answer in time is
#: skipped for the rest of that scrape.
REDIS_TIMEOUT = 0.5

_LABELS = ["agent_id", "agent_instance"]

#: ``mas_sync_messages_dropped_total{reason}``: the AgentStats counter of each reason.
DROPPED = (
    ("overflow", "dropped_overflow"),
    ("on_stop", "dropped_on_stop"),
    ("invalid", "invalid"),
    ("rejected", "rejected"),
    ("duplicate", "duplicates"),
    ("late_reply", "replies_dropped"),
)
#: ``mas_sync_messages_refused_total{reason}``: the AgentStats counter of each reason.
REFUSED = (
    ("unsigned", "refused_unsigned"),
    ("bad_signature", "refused_bad_signature"),
    ("stale", "refused_stale"),
    ("replayed", "refused_replayed"),
    ("not_allowed", "refused_not_allowed"),
    ("rate_limited", "refused_rate_limited"),
)
#: Plain counters: (name without ``_total``, AgentStats field, help).
COUNTERS = (
    ("mas_sync_messages_received", "received", "Messages read from the agent's channel or stream."),
    ("mas_sync_messages_handled", "handled", "Messages whose handler returned."),
    ("mas_sync_messages_failed", "handler_errors", "Messages whose handler raised."),
    ("mas_sync_messages_retried", "retried",
     "Reliable delivery: attempts of a message after its handler raised."),
    ("mas_sync_messages_dead_lettered", "dead_lettered",
     "Reliable delivery: messages moved to the dead-letter stream."),
    ("mas_sync_reconnects", "reconnects", "Times the listener resubscribed after losing Redis."),
    ("mas_sync_disconnects", "disconnects", "Times the listener lost its connection."),
    ("mas_sync_missed", "missed",
     "Messages from mas_sync senders that never arrived (gaps in their sequence numbers)."),
    ("mas_sync_handler_timeouts", "handler_timeouts",
     "Handler calls still running past their time limit."),
    ("mas_sync_scheduled_runs", "scheduled_runs",
     "Runs of periodic methods and call_later calls that returned."),
    ("mas_sync_scheduled_errors", "scheduled_errors",
     "Runs of periodic methods and call_later calls that raised."),
)


class AgentCollector(Collector):
    """A Prometheus collector of the counters of running agents.

    Each scrape reads the agents' counters in memory and, for reliable
    agents, their stream in Redis (``XINFO GROUPS``, ``XLEN``), bounded by
    ``redis_timeout``: a Redis that does not answer is skipped (logged once
    until it answers again), and so are the stream series of its agents.

    Args:
        agents: The agents to report; None (the default) for every agent
            running in this process at the time of each scrape. Agents that
            are not running are left out.
        redis_timeout: Seconds to wait for Redis at each step of a scrape.

    Raises:
        TypeError: ``agents`` holds something that is not an Agent.
        ValueError: ``redis_timeout`` is not a positive number.
    """

    def __init__(
        self, agents: Optional[Iterable[Agent]] = None, *, redis_timeout: float = REDIS_TIMEOUT
    ) -> None:
        if agents is not None:
            agents = list(agents)
            for agent in agents:
                if not isinstance(agent, Agent):
                    raise TypeError(f"agents must be Agent objects, not {type(agent).__name__}")
        if isinstance(redis_timeout, bool) or not isinstance(redis_timeout, (int, float)) \
                or not redis_timeout > 0:
            raise ValueError(f"redis_timeout must be a positive number, not {redis_timeout!r}")
        self._agents: Optional[List[Agent]] = agents
        self._redis_timeout = float(redis_timeout)
        self._lock = threading.Lock()
        self._clients: Dict[str, redis.Redis] = {}
        self._unreachable: Set[str] = set()

    def describe(self) -> Iterable[Any]:
        """The families, without samples (what a registry asks before the first scrape)."""
        return list(self._families([], {}))

    def collect(self) -> Iterable[Any]:
        """The families of one scrape. Runs in the thread that serves the scrape."""
        agents = self._agents if self._agents is not None else _process.running_agents()
        running = []
        for agent in agents:
            run = agent._mas_run
            if run is not None and not run.stopping:
                running.append((agent, run))
        streams = self._read_streams(running)
        return list(self._families(running, streams))

    def close(self) -> None:
        """Close the clients the scrapes opened (one per Redis URL)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            close_client(client)

    # -- one scrape ----------------------------------------------------------------

    def _families(
        self, running: List[Tuple[Agent, Any]], streams: Dict[str, Tuple[Any, Any, Any]]
    ) -> Iterator[Any]:
        rows: List[Tuple[List[str], AgentStats, Dict[str, Timing], Any]] = []
        for agent, run in running:
            instance = run.options.instance if run.options.delivery == "reliable" else ""
            timings = agent._mas_counters.timings()
            rows.append(([agent.id, instance or ""], agent.stats, timings, run.pool))
        for name, field, text in COUNTERS:
            family = CounterMetricFamily(name, text, labels=_LABELS)
            for labels, stats, _, _ in rows:
                family.add_metric(labels, getattr(stats, field))
            yield family
        for name, reasons, text in (
            ("mas_sync_messages_dropped", DROPPED, "Messages dropped unhandled, by reason."),
            ("mas_sync_messages_refused", REFUSED, "Messages refused by the agent's checks,"
             " by reason."),
        ):
            family = CounterMetricFamily(name, text, labels=_LABELS + ["reason"])
            for labels, stats, _, _ in rows:
                for reason, field in reasons:
                    family.add_metric(labels + [reason], getattr(stats, field))
            yield family
        for name, attribute, text in (
            ("mas_sync_messages_in_progress", "active", "Messages whose handler runs now."),
            ("mas_sync_messages_pending", "pending", "Messages queued for a worker."),
        ):
            family = GaugeMetricFamily(name, text, labels=_LABELS)
            for labels, _, _, pool in rows:
                family.add_metric(labels, getattr(pool, attribute) if pool is not None else 0)
            yield family
        for name, timing, text in (
            ("mas_sync_handler_duration_seconds", "handler",
             "Seconds in each handler call, whether it returned or raised."),
            ("mas_sync_request_duration_seconds", "request",
             "Seconds from each request() to its reply (requests that got one)."),
        ):
            family = HistogramMetricFamily(name, text, labels=_LABELS)
            for labels, _, timings, _ in rows:
                buckets, total = _buckets(timings[timing])
                family.add_metric(labels, buckets, total)
            yield family
        for index, (name, text) in enumerate((
            ("mas_sync_stream_lag",
             "Reliable agents: entries of the stream not yet read by the agent's group."),
            ("mas_sync_stream_pending",
             "Reliable agents: entries read and not yet acknowledged (being handled, or"
             " left by an instance that stopped)."),
            ("mas_sync_dead_letters", "Reliable agents: entries of the dead-letter stream."),
        )):
            family = GaugeMetricFamily(name, text, labels=["agent_id"])
            for agent_id, values in streams.items():
                if values[index] is not None:
                    family.add_metric([agent_id], values[index])
            yield family

    def _read_streams(
        self, running: List[Tuple[Agent, Any]]
    ) -> Dict[str, Tuple[Any, Any, Any]]:
        """``{agent_id: (lag, pending, dead letters)}`` of the reliable agents, from Redis."""
        found: Dict[str, Tuple[Any, Any, Any]] = {}
        failed: Set[str] = set()
        for agent, run in running:
            url = run.url
            if run.options.delivery != "reliable" or agent.id in found or url in failed:
                continue
            try:
                client = self._client(url)
                found[agent.id] = _stream_values(client, agent.id)
            except (MASConnectionError, redis.RedisError, OSError) as exc:
                failed.add(url)
                self._drop_client(url)
                if url not in self._unreachable:
                    self._unreachable.add(url)
                    log.warning(
                        "Metrics: cannot read the streams of the reliable agents on %s (%s);"
                        " their stream series are left out until it answers",
                        redact_url(url), exc,
                    )
                continue
            if url in self._unreachable:
                self._unreachable.discard(url)
                log.info("Metrics: %s answers again", redact_url(url))
        return found

    def _client(self, url: str) -> redis.Redis:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = self._clients[url] = make_client(
                    url, 4, timeout=self._redis_timeout, client_name="mas-metrics"
                )
            return client

    def _drop_client(self, url: str) -> None:
        with self._lock:
            client = self._clients.pop(url, None)
        if client is not None:
            close_client(client)


def _stream_values(client: redis.Redis, agent_id: str) -> Tuple[Any, Any, Any]:
    """``(lag, pending, dead letters)`` of a reliable agent; None for what Redis cannot tell.

    The lag is the group's ``lag`` (Redis 7+); where that is unknown, the
    stream's entries added minus the group's entries read, when both are
    known. Without the group (no instance ever started), None and None.
    """
    stream = _wire.stream_key(agent_id)
    lag = pending = None
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        groups = []
    for group in groups:
        if _text(group.get("name")) == _wire.CONSUMER_GROUP:
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            if lag is None and group.get("entries-read") is not None:
                try:
                    added = client.xinfo_stream(stream).get("entries-added")
                except redis.ResponseError:
                    added = None
                if added is not None:
                    lag = int(added) - int(group["entries-read"])
            break
    dead = client.xlen(_wire.dlq_key(agent_id))
    return (int(lag) if lag is not None else None), pending, int(dead)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _buckets(timing: Timing) -> Tuple[List[Tuple[str, float]], float]:
    """Prometheus' cumulative buckets (``+Inf`` last) of a :class:`Timing`, and its sum."""
    buckets = []
    total = 0
    for bound, count in zip(TIMING_BOUNDS, timing.counts):
        total += count
        buckets.append((floatToGoString(bound), total))
    buckets.append(("+Inf", timing.count))
    return buckets, timing.total


#: The registry of :func:`start_metrics_server` and :func:`metrics_app` by
#: default: one :class:`AgentCollector` of every agent running in the process
#: (and nothing else: not prometheus_client's process and platform metrics).
REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(AgentCollector())


class MetricsServer:
    """An exporter started by :func:`start_metrics_server`; :meth:`close` stops it.

    Attributes:
        addr: The address it listens on.
        port: The port it listens on (the one chosen, when asked for port 0).
        url: ``http://{addr}:{port}/metrics``.
    """

    def __init__(self, httpd: Any, thread: threading.Thread, addr: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.addr = addr
        self.port: int = httpd.server_address[1]
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; waits for the server's thread at most ``timeout``."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: Optional[CollectorRegistry] = None
) -> MetricsServer:
    """Serve the metrics at ``http://{addr}:{port}/metrics``, from a daemon thread.

    The thread (prometheus_client's, named ``mas-metrics[{port}]``) answers
    each scrape; the call returns at once.

    Args:
        port: The port; 0 picks a free one (see :attr:`MetricsServer.port`).
        addr: The address to listen on; ``127.0.0.1`` by default (only this
            host can scrape), ``0.0.0.0`` for every interface.
        registry: What to serve; :data:`REGISTRY` by default.

    Returns:
        The server, to :meth:`~MetricsServer.close`.

    Raises:
        TypeError: ``port`` is not an int, or ``addr`` not a str.
        ValueError: ``port`` is not between 0 and 65535.
        OSError: the address cannot be bound (the port is taken).
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, not {port}")
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a str, not {type(addr).__name__}")
    httpd, thread = start_http_server(port, addr=addr, registry=registry or REGISTRY)
    server = MetricsServer(httpd, thread, addr)
    thread.name = f"mas-metrics[{server.port}]"
    log.info("Metrics: serving %s", server.url)
    return server


def metrics_app(registry: Optional[CollectorRegistry] = None) -> Any:
    """A WSGI app that serves the metrics (of :data:`REGISTRY` by default), at any path.

    Mount it in Flask with werkzeug's ``DispatcherMiddleware``::

        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": metrics_app()})
    """
    return make_wsgi_app(registry or REGISTRY)
