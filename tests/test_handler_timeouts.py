"""Handler time limits: reported with their stack, counted, answered; never interrupted."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, List

import pytest
from pydantic import BaseModel

from mas_sync import Agent, AgentMessage, RequestError, handler
from mas_sync.testing import wait_until


class Job(BaseModel):
    seconds: float


class Worker(Agent):
    """Sleeps as long as asked, in on_message or in its typed handlers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.returned: List[str] = []
        self.done = threading.Event()

    def on_message(self, message: AgentMessage) -> None:
        time.sleep(message.payload.get("seconds", 0))
        self.returned.append("on_message")
        self.done.set()
        if message.expects_reply:
            message.reply({"slept": True})

    @handler("quick", timeout=0.1)
    def quick(self, message: AgentMessage, body: Job) -> dict:
        time.sleep(body.seconds)
        self.returned.append("quick")
        self.done.set()
        return {"slept": body.seconds}

    @handler("patient", timeout=5)
    def patient(self, message: AgentMessage, body: Job) -> dict:
        time.sleep(body.seconds)
        self.returned.append("patient")
        self.done.set()
        return {"slept": body.seconds}


@pytest.mark.slow
def test_a_requester_gets_an_error_reply_at_the_limit(make_agent: Any, caplog: Any) -> None:
    worker = make_agent("worker", Worker, handler_timeout=0.2)
    client = make_agent("client")
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mas_sync"):
        with pytest.raises(RequestError) as caught:
            client.request("worker", {"seconds": 1.0}, timeout=10)
        took = time.monotonic() - began
        assert 0.2 <= took < 0.2 + 0.3, f"the error came after {took:.2f} s"
        assert caught.value.kind == "handler_timeout"
        assert "on_message still running after its time limit of 0.2 s" in str(caught.value)
        assert worker.stats.handler_timeouts == 1
        # Logged with the handler's stack, pointing at the line it is stuck on.
        assert "on_message still running after 0.2 s" in caplog.text
        assert "time.sleep(message.payload.get(\"seconds\", 0))" in caplog.text
        # Not interrupted: it goes on in its own time. The request had its
        # answer: the reply the handler makes then is refused, not sent.
        assert worker.done.wait(5)
        wait_until(lambda: worker.stats.handler_errors == 1, 5, message="its late reply refused")
        wait_until(lambda: "returned after 1.0" in caplog.text, 5, message="its end logged")
    assert worker.returned == ["on_message"]
    assert "this reply came after" in caplog.text
    assert client.stats.replies_dropped == 0  # nothing late reached the requester


def test_a_typed_handler_s_own_limit_wins_over_the_agent_s(make_agent: Any) -> None:
    worker = make_agent("worker", Worker, handler_timeout=0.05)
    client = make_agent("client")
    # Its own 5 s limit: 0.2 s of work is fine, though the agent's limit is 50 ms.
    assert client.request("worker", {"action": "patient", "seconds": 0.2}, timeout=5).payload == {
        "slept": 0.2
    }
    # Its own 0.1 s limit, with no agent limit at all.
    other = make_agent("other", Worker)
    began = time.monotonic()
    with pytest.raises(RequestError, match="quick\\(\\) still running") as caught:
        client.request("other", {"action": "quick", "seconds": 0.5}, timeout=5)
    assert time.monotonic() - began < 0.45
    assert caught.value.kind == "handler_timeout"
    assert worker.stats.handler_timeouts == 0 and other.stats.handler_timeouts == 1


def test_a_handler_within_its_limit_is_not_reported(make_agent: Any, caplog: Any) -> None:
    worker = make_agent("worker", Worker, handler_timeout=1.0)
    client = make_agent("client")
    with caplog.at_level(logging.WARNING, logger="mas_sync"):
        for _ in range(20):
            assert client.request("worker", {"seconds": 0}, timeout=5).payload == {"slept": True}
    assert worker.stats.handler_timeouts == 0
    assert "time limit" not in caplog.text
    run = worker._mas_run
    assert run is not None
    # Each watch is taken back once its call returned (just after the reply went).
    wait_until(lambda: len(run.timers) == 0, 5, message="no watch left")


def test_a_message_that_is_not_a_request_is_only_reported(make_agent: Any, caplog: Any) -> None:
    worker = make_agent("worker", Worker, handler_timeout=0.1)
    sender = make_agent("sender")
    with caplog.at_level(logging.WARNING, logger="mas_sync"):
        sender.send("worker", {"seconds": 0.3})
        assert worker.done.wait(5)
    assert worker.stats.handler_timeouts == 1
    assert sender.stats.received == 0  # nobody to answer


