"""Circuit breakers on request(): open after N failures, fail fast, one trial after the cool-down."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import redis
from pydantic import BaseModel

from mas_sync import (
    Agent,
    AgentMessage,
    CircuitOpenError,
    MASConnectionError,
    MASError,
    RequestError,
    RequestTimeout,
    handler,
)
from mas_sync import _wire
from mas_sync.testing import RedisServer, wait_until

from .support import FAST, start


class Target(Agent):
    """Counts the requests it gets; fails them while ``failing`` is set, else answers.

    A request waits for ``hold`` (when set to an Event) before it is settled,
    so that a trial can be kept in flight. Plain messages are markers: they
    prove that what one sender sent before them was handled (one sender's
    messages are handled in order).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.requests: List[Dict[str, Any]] = []
        self.markers: List[Any] = []
        self.failing = threading.Event()
        self.failing.set()
        self.mute = False
        self.error_kind: Optional[str] = None
        self.hold: Optional[threading.Event] = None
        self.held = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        if not message.expects_reply:
            with self.lock:
                self.markers.append(message.payload.get("marker"))
            return
        with self.lock:
            self.requests.append(dict(message.payload))
        if self.hold is not None:
            self.held.set()
            self.hold.wait(10)
        if self.mute:
            return
        if self.error_kind is not None:
            error = _wire.error_payload(self.error_kind, "refused")
            self._mas_run.outbox.reply(message, error, error=True)
            return
        if self.failing.is_set():
            raise RuntimeError("the target is failing")
        message.reply({"ok": message.payload.get("n")})

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


class Add(BaseModel):
    a: int
    b: int


class Adder(Target):
    @handler("add")
    def add(self, message: AgentMessage, body: Add) -> Dict[str, int]:
        raise RuntimeError("the adder is failing")


_markers = iter(range(1, 1_000_000))


def settled(sender: Agent, target: Target) -> None:
    """Wait until ``target`` handled everything ``sender`` sent it so far."""
    marker = next(_markers)
    sender.send(target.id, {"marker": marker})
    wait_until(lambda: marker in target.markers, 10, message=f"marker {marker} arrives")


def breakers(agent: Agent) -> Any:
    return agent._mas_run.outbox.breakers


def wait_half_open(agent: Agent, target_id: str) -> None:
    """Wait (with a deadline) until the local breaker's cool-down is over."""
    wait_until(lambda: breakers(agent).state(target_id) == "half-open", 10,
               message="the cool-down ends")


def redis_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_half_open_shared(r: redis.Redis, target_id: str) -> None:
    """Wait (with a deadline) until the shared breaker's cool-down is over, on Redis' clock."""
    key = _wire.breaker_key(target_id)

    def over() -> bool:
        until = r.hget(key, "opened_until")
        return until is not None and int(until) <= redis_ms(r)

    wait_until(over, 10, message="the shared cool-down ends")


def fail(agent: Agent, target_id: str, n: int, timeout: float = 5.0) -> None:
    for _ in range(n):
        with pytest.raises(RequestError) as info:
            agent.request(target_id, {}, timeout=timeout)
        assert info.value.kind == "handler_error"


def open_fast(agent: Agent, target_id: str) -> CircuitOpenError:
    """The next request fails at once with CircuitOpenError; returns it."""
    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as info:
        agent.request(target_id, {}, timeout=5)
    assert time.monotonic() - started < 1.0
    return info.value


def at_once(calls: List[Callable[[], Any]]) -> Tuple[List[Any], List[threading.Thread]]:
    """Run ``calls`` in threads released together; returns each result or exception."""
    results: List[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"test-caller-{i}")
               for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return results, threads


def join(threads: List[threading.Thread]) -> None:
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive()


def one_trial(target: Target, callers: List[Agent], per_agent: int) -> List[Any]:
    """Several threads call at once after the cool-down; the one let through is held
    until every other call has failed, then succeeds. Returns the results."""
    target.failing.clear()
    target.hold = threading.Event()
    target.held.clear()
    calls = [
        (lambda agent=agent: agent.request(target.id, {"n": 1}, timeout=10))
        for agent in callers for _ in range(per_agent)
    ]
    results, threads = at_once(calls)
    total = len(calls)
    try:
        wait_until(
            lambda: sum(isinstance(r, CircuitOpenError) for r in results) >= total - 1, 10,
            message="every call but one fails at once",
        )
        assert target.held.wait(10), "the trial reached the target"
    finally:
        target.hold.set()
        join(threads)
    target.hold = None
    return results


