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
from mas_sync._redis import redact_url
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


# -- credentials in URLs ------------------------------------------------------


@pytest.mark.parametrize(
    "url, secrets, shown",
    [
        ("redis://user:hunter2@h:1/0", ["hunter2"], "redis://user:***@h:1/0"),
        ("redis://:hunter2@h:1/0", ["hunter2"], "redis://:***@h:1/0"),
        ("redis://u:hun@ter2@h:1/0", ["hun", "ter2"], "redis://u:***@h:1/0"),
        ("redis://u:a:b@c@h:1", ["a:b", "b@c"], "redis://u:***@h:1"),
        ("redis://u:p%40ss@h:1", ["p%40ss"], "redis://u:***@h:1"),
        ("rediss://h:1/0?password=hunter2", ["hunter2"], "rediss://h:1/0?password=***"),
        ("redis://h:1/0?db=2&password=hun%40ter2&x=1", ["hun", "ter2"],
         "redis://h:1/0?db=2&password=***&x=1"),
        ("redis://h:1/0?password=hun@ter2", ["hun", "ter2"], "redis://h:1/0?password=***"),
        ("redis://h:1/?pass%77ord=hunter2", ["hunter2"], "redis://h:1/?pass%77ord=***"),
        ("redis://h:1/?ssl_password=hunter2&password=b2", ["hunter2", "b2"],
         "redis://h:1/?ssl_password=***&password=***"),
        ("redis://h:1/?username=alice&password=hunter2", ["hunter2"],
         "redis://h:1/?username=alice&password=***"),
        ("redis://:hunter2@h:1/0?password=other2", ["hunter2", "other2"],
         "redis://:***@h:1/0?password=***"),
        ("unix://:hunter2@/tmp/redis.sock?db=1", ["hunter2"], "unix://:***@/tmp/redis.sock?db=1"),
        ("unix:///tmp/redis.sock?password=hunter2", ["hunter2"],
         "unix:///tmp/redis.sock?password=***"),
        ("redis+sentinel://u:hun@ter2@s1:26379,s2:26380/mymaster/0", ["hun", "ter2"],
         "redis+sentinel://u:***@s1:26379,s2:26380/mymaster/0"),
        ("redis+cluster://:hunter2@n1:7000,n2:7001", ["hunter2"],
         "redis+cluster://:***@n1:7000,n2:7001"),
        # Not read by redis-py as a password (the netloc ends at "/", "?" or
        # "#"), but a password all the same: hidden too.
        ("redis://:hun/ter2@h:1/0", ["hun", "ter2"], "redis://:***@h:1/0"),
        ("redis://:hun#ter2@h:1/0", ["hun", "ter2"], "redis://:***@h:1/0"),
        ("redis://:hun?ter2@h:1/0", ["hun", "ter2"], "redis://:***@h:1/0"),
        # Base64 passwords hold "=", "+" and "/".
        ("redis://:abc123==@h:1", ["abc123"], "redis://:***@h:1"),
        ("redis://u:ab+c/d12==@h:1/0?password=x@yz", ["ab+c", "d12", "x@yz"],
         "redis://u:***@h:1/0?password=***"),
        ("REDIS://:hunter2@h:1/0", ["hunter2"], "REDIS://:***@h:1/0"),
        ("redis://h:1/0", [], "redis://h:1/0"),
        # A userinfo without ":" is read as a user name; often a password
        # written in the wrong place: hidden.
        ("redis://hunter2@h:1/0", ["hunter2"], "redis://***@h:1/0"),
    ],
)
def test_redact_url_hides_every_password_form(url: str, secrets: List[str], shown: str) -> None:
    redacted = redact_url(url)
    assert redacted == shown
    for secret in secrets:
        assert secret not in redacted


