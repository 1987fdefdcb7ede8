"""Prometheus metrics: scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, Tuple

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mas_sync import Agent, AgentMessage, RequestError  # noqa: E402
from mas_sync._stats import TIMING_BOUNDS  # noqa: E402
from mas_sync.metrics import (  # noqa: E402
    AgentCollector,
    metrics_app,
    start_metrics_server,
)
from mas_sync.testing import RedisServer, free_port, wait_until  # noqa: E402

from ._processes import ROOT, http_get, run_server  # noqa: E402
from .conftest import FAST  # noqa: E402

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    labels.setdefault("agent_instance", "")
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples, agent_id: str) -> set:
    return {name for name, labels in samples if ("agent_id", agent_id) in labels}


@pytest.fixture
def server() -> Iterator[Any]:
    started = start_metrics_server(0)
    yield started
    started.close()


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> Any:
        if message.payload.get("fail"):
            raise RuntimeError("asked to fail")
        if message.expects_reply:
            return {"echo": message.payload}
        return None


def test_a_scrape_counts_the_messages_and_requests_of_each_agent(make_agent, server) -> None:
    echo = make_agent("echo", Echo)
    client = make_agent("client")
    for n in range(3):
        client.send("echo", {"n": n})
    for n in range(2):
        assert client.request("echo", {"n": n}, timeout=5).payload == {"echo": {"n": n}}
    with pytest.raises(RequestError):
        client.request("echo", {"fail": True}, timeout=5)
    wait_until(lambda: echo.stats.handled == 5 and echo.stats.handler_errors == 1,
               message="echo handles every message")
    # A worker counts its message a moment before it is idle again.
    wait_until(lambda: echo._mas_run.pool.active == 0, message="echo's workers are idle")

    samples = scrape(server.url)
    assert value(samples, "mas_sync_messages_received_total", agent_id="echo") == 6
    assert value(samples, "mas_sync_messages_handled_total", agent_id="echo") == 5
    assert value(samples, "mas_sync_messages_failed_total", agent_id="echo") == 1
    # The replies reach the requester's channel, and are counted there.
    assert value(samples, "mas_sync_messages_received_total", agent_id="client") == 3
    assert value(samples, "mas_sync_messages_handled_total", agent_id="client") == 0
    for reason in ("overflow", "on_stop", "invalid", "rejected", "duplicate", "late_reply"):
        assert value(samples, "mas_sync_messages_dropped_total", agent_id="echo",
                     reason=reason) == 0
    for reason in ("unsigned", "bad_signature", "stale", "replayed", "not_allowed",
                   "rate_limited"):
        assert value(samples, "mas_sync_messages_refused_total", agent_id="echo",
                     reason=reason) == 0
    for gauge in ("mas_sync_messages_in_progress", "mas_sync_messages_pending"):
        assert value(samples, gauge, agent_id="echo") == 0
    assert value(samples, "mas_sync_reconnects_total", agent_id="echo") == 0
    assert value(samples, "mas_sync_missed_total", agent_id="echo") == 0

    # Handler calls: the 5 handled and the 1 that failed.
    handler = "mas_sync_handler_duration_seconds"
    assert value(samples, handler + "_count", agent_id="echo") == 6
    assert value(samples, handler + "_bucket", agent_id="echo", le="+Inf") == 6
    assert value(samples, handler + "_sum", agent_id="echo") == pytest.approx(
        echo.stats.handler_seconds)
    buckets = [value(samples, handler + "_bucket", agent_id="echo", le=repr(bound))
               for bound in TIMING_BOUNDS]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == 6  # no handler took more than 10 s
    # Round trips: the two requests that got a reply, and the one answered with an error.
    request = "mas_sync_request_duration_seconds"
    assert value(samples, request + "_count", agent_id="client") == 3
    assert value(samples, request + "_count", agent_id="echo") == 0
    assert 0 < value(samples, request + "_sum", agent_id="client") < 15
    # No stream series for pub/sub agents.
    assert not {"mas_sync_stream_lag", "mas_sync_stream_pending",
                "mas_sync_dead_letters"} & names(samples, "echo")


def test_stopped_agents_leave_the_scrape(make_agent, server) -> None:
    first = make_agent("first")
    make_agent("second")
    assert {"first", "second"} <= agent_ids(scrape(server.url))
    first.stop()
    assert "first" not in agent_ids(scrape(server.url))
    assert "second" in agent_ids(scrape(server.url))


def agent_ids(samples: Samples) -> set:
    return {dict(labels)["agent_id"] for _, labels in samples}


def test_a_collector_of_given_agents_reports_only_those(make_agent) -> None:
    mine = make_agent("mine")
    make_agent("other")
    registry = CollectorRegistry()
    registry.register(AgentCollector([mine]))
    with start_metrics_server(0, registry=registry) as server:
        samples = scrape(server.url)
    assert agent_ids(samples) == {"mine"}
    with pytest.raises(TypeError):
        AgentCollector(["mine"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        AgentCollector(redis_timeout=0)


class Gate(Agent):
    """Blocks in its handler on "wait" until the test opens the gate; fails on "fail"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        if message.payload.get("fail"):
            raise RuntimeError("poison")
        if message.payload.get("wait"):
            assert self.gate.wait(10)