# -- options -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(breaker_failures=0), ValueError, "breaker_failures must be"),
    (dict(breaker_failures=-1), ValueError, "breaker_failures must be"),
    (dict(breaker_failures=1.5), ValueError, "breaker_failures must be"),
    (dict(breaker_failures=True), ValueError, "breaker_failures must be"),
    (dict(breaker_failures="3"), ValueError, "breaker_failures must be"),
    (dict(breaker_failures=3, breaker_cooldown=0), ValueError, "breaker_cooldown"),
    (dict(breaker_failures=3, breaker_cooldown=-1), ValueError, "breaker_cooldown"),
    (dict(breaker_failures=3, breaker_cooldown=float("nan")), ValueError, "breaker_cooldown"),
    (dict(breaker_failures=3, breaker_shared="yes"), TypeError, "breaker_shared must be"),
    (dict(breaker_shared=True), ValueError, "breaker_shared needs breaker_failures"),
])
def test_bad_breaker_options_are_refused(kwargs, error, text) -> None:
    with pytest.raises(error, match=text):
        Agent("a", **kwargs)


def test_circuit_open_error_is_a_mas_error_and_not_a_request_error() -> None:
    assert issubclass(CircuitOpenError, MASError)
    assert not issubclass(CircuitOpenError, RequestError)
    assert CircuitOpenError.__doc__


def test_without_breaker_failures_every_request_is_sent(make_agent) -> None:
    target = make_agent("t", cls=Target)
    asker = make_agent("asker")
    fail(asker, "t", 6)
    assert target.count() == 6
    assert asker.stats.breaker_opened == 0 and asker.stats.breaker_rejected == 0


# -- local breakers ----------------------------------------------------------


def test_opens_after_exactly_n_failures_and_then_sends_nothing(make_agent, r) -> None:
    target = make_agent("t", cls=Target)
    asker = make_agent("asker", breaker_failures=3, breaker_cooldown=30)
    fail(asker, "t", 2)
    settled(asker, target)
    assert target.count() == 2 and breakers(asker).state("t") == "closed"
    fail(asker, "t", 1)
    error = open_fast(asker, "t")
    assert isinstance(error, CircuitOpenError)
    assert error.target == "t" and error.failures == 3
    assert 25 < error.retry_after <= 30
    assert "'t'" in str(error) and "3 failed requests" in str(error)
    assert "next trial in" in str(error)
    for _ in range(5):
        open_fast(asker, "t")
    settled(asker, target)
    assert target.count() == 3  # nothing more was sent
    assert asker.stats.breaker_opened == 1 and asker.stats.breaker_rejected == 6
    assert r.keys("mas_sync:breaker:*") == []  # local mode writes nothing to Redis


def test_a_success_resets_the_count_of_consecutive_failures(make_agent) -> None:
    target = make_agent("t", cls=Target)
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=30)
    for _ in range(3):
        fail(asker, "t", 1)
        target.failing.clear()
        asker.request("t", {"n": 1}, timeout=5)
        target.failing.set()
    fail(asker, "t", 2)
    open_fast(asker, "t")
    assert target.count() == 8


def test_one_trial_after_the_cooldown_and_its_success_closes(make_agent, r) -> None:
    target = make_agent("t", cls=Target, max_workers=4)
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=0.3)
    fail(asker, "t", 2)
    open_fast(asker, "t")
    wait_half_open(asker, "t")
    results = one_trial(target, [asker], per_agent=6)
    passed = [x for x in results if isinstance(x, AgentMessage)]
    assert len(passed) == 1 and passed[0].payload == {"ok": 1}
    assert sum(isinstance(x, CircuitOpenError) for x in results) == 5
    settled(asker, target)
    assert target.count() == 3  # two failures, one trial
    assert breakers(asker).state("t") == "closed"
    for n in range(5):  # closed: every request goes through
        assert asker.request("t", {"n": n}, timeout=5).payload == {"ok": n}
    assert target.count() == 8
    assert asker.stats.breaker_opened == 1
    assert target.stats.missed == 0  # refused requests took no sequence numbers
    assert r.keys("mas_sync:breaker:*") == []


def test_a_failed_trial_opens_it_again_for_another_cooldown(make_agent) -> None:
    target = make_agent("t", cls=Target)
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=0.3)
    fail(asker, "t", 2)
    wait_half_open(asker, "t")
    fail(asker, "t", 1)  # the trial
    error = open_fast(asker, "t")
    assert 0 < error.retry_after <= 0.3
    assert error.failures == 3
    settled(asker, target)
    assert target.count() == 3
    assert asker.stats.breaker_opened == 2
    wait_half_open(asker, "t")
    target.failing.clear()
    assert asker.request("t", {"n": 7}, timeout=5).payload == {"ok": 7}
    assert breakers(asker).state("t") == "closed"