def test_redis_py_reads_those_passwords_where_redact_url_hides_them() -> None:
    from redis.connection import parse_url

    assert parse_url("redis://u:hun@ter2@h:1/0")["password"] == "hun@ter2"
    assert parse_url("redis://h:1/0?password=hun@ter2")["password"] == "hun@ter2"
    assert parse_url("redis://h:1/?pass%77ord=hunter2")["password"] == "hunter2"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0?password=hunter2",
        "redis://user:hun@ter2@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?username=u&password=hun@ter2",
    ],
)
def test_connection_errors_and_logs_never_show_the_password(url: str, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="mas_sync")
    url = url.format(port=free_port())
    agent = Agent("lonely", redis_url=url, retry_timeout=0, command_timeout=1)
    with pytest.raises(MASConnectionError) as caught:
        agent.start()
    service = MASService(url)
    with pytest.raises(MASConnectionError) as caught_service:
        service.start()
    texts = [str(caught.value), str(caught_service.value), caplog.text]
    assert "127.0.0.1" in texts[0] and "127.0.0.1" in texts[1]
    for text in texts:
        assert "hunter2" not in text and "ter2" not in text and "hun@" not in text


@pytest.mark.parametrize(
    "url",
    [
        # urlparse ends the netloc at "/": redis-py reads "pass" as the port
        # and says so in its error.
        "redis://user:pass/word@127.0.0.1:1",
        # The sentinel URL's parser quotes the address it cannot read.
        "redis+sentinel://:pass/word@127.0.0.1:1/mymaster",
    ],
)
def test_a_url_that_cannot_be_parsed_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        Agent("a", redis_url=url).start()
    assert "pass" not in str(caught.value) and "word" not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_refused_password_is_not_shown(redis_server, r, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="mas_sync")
    r.execute_command("ACL", "SETUSER", "guarded", "on", ">right", "~*", "&*", "+@all")
    try:
        url = f"redis://guarded:wro@ng2@127.0.0.1:{redis_server.port}/0"
        with pytest.raises(MASConnectionError) as caught:
            Agent("a", redis_url=url, retry_timeout=0).start()
        assert "wro" not in str(caught.value) and "ng2" not in str(caught.value)
        assert "wro" not in caplog.text and "ng2" not in caplog.text
        assert "guarded:***@" in str(caught.value)
    finally:
        r.execute_command("ACL", "DELUSER", "guarded")


def test_the_demo_does_not_print_the_password(capsys) -> None:
    from mas_sync.tools import demo as _demo

    with pytest.raises(MASConnectionError):
        _demo.run(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    out = capsys.readouterr().out
    assert "Redis at redis://:***@127.0.0.1:" in out and "hunter2" not in out


def test_a_payload_too_deep_to_encode_is_a_value_error(make_agent, channel) -> None:
    deep: Dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    tx = make_agent("tx")
    with pytest.raises(ValueError, match="nested too deeply"):
        tx.send("rx", deep)
    assert_nothing_published_before(tx, channel)


def test_capabilities_changed_after_the_constructor_are_checked_by_start(make_agent, r) -> None:
    agent = make_agent("late", start=False)
    agent.capabilities = ["nlp", "x" + LONE]
    with pytest.raises(ValueError, match=r"capabilities\[1\] .*not valid UTF-8"):
        agent.start()
    assert r.keys("*") == [] and not agent.is_running


@pytest.mark.parametrize("make", [lambda url: Agent("a", redis_url=url), lambda url: MASService(url)])
def test_a_url_scheme_mas_sync_does_not_take_is_refused_by_the_constructor(make) -> None:
    from mas_sync._redis import REDIS_URL_SCHEMES

    with pytest.raises(ValueError) as caught:
        make("http://user:hunter2@example.com")
    assert ", ".join(REDIS_URL_SCHEMES) in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_update_state_refuses_a_lone_surrogate_and_writes_nothing(make_agent, r) -> None:
    from pydantic import BaseModel

    class Notes(BaseModel):
        text: str = ""

    untyped = make_agent("untyped")
    untyped.update_state({"kept": "yes"})
    for updates in ({"text": "a\ud800"}, {"k\udfff": "v"}):
        with pytest.raises(ValueError, match="lone surrogate"):
            untyped.update_state(updates)
    assert r.hgetall("agent.state:untyped") == {"kept": "yes"}
    assert dict(untyped.state) == {"kept": "yes"}
    typed = make_agent("typed", state_model=Notes)
    with pytest.raises(ValueError, match="lone surrogate"):
        typed.update_state({"text": "a\ud800"})
    assert typed.state.text == "" and r.hget("agent.state:typed", "text") in (None, "")
