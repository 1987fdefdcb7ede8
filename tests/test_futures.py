"""Requests as futures, and scatter-gather with request_many(), against a real redis-server."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, List

import pytest

from mas_sync import (
    Agent,
    AgentMessage,
    AgentNotRunningError,
    CircuitOpenError,
    GatherResult,
    RedisCommandError,
    RequestError,
    RequestTimeout,
)
from mas_sync.testing import wait_until


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> None:
        if message.payload.get("fail"):
            raise ValueError("asked to fail")
        if message.expects_reply:
            message.reply({"echo": message.payload, "by": self.id})


class Silent(Agent):
    def on_message(self, message: AgentMessage) -> None:
        pass


def pending(agent: Agent) -> int:
    """Requests of ``agent`` waiting for a reply (its table of pending slots)."""
    run = agent._mas_run
    assert run is not None
    return len(run.requests)


def test_a_thousand_futures_from_eight_threads_all_resolve(make_agent: Any) -> None:
    make_agent("echo", Echo, max_workers=8)
    client = make_agent("client")
    futures: List["concurrent.futures.Future[AgentMessage]"] = []
    lock = threading.Lock()

    def start_many(thread: int) -> None:
        for n in range(125):
            future = client.request_future("echo", {"t": thread, "n": n}, timeout=20)
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=start_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(futures) == 1000
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert not not_done
    answers = {(f.result().payload["echo"]["t"], f.result().payload["echo"]["n"]) for f in done}
    assert answers == {(t, n) for t in range(8) for n in range(125)}
    assert pending(client) == 0
    assert client.stats.replies_dropped == 0


def test_the_listener_resolves_a_future_while_the_caller_does_other_work(make_agent: Any) -> None:
    make_agent("echo", Echo)
    client = make_agent("client")
    resolved_in: List[str] = []
    resolved = threading.Event()
    future = client.request_future("echo", {"x": 1}, timeout=5)
    future.add_done_callback(
        lambda f: (resolved_in.append(threading.current_thread().name), resolved.set())
    )
    assert resolved.wait(5)
    assert future.result().payload == {"echo": {"x": 1}, "by": "echo"}
    assert resolved_in[0] in ("MainThread", "mas-agent[client]-listener")


def test_a_future_fails_with_request_timeout_at_its_deadline(make_agent: Any) -> None:
    make_agent("silent", Silent)
    client = make_agent("client")
    began = time.monotonic()
    future = client.request_future("silent", {}, timeout=0.3)
    with pytest.raises(RequestTimeout, match="no reply from 'silent' within 0.3 s"):
        future.result(timeout=5)
    took = time.monotonic() - began
    assert 0.3 <= took < 0.3 + 0.2
    assert pending(client) == 0


def test_error_replies_and_refusals_are_in_the_future(make_agent: Any) -> None:
    make_agent("echo", Echo)
    client = make_agent("client")
    future = client.request_future("echo", {"fail": True}, timeout=5)
    with pytest.raises(RequestError) as caught:
        future.result(timeout=5)
    assert caught.value.kind == "handler_error"


def test_cancelling_a_future_frees_its_pending_slot(make_agent: Any) -> None:
    make_agent("silent", Silent)
    client = make_agent("client")
    futures = [client.request_future("silent", {"n": n}, timeout=30) for n in range(50)]
    assert pending(client) == 50
    assert all(future.cancel() for future in futures)
    assert pending(client) == 0
    assert all(future.cancelled() for future in futures)
    # The timers hold no deadline of theirs either.
    run = client._mas_run
    assert run is not None and len(run.timers) == 0


def test_a_cancelled_future_drops_its_late_reply(make_agent: Any) -> None:
    class Slow(Agent):
        def on_message(self, message: AgentMessage) -> None:
            time.sleep(0.2)
            message.reply({"late": True})

    make_agent("slow", Slow)
    client = make_agent("client")
    future = client.request_future("slow", {}, timeout=5)
    assert future.cancel()
    wait_until(lambda: client.stats.replies_dropped == 1, 5, message="the late reply dropped")


def test_stop_fails_the_futures_still_waiting(make_agent: Any) -> None:
    make_agent("silent", Silent)
    client = make_agent("client")
    future = client.request_future("silent", {}, timeout=30)
    client.stop()
    with pytest.raises(AgentNotRunningError, match="stopped while waiting for a reply"):
        future.result(timeout=5)
    with pytest.raises(AgentNotRunningError):
        client.request_future("silent", {}, timeout=1)


def test_stop_keeps_to_its_timeout_while_a_done_callback_holds_the_clock(make_agent: Any) -> None:
    """A done-callback runs in the thread that settles the future (here the
    clock's, at the deadline); stuck there, it made stop(timeout) wait a
    second more than its timeout."""
    client = make_agent("client")
    entered, release = threading.Event(), threading.Event()
    future = client.request_future("nobody", {}, timeout=0.05)
    future.add_done_callback(lambda f: (entered.set(), release.wait(10)))
    assert entered.wait(5)
    began = time.monotonic()
    client.stop(timeout=0.3)
    took = time.monotonic() - began
    release.set()
    assert took < 0.3 + 0.3, f"stop(timeout=0.3) took {took:.2f} s"


def test_request_future_refuses_bad_input_at_once(make_agent: Any) -> None:
    client = make_agent("client")
    with pytest.raises(ValueError, match="target id"):
        client.request_future("a b", {})
    with pytest.raises(TypeError, match="payload must be a dict"):
        client.request_future("x", [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be"):
        client.request_future("x", {}, timeout=0)
    with pytest.raises(ValueError, match="reserved"):
        client.request_future("x", {"_correlation_id": "mine"})
    assert pending(client) == 0


def test_an_open_breaker_fails_the_future_without_sending(make_agent: Any) -> None:
    make_agent("silent", Silent)
    client = make_agent("client", breaker_failures=1, breaker_cooldown=30)
    with pytest.raises(RequestTimeout):
        client.request_future("silent", {}, timeout=0.1).result(timeout=5)
    future = client.request_future("silent", {}, timeout=5)
    assert future.done()
    with pytest.raises(CircuitOpenError):
        future.result()


def test_a_shared_breaker_has_the_failure_before_the_future_fails(make_agent: Any, r: Any) -> None:
    """The record of a shared breaker (a call to Redis, made off the listener's
    thread) used to come after the future failed: asked again at once, the
    breaker was still closed about one time in three, and the request went out."""
    make_agent("echo", Echo)
    client = make_agent("client", breaker_failures=1, breaker_cooldown=30, breaker_shared=True)
    breakers = client._mas_run.outbox.breakers
    for n in range(30):
        r.delete("mas_sync:breaker:echo")
        breakers._local.clear()
        with pytest.raises(RequestError):
            client.request_future("echo", {"fail": True}, timeout=5).result(timeout=5)
        with pytest.raises(CircuitOpenError):
            client.request("echo", {"n": n}, timeout=5)


def test_a_send_redis_refuses_fails_the_future(make_agent: Any, r: Any, redis_url: str) -> None:
    r.execute_command("ACL", "SETUSER", "narrow", "on", ">pw", "~*", "&*", "+@all",
                      "resetchannels", "&agent.narrow", "&mas.system")
    url = redis_url.replace("redis://", "redis://narrow:pw@")
    try:
        client = make_agent("narrow", redis_url=url)
        future = client.request_future("elsewhere", {}, timeout=5)
        with pytest.raises(RedisCommandError, match="(?i)permission|NOPERM"):
            future.result(timeout=5)
        assert pending(client) == 0
    finally:
        r.execute_command("ACL", "DELUSER", "narrow")


# --- request_many: scatter-gather ------------------------------------------------


@pytest.mark.slow
def test_scatter_gather_over_fifty_agents_with_five_silent(make_agent: Any) -> None:
    for n in range(50):
        make_agent(f"w{n:02}", Silent if n % 10 == 3 else Echo, capabilities=["work"])
    client = make_agent("client")
    timeout = 1.0
    began = time.monotonic()
    result = client.request_many("work", {"job": 7}, timeout=timeout)
    took = time.monotonic() - began
    assert isinstance(result, GatherResult)
    assert 0.9 * timeout <= took <= 1.1 * timeout, f"took {took:.3f} s"
    silent = [f"w{n:02}" for n in range(3, 50, 10)]
    assert list(result.targets) == [f"w{n:02}" for n in range(50)]
    assert result.timed_out == silent
    assert result.failed == []
    assert sorted(result.replies) == sorted(set(result.targets) - set(silent))
    assert all(reply.payload["echo"] == {"job": 7} for reply in result.replies.values())
    assert all(isinstance(result.errors[t], RequestTimeout) for t in silent)
    assert pending(client) == 0


def test_request_many_returns_as_soon_as_every_agent_answered(make_agent: Any) -> None:
    for n in range(5):
        make_agent(f"e{n}", Echo)
    client = make_agent("client")
    began = time.monotonic()
    result = client.request_many(["e0", "e1", "e2", "e3", "e4", "e1"], {"q": 1}, timeout=10)
    assert time.monotonic() - began < 2
    assert result.targets == ("e0", "e1", "e2", "e3", "e4")  # each asked once
    assert sorted(result.replies) == ["e0", "e1", "e2", "e3", "e4"] and not result.errors


def test_request_many_reports_each_failure_by_target(make_agent: Any) -> None:
    class Picky(Agent):
        def on_message(self, message: AgentMessage) -> None:
            raise RuntimeError("no")

    make_agent("good", Echo, capabilities=["c"])
    make_agent("picky", Picky, capabilities=["c"])
    client = make_agent("client", capabilities=["c"])  # asks the others, not itself
    result = client.request_many("c", {}, timeout=2)
    assert result.targets == ("good", "picky")
    assert list(result.replies) == ["good"]
    assert result.failed == ["picky"] and result.timed_out == []
    error = result.errors["picky"]
    assert isinstance(error, RequestError) and error.kind == "handler_error"


def test_request_many_with_no_agent_of_the_capability(make_agent: Any) -> None:
    client = make_agent("client")
    result = client.request_many("nobody-can", {}, timeout=1)
    assert result == GatherResult(())


def test_request_many_refuses_bad_targets_before_sending(make_agent: Any) -> None:
    make_agent("echo", Echo)
    client = make_agent("client")
    with pytest.raises(ValueError, match="target id 1"):
        client.request_many(["echo", "bad id"], {}, timeout=1)
    with pytest.raises(TypeError, match="not bytes"):
        client.request_many(b"echo", {}, timeout=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload must be a dict"):
        client.request_many(["echo"], "x", timeout=1)  # type: ignore[arg-type]
    assert pending(client) == 0
    assert client.stats.received == 0


def test_request_many_counts_each_silent_target_as_a_timeout_for_its_breaker(
    make_agent: Any,
) -> None:
    make_agent("silent", Silent)
    client = make_agent("client", breaker_failures=5, breaker_cooldown=30)
    for _ in range(5):
        result = client.request_many(["silent"], {}, timeout=0.05)
        assert isinstance(result.errors["silent"], RequestTimeout)
    # Five timeouts in a row: the breaker opened at the fifth, not later.
    assert client.stats.breaker_opened == 1
    assert isinstance(client.request_many(["silent"], {}, timeout=1).errors["silent"],
                      CircuitOpenError)