def test_the_breaker_counts_a_handler_timeout_as_a_failure(make_agent: Any) -> None:
    make_agent("worker", Worker, handler_timeout=0.05)
    client = make_agent("client", breaker_failures=1, breaker_cooldown=30)
    with pytest.raises(RequestError):
        client.request("worker", {"seconds": 0.2}, timeout=5)
    assert client.stats.breaker_opened == 1


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "1", True])
def test_bad_time_limits_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="handler_timeout must be a number of seconds"):
        Agent("a", handler_timeout=bad)
    with pytest.raises(ValueError, match="handler timeout must be a number of seconds"):
        handler("x", timeout=bad)


@pytest.mark.slow
def test_the_request_gets_one_answer_when_the_handler_ends_at_its_limit(make_agent: Any) -> None:
    # Handlers that end right at their limit: the reply and the limit's error
    # race, and exactly one of them reaches the requester.
    class AtTheLimit(Agent):
        @handler("work", timeout=0.05)
        def work(self, message: AgentMessage) -> dict:
            time.sleep(0.05)
            return {"done": True}

    make_agent("edge", AtTheLimit, max_workers=8)
    client = make_agent("client")
    answers = []
    for _ in range(5):
        result = client.request_many(["edge"], {"action": "work"}, timeout=5)
        answers.append("reply" if result.replies else result.errors["edge"].kind)
        futures = [client.request_future("edge", {"action": "work"}, timeout=5) for _ in range(8)]
        for future in futures:
            try:
                future.result(timeout=5)
                answers.append("reply")
            except RequestError as exc:
                answers.append(exc.kind)
    assert set(answers) <= {"reply", "handler_timeout"} and len(answers) == 45
    time.sleep(0.2)  # any second answer would have arrived by now
    assert client.stats.replies_dropped == 0, answers


def test_a_retry_of_a_request_answered_at_the_limit_does_not_answer_again(make_agent: Any) -> None:
    """A reliable agent's first attempt passed its limit (the requester had
    the limit's error), then raised; the retry that succeeded used to send a
    second answer, which the requester dropped."""
    attempts: List[int] = []
    retried = threading.Event()

    class Flaky(Agent):
        def on_message(self, message: AgentMessage) -> dict:
            attempts.append(message.attempt)
            if message.attempt == 1:
                time.sleep(0.3)  # past the limit of 0.1 s
                raise RuntimeError("transient")
            retried.set()
            return {"ok": True}

    class Echo(Agent):
        def on_message(self, message: AgentMessage) -> dict:
            return {"echo": True}

    make_agent("echo", Echo)
    worker = make_agent("flaky", Flaky, delivery="reliable", handler_timeout=0.1,
                        retry_delay=0.05, max_attempts=3)
    client = make_agent("client")
    with pytest.raises(RequestError) as caught:
        client.request("flaky", {}, timeout=5)
    assert caught.value.kind == "handler_timeout"
    assert retried.wait(5)
    wait_until(lambda: worker.stats.handled == 1, 5, message="the retry handled")
    # A reply that comes after any second answer of the retry, on the same channel.
    assert client.request("echo", {}, timeout=5).payload == {"echo": True}
    assert attempts == [1, 2]
    assert client.stats.replies_dropped == 0


@pytest.mark.slow
def test_a_slow_redis_does_not_make_the_agent_s_deadlines_late(make_agent: Any, r: Any) -> None:
    # The error reply at a handler's limit waits on Redis (here paused for
    # writes); the agent's own request futures still fail at their deadline.
    worker = make_agent("worker", Worker, handler_timeout=0.1)
    make_agent("silent", Agent)
    client = make_agent("client")
    asked = client.request_future("worker", {"seconds": 2.0}, timeout=10)
    began = time.monotonic()
    own = worker.request_future("silent", {}, timeout=0.4)
    r.client_pause(1500, all=False)  # writes (PUBLISH) wait 1.5 s
    try:
        with pytest.raises(Exception) as caught:
            own.result(timeout=5)
        took = time.monotonic() - began
    finally:
        r.client_unpause()
    assert type(caught.value).__name__ == "RequestTimeout"
    assert took < 0.4 + 0.4, f"the deadline came {took:.2f} s after the request"
    with pytest.raises(RequestError, match="handler_timeout|time limit"):
        asked.result(timeout=5)
