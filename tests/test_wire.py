"""The wire contract: every key, channel and message builder."""

from __future__ import annotations

import hashlib
import json

import pytest

from mas_sync import AgentMessage
from mas_sync import _json, _wire


def test_key_and_channel_builders() -> None:
    assert _wire.agent_key("a1") == "agent:a1"
    assert _wire.heartbeat_key("a1") == "agent:a1:heartbeat"
    assert _wire.state_key("a1") == "agent.state:a1"
    assert _wire.agent_channel("a1") == "agent.a1"
    assert _wire.SYSTEM_CHANNEL == "mas.system"
    assert _wire.nonce_key("a1", "n1") == "mas_sync:nonce:{a1}:n1"
    assert _wire.nonce_key("}a", "n1") == "mas_sync:nonce:{%s}:n1" % hashlib.sha1(b"}a").hexdigest()
    assert _wire.rate_key("a1", "s1") == "mas_sync:rate:a1:s1"
    assert _wire.breaker_key("a1") == "mas_sync:breaker:a1"


def test_agent_id_from_key_skips_other_keys() -> None:
    assert _wire.agent_id_from_key("agent:a1") == "a1"
    assert _wire.agent_id_from_key("agent:a1:heartbeat") is None
    assert _wire.agent_id_from_key("agent:") is None
    assert _wire.agent_id_from_key("agent.state:a1") is None


@pytest.mark.parametrize(
    "bad", ["", "a:b", "a*", "a?", "a[1]", "a]", "a b", "a\tb", "a\nb", "a\x00", "a\x7f", "a\\b", "x" * 257]
)
def test_bad_agent_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        _wire.validate_agent_id(bad)


def test_agent_id_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        _wire.validate_agent_id(42)


@pytest.mark.parametrize("good", ["a", "agent-1", "nlp_agent.v2", "Ünïcode", "x" * 256])
def test_good_agent_ids_pass(good: str) -> None:
    assert _wire.validate_agent_id(good) == good


def test_capabilities_must_be_a_list_of_strings() -> None:
    assert _wire.validate_capabilities(None) == []
    assert _wire.validate_capabilities(("a", "b")) == ["a", "b"]
    with pytest.raises(TypeError, match="list of strings"):
        _wire.validate_capabilities("nlp")
    with pytest.raises(TypeError):
        _wire.validate_capabilities(["a", 1])
    with pytest.raises(ValueError):
        _wire.validate_capabilities([""])


def test_encoded_message_has_the_async_fields_and_parses_back() -> None:
    text = _wire.encode_message("a", "b", {"x": [1, 2]}, message_id="m1", timestamp=12.5)
    data = json.loads(text)
    assert data == {
        "sender_id": "a",
        "target_id": "b",
        "payload": {"x": [1, 2]},
        "timestamp": 12.5,
        "message_id": "m1",
    }
    message = AgentMessage.model_validate_json(text)
    assert (message.sender_id, message.payload, message.message_id) == ("a", {"x": [1, 2]}, "m1")


@pytest.mark.parametrize("payload", [[1], "text", None, 3, {1: "int key"}, {"f": object()}, {"s": {1, 2}}])
def test_payload_that_is_not_a_json_object_is_a_type_error(payload: object) -> None:
    with pytest.raises(TypeError):
        _wire.encode_message("a", "b", payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [{"n": float("nan")}, {"i": float("inf")}])
def test_payload_with_non_json_numbers_is_a_value_error(payload: dict) -> None:
    with pytest.raises(ValueError):
        _wire.encode_message("a", "b", payload)


def test_circular_payload_is_a_value_error() -> None:
    payload: dict = {}
    payload["self"] = payload
    with pytest.raises(ValueError):
        _wire.encode_message("a", "b", payload)


def test_system_events() -> None:
    assert json.loads(_wire.register_event("a", ["x"])) == {
        "type": "REGISTER", "agent_id": "a", "capabilities": ["x"]
    }
    assert json.loads(_wire.deregister_event("a")) == {"type": "DEREGISTER", "agent_id": "a"}