RELIABLE = dict(delivery="reliable", retry_delay=0.01, max_attempts=1)


def test_a_reliable_agent_reports_its_stream_lag_pending_and_dead_letters(
    make_agent, server, r
) -> None:
    worker = make_agent("worker", Gate, max_workers=1, max_pending=1, **RELIABLE)
    try:
        check_stream_series(worker, make_agent("sender"), server, r)
    finally:
        worker.gate.set()  # a failed check leaves no handler blocked


def check_stream_series(worker: Gate, sender: Agent, server: Any, r: Any) -> None:
    sender.send("worker", {"fail": True})
    wait_until(lambda: r.xlen("agent.dlq:worker") == 1, message="the poison is dead-lettered")
    for n in range(5):
        sender.send("worker", {"wait": True, "n": n})
    # One message in its handler, one queued; the others wait in the stream, unread.
    wait_until(lambda: worker._mas_run.pool.active == 1 and worker._mas_run.pool.pending == 1,
               message="the worker is busy and its queue full")
    # Redis 7 tells a group's lag; the gauge is left out where it cannot.
    lag_known = int(r.info("server")["redis_version"].split(".")[0]) >= 7
    group = wait_until(lambda: next((g for g in r.xinfo_groups("agent.stream:worker")
                                     if g["pending"] == 2 and g.get("lag", 3) == 3), None),
                       message="the group holds two entries and lags by three")
    samples = scrape(server.url)
    instance = worker._mas_options.instance
    labels = dict(agent_id="worker", agent_instance=instance)
    assert value(samples, "mas_sync_messages_in_progress", **labels) == 1
    assert value(samples, "mas_sync_messages_pending", **labels) == 1
    assert value(samples, "mas_sync_messages_failed_total", **labels) == 1
    assert value(samples, "mas_sync_messages_dead_lettered_total", **labels) == 1
    stream = {"agent_id": "worker"}
    lag = ("mas_sync_stream_lag", tuple(stream.items()))
    if lag_known:
        assert samples[lag] == group["lag"] == 3
    else:
        assert lag not in samples and "lag" not in group
    assert samples[("mas_sync_stream_pending", tuple(stream.items()))] == 2
    assert samples[("mas_sync_dead_letters", tuple(stream.items()))] == 1

    worker.gate.set()
    wait_until(lambda: worker.stats.handled == 5, message="the worker catches up")
    wait_until(lambda: r.xinfo_groups("agent.stream:worker")[0]["pending"] == 0,
               message="every entry is acknowledged")
    samples = scrape(server.url)
    assert samples.get(lag) == (0 if lag_known else None)
    assert samples[("mas_sync_stream_pending", tuple(stream.items()))] == 0
    assert samples[("mas_sync_dead_letters", tuple(stream.items()))] == 1
    assert value(samples, "mas_sync_handler_duration_seconds_count", **labels) == 6


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_scrape_does_not_wait_for_a_redis_that_does_not_answer(
    server, how, caplog
) -> None:
    with RedisServer() as private:
        worker = Agent("worker", redis_url=private.url, retry_timeout=0.5, **RELIABLE, **FAST)
        worker.start()
        try:
            samples = scrape(server.url)
            assert ("mas_sync_dead_letters", (("agent_id", "worker"),)) in samples
            assert private.process is not None
            pid = private.process.pid
            if how == "hung":
                os.kill(pid, signal.SIGSTOP)
            else:
                private.kill()
            try:
                caplog.set_level(logging.WARNING, logger="mas_sync.metrics")
                for _ in range(2):
                    started = time.monotonic()
                    samples = scrape(server.url)
                    assert time.monotonic() - started < 3.0
                    # The counters are there; the stream series are left out.
                    assert value(samples, "mas_sync_messages_received_total", agent_id="worker",
                                 agent_instance=worker._mas_options.instance) == 0
                    assert not {"mas_sync_stream_lag", "mas_sync_stream_pending",
                                "mas_sync_dead_letters"} & names(samples, "worker")
                warnings = [rec for rec in caplog.records if rec.name == "mas_sync.metrics"]
                assert len(warnings) == 1, warnings  # logged once
                assert "cannot read the streams" in warnings[0].getMessage()
            finally:
                if how == "hung":
                    os.kill(pid, signal.SIGCONT)
        finally:
            worker.stop(timeout=3)