def test_timeouts_count_as_failures(make_agent) -> None:
    target = make_agent("t", cls=Target)
    target.mute = True
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=30)
    for _ in range(2):
        with pytest.raises(RequestTimeout):
            asker.request("t", {}, timeout=0.2)
    open_fast(asker, "t")
    settled(asker, target)
    assert target.count() == 2


def test_validation_errors_do_not_count(make_agent) -> None:
    target = make_agent("adder", cls=Adder)
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=30)
    for _ in range(5):
        with pytest.raises(RequestError) as info:
            asker.request("adder", {"action": "add", "a": "x"}, timeout=5)
        assert info.value.kind == "validation_error"
    assert target.stats.rejected == 5
    assert breakers(asker).state("adder") == "closed"
    # Neither do they break a run of failures: failure, refusal, failure opens it.
    with pytest.raises(RequestError, match="handler_error|adder is failing"):
        asker.request("adder", {"action": "add", "a": 1, "b": 2}, timeout=5)
    with pytest.raises(RequestError):
        asker.request("adder", {"action": "add"}, timeout=5)
    with pytest.raises(RequestError, match="adder is failing"):
        asker.request("adder", {"action": "add", "a": 1, "b": 2}, timeout=5)
    open_fast(asker, "adder")


@pytest.mark.parametrize("shared", [False, True], ids=["local", "shared"])
def test_a_trial_refused_as_the_callers_fault_lets_the_next_call_try(make_agent, shared) -> None:
    target = make_agent("adder", cls=Adder)
    asker = make_agent("asker", breaker_failures=1, breaker_cooldown=0.3, breaker_shared=shared)
    with pytest.raises(RequestError, match="adder is failing"):
        asker.request("adder", {"action": "add", "a": 1, "b": 2}, timeout=5)
    open_fast(asker, "adder")
    wait_until(lambda: not isinstance(attempt(asker), CircuitOpenError), 10,
               message="the cool-down ends")  # a validation error: the trial's turn is free
    for _ in range(2):
        assert isinstance(attempt(asker), RequestError)  # each is a new trial, sent
    settled(asker, target)
    assert target.stats.rejected == 3  # sent: the trial after the cool-down, then two more


def attempt(agent: Agent) -> BaseException:
    """A request the adder refuses (validation error), or the breaker refuses."""
    try:
        agent.request("adder", {"action": "add"}, timeout=5)
    except (RequestError, CircuitOpenError) as exc:
        return exc
    raise AssertionError("the adder answered")


def test_a_refusal_of_this_sender_does_not_count(make_agent) -> None:
    make_agent("picky", accept_from=["someone-else"])
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=30)
    for _ in range(4):
        with pytest.raises(RequestError) as info:
            asker.request("picky", {}, timeout=5)
        assert info.value.kind == "refused"
    assert breakers(asker).state("picky") == "closed"
    target = make_agent("t", cls=Target)
    target.error_kind = "overloaded"  # any other error kind says the target failed
    for _ in range(2):
        with pytest.raises(RequestError):
            asker.request("t", {}, timeout=5)
    open_fast(asker, "t")
    assert target.count() == 2


def test_breakers_are_per_target(make_agent) -> None:
    make_agent("bad", cls=Target)
    good = make_agent("good", cls=Target)
    good.failing.clear()
    asker = make_agent("asker", breaker_failures=1, breaker_cooldown=30)
    fail(asker, "bad", 1)
    open_fast(asker, "bad")
    assert asker.request("good", {"n": 1}, timeout=5).payload == {"ok": 1}


def test_bad_input_takes_no_trial(make_agent) -> None:
    target = make_agent("t", cls=Target)
    asker = make_agent("asker", breaker_failures=1, breaker_cooldown=0.3)
    fail(asker, "t", 1)
    wait_half_open(asker, "t")
    with pytest.raises(TypeError):
        asker.request("t", {"x": object()}, timeout=5)
    with pytest.raises(ValueError):
        asker.request("t", {"_correlation_id": "mine"}, timeout=5)
    target.failing.clear()
    assert asker.request("t", {"n": 2}, timeout=5).payload == {"ok": 2}
    assert target.count() == 2


# -- shared breakers ---------------------------------------------------------


def test_shared_one_agent_opens_it_and_another_fails_at_once(make_agent, r) -> None:
    target = make_agent("t", cls=Target)
    x = make_agent("x", breaker_failures=2, breaker_cooldown=30, breaker_shared=True)
    y = make_agent("y", breaker_failures=2, breaker_cooldown=30, breaker_shared=True)
    assert x._mas_run.client is not y._mas_run.client
    fail(x, "t", 2)
    error = open_fast(y, "t")
    assert error.target == "t" and error.failures == 2 and 25 < error.retry_after <= 30
    settled(x, target)
    settled(y, target)
    assert target.count() == 2  # y sent nothing
    assert x.stats.breaker_opened == 1 and y.stats.breaker_rejected == 1
    key = _wire.breaker_key("t")
    assert r.type(key) == "hash"
    assert 30_000 < r.pttl(key)  # kept past the cool-down, not for ever
    assert r.pttl(key) <= 30_000 + 3_600_000 + 60_000


