"""Bad input fails at the call, with an error that names it, and nothing is sent.

Lone surrogates (text that is not UTF-8), the payload keys the library sets
itself, and credentials in Redis URLs, which never reach an error or a log.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Iterator, List

import pytest
import redis

from mas_sync import Agent, AgentMessage, MASConnectionError, MASService, RequestError
from mas_sync._connection import redact_url
from mas_sync.testing import free_port, wait_until

from .conftest import read_message
from .support import Inbox

LONE = "\ud800"


@pytest.fixture
def channel(r: redis.Redis) -> Iterator[Any]:
    """A raw subscriber on ``agent.rx``: what was published to ``rx``, in order."""
    pubsub = r.pubsub()
    pubsub.subscribe("agent.rx")
    confirmed = pubsub.get_message(timeout=5)  # subscribed before anything is sent
    assert confirmed is not None and confirmed["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def next_payload(pubsub: Any) -> Dict[str, Any]:
    message = read_message(pubsub, 5)
    assert message is not None, "nothing was published"
    return json.loads(message["data"])["payload"]


def assert_nothing_published_before(tx: Agent, pubsub: Any) -> None:
    """The next message on the channel is a marker sent now: what failed sent nothing."""
    tx.send("rx", {"marker": True})
    assert next_payload(pubsub) == {"marker": True}


# -- lone surrogates ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"text": LONE}, "payload['text']"),
        ({"a": {"b": ["ok", "x" + LONE]}}, "payload['a']['b'][1]"),
        ({"a": [{"k" + LONE: 1}]}, "payload['a'][0]"),
        ({LONE: 1}, "payload"),
        ({"pair": "\udc00\ud800"}, "payload['pair']"),  # reversed pair: two lone halves
    ],
    ids=["value", "nested", "nested-key", "key", "reversed-pair"],
)
def test_send_refuses_a_lone_surrogate_and_publishes_nothing(
    make_agent, channel, payload, field
) -> None:
    tx = make_agent("tx")
    with pytest.raises(ValueError) as caught:
        tx.send("rx", payload)
    assert field in str(caught.value)
    assert "not valid UTF-8 text (lone surrogate)" in str(caught.value)
    assert_nothing_published_before(tx, channel)


def test_text_outside_the_bmp_and_escaped_looking_text_go_through(make_agent) -> None:
    rx = make_agent("rx", cls=Inbox)
    tx = make_agent("tx")
    payload = {"emoji": "\U0001F600 ok", "looks_escaped": "\\ud800", "key\U0001F600": ["\\\\udc00"]}
    tx.send("rx", payload)
    wait_until(lambda: rx.payloads() == [payload], 5, message="the payload, intact")
    assert rx.stats.invalid == 0


def test_send_many_request_and_reply_refuse_a_lone_surrogate(make_agent, channel) -> None:
    tx = make_agent("tx")
    with pytest.raises(ValueError, match=r"payload of item 1\['t'\] is not valid UTF-8"):
        tx.send_many([("rx", {"ok": 1}), ("rx", {"t": LONE})])
    with pytest.raises(ValueError, match=r"payload\['t'\] is not valid UTF-8"):
        tx.request("rx", {"t": LONE}, timeout=1)
    assert_nothing_published_before(tx, channel)


def test_a_reply_with_a_lone_surrogate_is_refused_in_the_handler(make_agent) -> None:
    errors: List[BaseException] = []

    class Replier(Agent):
        def on_message(self, message: AgentMessage) -> None:
            try:
                message.reply({"t": LONE})
            except ValueError as exc:
                errors.append(exc)
                message.reply({"t": "fine"})

    make_agent("rx", cls=Replier)
    tx = make_agent("tx")
    assert tx.request("rx", {}, timeout=5).payload == {"t": "fine"}
    assert len(errors) == 1 and "reply['t'] is not valid UTF-8" in str(errors[0])


def test_target_id_agent_id_and_capabilities_refuse_a_lone_surrogate(make_agent) -> None:
    with pytest.raises(ValueError, match="agent id .* not valid UTF-8"):
        Agent("a" + LONE)
    with pytest.raises(ValueError, match=r"capabilities\[1\] .*not valid UTF-8"):
        Agent("a", ["ok", "nlp" + LONE])
    tx = make_agent("tx")
    with pytest.raises(ValueError, match="target id .*not valid UTF-8"):
        tx.send("rx" + LONE, {})
    with pytest.raises(ValueError, match="target id of item 0 .*not valid UTF-8"):
        tx.send_many([("rx" + LONE, {})])
    with pytest.raises(ValueError, match="target id .*not valid UTF-8"):
        tx.request("rx" + LONE, {}, timeout=1)
    with pytest.raises(ValueError, match=r"capabilities\[0\] .*not valid UTF-8"):
        tx.discover(["x" + LONE])


def test_metadata_with_a_lone_surrogate_fails_start_and_writes_nothing(make_agent, r) -> None:
    class Odd(Agent):
        def get_metadata(self) -> Dict[str, Any]:
            return {"where": "room" + LONE}

    agent = make_agent("odd", cls=Odd, start=False)
    with pytest.raises(ValueError, match=r"get_metadata\(\) result\['where'\] is not valid UTF-8"):
        agent.start()
    assert not agent.is_running
    assert r.keys("*") == []
    # A peer still finds everyone else.
    peer = make_agent("peer", capabilities=["x"])
    assert [a["id"] for a in peer.discover()] == ["peer"]


# -- reserved payload keys ----------------------------------------------------

MARKERS = ["_correlation_id", "_expects_reply", "_is_reply"]


@pytest.mark.parametrize("key", MARKERS)
def test_send_send_many_and_request_refuse_the_request_reply_markers(
    make_agent, channel, key
) -> None:
    tx = make_agent("tx")
    payload = {"text": "hi", key: "x" if key == "_correlation_id" else True}
    with pytest.raises(ValueError, match=f"reserved.*{key}"):
        tx.send("rx", payload)
    with pytest.raises(ValueError, match=f"payload of item 0 .*reserved.*{key}"):
        tx.send_many([("rx", payload)])
    with pytest.raises(ValueError, match=f"reserved.*{key}"):
        tx.request("rx", payload, timeout=1)
    assert_nothing_published_before(tx, channel)


@pytest.mark.parametrize("key", MARKERS + ["_error"])
def test_reply_refuses_the_reserved_keys(make_agent, key) -> None:
    refused: List[BaseException] = []

    class Replier(Agent):
        def on_message(self, message: AgentMessage) -> None:
            try:
                message.reply({"v": 1, key: {"type": "t", "message": "m"}})
            except ValueError as exc:
                refused.append(exc)
            message.reply({"v": 2})

    make_agent("rx", cls=Replier)
    tx = make_agent("tx")
    assert tx.request("rx", {}, timeout=5).payload == {"v": 2}
    assert len(refused) == 1 and key in str(refused[0])


def test_a_handler_that_returns_a_reserved_key_fails_the_request(make_agent) -> None:
    class Returner(Agent):
        def on_message(self, message: AgentMessage) -> Dict[str, Any]:
            return {"_is_reply": "mine"}

    make_agent("rx", cls=Returner)
    tx = make_agent("tx")
    with pytest.raises(RequestError) as caught:
        tx.request("rx", {}, timeout=5)
    assert caught.value.kind == "handler_error" and "_is_reply" in str(caught.value)


def test_error_key_in_a_plain_message_or_request_reaches_the_handler(make_agent) -> None:
    rx = make_agent("rx", cls=Inbox)
    tx = make_agent("tx")
    tx.send("rx", {"_error": "not ours"})
    assert tx.request("rx", {"_error": 1, "token": "t"}, timeout=5).payload == {"pong": "t"}
    wait_until(lambda: len(rx.payloads()) == 2, 5)
    assert rx.payloads() == [{"_error": "not ours"}, {"_error": 1, "token": "t"}]