def test_registration_fields_follow_the_contract() -> None:
    fields = _wire.registration_fields("a", ["x"], {"v": 1}, "tok")
    assert set(fields) == {"id", "capabilities", "metadata", "status", "token", "registered_at"}
    assert json.loads(fields["capabilities"]) == ["x"]
    assert json.loads(fields["metadata"]) == {"v": 1}
    assert fields["status"] == "ACTIVE"
    float(fields["registered_at"])


def test_parse_registration_refuses_what_no_agent_writes() -> None:
    def parse(**fields: bytes) -> dict:
        good = {"agent_id": b"a", "capabilities": b'["x"]', "metadata": b'{"v": 1.5}'}
        return _wire.parse_registration(b"agent:a", **{**good, **fields})

    assert parse() == {"id": "a", "capabilities": ["x"], "metadata": {"v": 1.5}}
    assert parse(capabilities=None, metadata=None) == {"id": "a", "capabilities": [],
                                                       "metadata": {}}
    for bad, reason in [
        (dict(agent_id=None), "no id"),
        (dict(agent_id=b"b"), "names another key"),
        (dict(agent_id=b"a\xff"), "id is not UTF-8"),
        (dict(capabilities=b"not json"), "capabilities are not JSON"),
        (dict(capabilities=b'["x", 0x10]'), "capabilities are not JSON"),
        (dict(capabilities=b'["\xff"]'), "capabilities are not JSON.*utf-8"),
        (dict(capabilities=b'"x"'), "not a list of strings"),
        (dict(capabilities=b'["x", 1]'), "not a list of strings"),
        (dict(metadata=b"[]"), "not a JSON object"),
        (dict(metadata=b'{"a": NaN}'), "NaN is not JSON"),
        (dict(metadata=b'{"a": Infinity}'), "Infinity is not JSON"),
        (dict(metadata=b'{"a": nan}'), "metadata is not JSON"),
        (dict(metadata=b'{"a": -1e999}'), "beyond the range of a float"),
        (dict(metadata=b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse(**bad)


def test_loads_strict_keeps_what_strict_json_allows() -> None:
    assert _json.loads_strict(b'{"n": 1e308, "i": 100000000000000000000, "s": "\\u00e9"}') == {
        "n": 1e308, "i": 10**20, "s": "\u00e9"}
    assert _wire.shown_key(b"agent:\xffx") == "agent:\\xffx"


def test_state_values_are_encoded_like_the_async_framework() -> None:
    assert _wire.encode_state_value(42) == "42"
    assert _wire.encode_state_value(True) == "True"
    assert _wire.encode_state_value(None) == "None"
    assert _wire.encode_state_value("s") == "s"
    assert _wire.encode_state_value([1, "a"]) == '[1, "a"]'
    assert _wire.encode_state_value({"k": 1}) == '{"k": 1}'


@pytest.mark.parametrize("channel", ["agent.a", "agent.x{y}z", "agent.q}{", "mas.system"])
def test_the_wake_channel_pattern_matches_every_wake_channel_of_its_channel(channel: str) -> None:
    import fnmatch

    pattern = _wire.wake_channel_pattern(channel)
    assert pattern.startswith("mas_sync:wake:{") and pattern.endswith("}:*")
    assert all(fnmatch.fnmatchcase(_wire.wake_channel(channel), pattern) for _ in range(3))
    assert not fnmatch.fnmatchcase(_wire.wake_channel("agent.other"), pattern)


def test_live_instances_counts_the_entries_that_expire_later() -> None:
    fields = {b"id": b"w", b"instance:a": b"2000 t1", b"instance:b": b"1000 t2",
              b"instance:c": b"not a number", b"instance:d": b"3000 t4"}
    assert _wire.live_instances(fields, 1000) == 2
    assert _wire.live_instances(fields, 5000) == 0
    assert _wire.live_instances({}, 0) == 0