def test_shared_the_trial_is_one_across_agents(make_agent, r) -> None:
    target = make_agent("t", cls=Target, max_workers=4)
    options = dict(breaker_failures=2, breaker_cooldown=0.3, breaker_shared=True)
    x = make_agent("x", **options)
    y = make_agent("y", **options)
    fail(x, "t", 2)
    open_fast(y, "t")
    wait_half_open_shared(r, "t")
    results = one_trial(target, [x, y], per_agent=3)
    assert sum(isinstance(v, AgentMessage) for v in results) == 1
    assert sum(isinstance(v, CircuitOpenError) for v in results) == 5
    settled(x, target)
    settled(y, target)
    assert target.count() == 3
    assert r.exists(_wire.breaker_key("t")) == 0  # closed: nothing left in Redis
    assert x.request("t", {"n": 1}, timeout=5).payload == {"ok": 1}
    assert y.request("t", {"n": 2}, timeout=5).payload == {"ok": 2}


def test_shared_a_failed_trial_opens_it_for_everyone(make_agent, r) -> None:
    make_agent("t", cls=Target)
    options = dict(breaker_failures=2, breaker_cooldown=0.3, breaker_shared=True)
    x = make_agent("x", **options)
    y = make_agent("y", **options)
    fail(x, "t", 2)
    wait_half_open_shared(r, "t")
    fail(y, "t", 1)  # y's trial fails
    error = open_fast(x, "t")
    assert error.failures == 3 and 0 < error.retry_after <= 0.3
    assert y.stats.breaker_opened == 1 and x.stats.breaker_opened == 1


def test_shared_state_unreadable_falls_back_to_the_local_breaker(make_agent, r, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="mas_sync")
    target = make_agent("t", cls=Target)
    r.set(_wire.breaker_key("t"), "not a hash")  # every script call fails (WRONGTYPE)
    asker = make_agent("asker", breaker_failures=2, breaker_cooldown=30, breaker_shared=True)
    fail(asker, "t", 2)
    for _ in range(3):
        open_fast(asker, "t")
    settled(asker, target)
    assert target.count() == 2
    assert caplog.text.count("shared circuit breaker") == 1  # warned once, not per call
    assert r.get(_wire.breaker_key("t")) == "not a hash"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


@pytest.mark.slow
def test_a_lost_redis_is_no_failure_of_the_target(server, agents, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="mas_sync")
    target = start(agents, Target("t", redis_url=server.url, **FAST))
    asker = start(agents, Agent("asker", redis_url=server.url, retry_timeout=0.2,
                                breaker_failures=1, breaker_cooldown=30,
                                breaker_shared=True, **FAST))
    server.kill()
    for _ in range(3):
        with pytest.raises(MASConnectionError):
            asker.request("t", {}, timeout=5)
    assert "shared circuit breaker" in caplog.text
    server.start()
    wait_until(lambda: asker.stats.reconnects >= 1 and target.stats.reconnects >= 1, 15,
               message="both agents are back")
    settled(asker, target)
    fail(asker, "t", 1)  # sent: the lost Redis opened nothing
    open_fast(asker, "t")  # one real failure does (breaker_failures=1)
    assert target.count() == 1


def test_shared_breakers_on_a_cluster(cluster, agents, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="mas_sync")
    options = dict(FAST, breaker_failures=2, breaker_cooldown=30, breaker_shared=True)
    targets = [start(agents, Target(f"t{n}", redis_url=cluster.url, **FAST)) for n in range(3)]
    x = start(agents, Agent("x", redis_url=cluster.url, **options))
    y = start(agents, Agent("y", redis_url=cluster.url, **options))
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port,
                                decode_responses=True)
    try:
        keys = [_wire.breaker_key(t.id) for t in targets]
        assert len({client.get_node_from_key(key).port for key in keys}) >= 2
        for target in targets:
            fail(x, target.id, 2)
            open_fast(y, target.id)
            settled(y, target)
            assert target.count() == 2
            assert client.exists(_wire.breaker_key(target.id)) == 1
    finally:
        client.close()
    assert x.stats.breaker_opened == 3 and y.stats.breaker_rejected == 3
    assert "shared circuit breaker" not in caplog.text  # decided in Redis, every time