def test_start_metrics_server_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        start_metrics_server("9100")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        start_metrics_server(70000)
    with pytest.raises(TypeError):
        start_metrics_server(0, addr=None)  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_server_thread_is_named_and_closes(server) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    names_ = [t.name for t in threading.enumerate()]
    assert f"mas-metrics[{server.port}]" in names_
    other = start_metrics_server(0)
    other.close()
    assert f"mas-metrics[{other.port}]" not in [t.name for t in threading.enumerate()]
    assert http_get(other.url, timeout=2) is None


def test_flask_mounts_the_wsgi_app(make_agent) -> None:
    pytest.importorskip("flask")
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    make_agent("echo", Echo)
    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": metrics_app()})  # type: ignore
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = parse(response.get_data(as_text=True))
    assert value(samples, "mas_sync_messages_received_total", agent_id="echo") == 0


def test_the_django_view_serves_the_metrics(make_agent) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.test import RequestFactory

    from mas_sync.contrib.django.metrics import metrics_view

    make_agent("echo", Echo)
    response = metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = parse(response.content.decode())
    assert value(samples, "mas_sync_messages_handled_total", agent_id="echo") == 0


PROJECT = os.path.join(ROOT, "examples", "django_project")


@pytest.mark.slow
def test_runagents_serves_the_metrics_of_its_agents(make_agent, redis_url) -> None:
    pytest.importorskip("django")
    port = free_port()
    probe = make_agent("probe")
    with run_server(
        [os.path.join(PROJECT, "manage.py"), "runagents", "--metrics-port", str(port)],
        cwd=PROJECT, env_extra={"MAS_REDIS_URL": redis_url},
    ) as process:
        url = f"http://127.0.0.1:{port}/metrics"
        found = wait_until(lambda: probe.discover(["echo"]), timeout=30, interval=0.05,
                           message="runagents registers its echo agent")
        echo = found[0]["id"]
        probe.request(echo, {"text": "one two"}, timeout=5)
        text = wait_until(lambda: (http_get(url) or "").count("mas_sync_messages_handled") and
                          http_get(url), timeout=10, message="runagents serves the metrics")
        samples = parse(text)
        assert value(samples, "mas_sync_messages_handled_total", agent_id=echo) == 1
        assert {f"summarizer{echo[len('echo'):]}", echo} <= agent_ids(samples)
        process.process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.output()
    assert f"Metrics: {url}" in process.output()


def test_importing_without_prometheus_client_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import mas_sync.metrics\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert "pip install mas_sync[metrics]" in out.stdout, out.stderr


@pytest.mark.slow
def test_runagents_refuses_a_metrics_port_it_cannot_use(redis_url, r) -> None:
    pytest.importorskip("django")
    import socket

    manage = os.path.join(PROJECT, "manage.py")
    env = {"MAS_REDIS_URL": redis_url}
    with run_server([manage, "runagents", "--metrics-port", "70000"], cwd=PROJECT,
                    env_extra=env) as process:
        assert process.wait(30) == 1
    assert "--metrics-port must be between 0 and 65535, not 70000" in process.output()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with run_server([manage, "runagents", "--metrics-port", str(port)], cwd=PROJECT,
                        env_extra=env) as process:
            assert process.wait(30) == 1
    assert f"cannot serve the metrics on 127.0.0.1:{port}" in process.output()
    assert r.keys("agent:*") == []  # the agents it started were stopped
