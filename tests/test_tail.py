"""The live tail of messages and mas.system events (mas_sync watch, the dashboard)."""

from __future__ import annotations

from typing import Any, Callable, List

import pytest

from mas_sync import Agent, AgentMessage, MASConnectionError
from mas_sync._tail import Tail, TailEvent, decode_event
from mas_sync.testing import wait_until


class Echo(Agent):
    def on_message(self, message: AgentMessage) -> Any:
        if message.payload.get("fail"):
            raise RuntimeError("asked to fail")
        return {"echo": message.payload.get("n")}


def kinds(tail: Tail, *wanted: str, timeout: float = 5.0) -> List[TailEvent]:
    """Wait until the tail holds events of each kind in ``wanted`` (in any order)."""
    return wait_until(
        lambda: (events := tail.events()[1]) and all(
            sum(e.kind == k for e in events) >= wanted.count(k) for k in wanted) and events,
        timeout, message=f"events {wanted}",
    )


def test_the_tail_decodes_messages_requests_replies_and_system_events(
    make_agent: Callable[..., Any], redis_url: str
) -> None:
    with Tail(redis_url) as tail:
        echo = make_agent("echo", Echo, capabilities=["e"])
        asker = make_agent("asker")
        asker.send("echo", {"n": 1})
        assert asker.request("echo", {"n": 2}, timeout=5).payload == {"echo": 2}
        with pytest.raises(Exception):
            asker.request("echo", {"fail": True}, timeout=5)
        events = kinds(tail, "system", "system", "message", "request", "request", "reply", "error")
        system = [e for e in events if e.kind == "system"]
        assert {e.summary for e in system} >= {'REGISTER echo ["e"]', "REGISTER asker"}
        message = next(e for e in events if e.kind == "message")
        assert (message.sender, message.target, message.channel) == ("asker", "echo", "agent.echo")
        assert message.payload == {"n": 1} and message.summary == '{"n": 1}' and message.size > 20
        request = next(e for e in events if e.kind == "request")
        reply = next(e for e in events if e.kind == "reply")
        assert request.correlation_id == reply.correlation_id is not None
        assert (reply.sender, reply.target, reply.payload) == ("echo", "asker", {"echo": 2})
        numbers = [e.number for e in events]
        assert numbers == sorted(numbers) == list(range(1, len(numbers) + 1))
        last, newer = tail.events(after=numbers[-1])
        assert last == numbers[-1] and newer == []
        echo.stop()
        kinds(tail, "system", "system", "system")
        assert tail.events()[1][-1].summary == "DEREGISTER echo"


def test_a_tail_of_some_agents_shows_only_theirs(
    make_agent: Callable[..., Any], redis_url: str
) -> None:
    make_agent("a")
    make_agent("b")
    sender = make_agent("sender")
    with Tail(redis_url, ["a"]) as tail:
        sender.send("b", {"to": "b"})
        sender.send("a", {"to": "a"})
        events = kinds(tail, "message")
        tail.wait(events[-1].number, 0.3)
        assert [e.payload for e in tail.events()[1]] == [{"to": "a"}]


def test_the_tail_reads_the_streams_of_reliable_agents_without_taking_from_them(
    make_agent: Callable[..., Any], redis_url: str
) -> None:
    worker = make_agent("worker", Echo, delivery="reliable")
    sender = make_agent("sender")
    sender.send("worker", {"n": 0})  # before the tail: not shown
    wait_until(lambda: worker.stats.handled == 1, 5)
    with Tail(redis_url) as tail:
        for n in range(1, 4):
            sender.send("worker", {"n": n})
        events = kinds(tail, "message", "message", "message")
        assert [e.payload for e in events if e.kind == "message"] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert {e.channel for e in events} == {"agent.stream:worker"}
        wait_until(lambda: worker.stats.handled == 4, 5)


def test_the_tail_keeps_the_newest_events_and_waits_for_more(
    make_agent: Callable[..., Any], redis_url: str
) -> None:
    make_agent("sink")
    sender = make_agent("sender")
    with Tail(redis_url, ["sink"], maxlen=3) as tail:
        assert tail.wait(0, timeout=0.05) == (0, [])
        for n in range(6):
            sender.send("sink", {"n": n})
        wait_until(lambda: tail.events()[0] == 6, 5)
        assert [e.payload["n"] for e in tail.events()[1]] == [3, 4, 5]


def test_the_tail_on_a_cluster_follows_agents_that_start_later(
    cluster: Any, make_agent: Callable[..., Any]
) -> None:
    url = cluster.url
    first = make_agent("first", redis_url=url)
    with Tail(url) as tail:
        later = make_agent("later", redis_url=url)
        kinds(tail, "system")  # REGISTER later: subscribed at once
        wait_until(lambda: (first.send("later", {"hi": 1}), tail.events()[1])[1]
                   and any(e.kind == "message" for e in tail.events()[1]), 5, interval=0.2)
        later.send("first", {"back": 1})
        kinds(tail, "message", "message")


def test_undecodable_data_is_shown_as_it_is() -> None:
    event = decode_event(1, 0.0, "agent.x", b"\xff not json")
    assert (event.kind, event.target, event.payload) == ("message", "x", None)
    assert event.summary == "\\xff not json"
    system = decode_event(2, 0.0, "mas.system", b"[]")
    assert system.kind == "system" and system.sender is None
    # Nested deeper than the parser goes (it used to raise RecursionError).
    deep = decode_event(3, 0.0, "mas.system", b"[" * 100_000)
    assert deep.kind == "system" and deep.payload is None
    assert decode_event(4, 0.0, "agent.x", b"[" * 100_000).payload is None


def test_an_unreachable_redis_is_a_clear_error() -> None:
    with pytest.raises(MASConnectionError, match="cannot reach Redis"):
        Tail("redis://127.0.0.1:1").start()
    with pytest.raises(ValueError):
        Tail("redis://127.0.0.1:1", maxlen=0)
