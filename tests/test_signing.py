"""Signed messages: keys, signatures, and what a receiver refuses (sent from raw redis-py)."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import threading
import time
from typing import Any, Callable, Dict, List

import pytest
import redis

from mas_sync import Agent, AgentMessage, Keyring, RequestError, SigningKey
from mas_sync import _signing, _wire
from mas_sync._signing import RedisClock, Refused, read_signature, sign
from mas_sync.testing import wait_until

from .support import Inbox

SECRET_A = b"a" * 32
SECRET_B = b"b" * 32


def ring(*keys: SigningKey, sign_with: Any = None) -> Keyring:
    return Keyring(keys, sign_with=sign_with)


def framed(sender: str, target: str, payload: Dict[str, Any], **kwargs: Any) -> str:
    return _wire.encode_message(sender, target, payload, **kwargs)


def signed(sender: str, target: str, payload: Dict[str, Any], key: SigningKey,
           when: float, **kwargs: Any) -> str:
    return sign(framed(sender, target, payload, **kwargs), key, when)


def redis_now(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


# -- keys, keyrings, signatures -------------------------------------------------


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    key = SigningKey("k1", SECRET_A)
    text = signed("s", "t", {"n": 1, "text": "héllo"}, key, 1000.5)
    assert json.loads(text)["signature"]["key"] == "k1"
    found = read_signature(text.encode(), ring(key))
    assert found is not None and found.key is key and found.time == 1000.5
    for old, new in (('"n":1', '"n":2'), ('"sender_id":"s"', '"sender_id":"x"'),
                     ('"time":1000.5', '"time":1001.5'), ('"key":"k1"', '"key":"k2"')):
        tampered = text.replace(old, new, 1)
        assert tampered != text
        with pytest.raises(Refused) as refused:
            read_signature(tampered.encode(), ring(key, SigningKey("k2", SECRET_B)))
        assert refused.value.reason == "bad_signature"


def test_a_key_not_held_is_a_bad_signature_and_no_signature_is_unsigned() -> None:
    text = signed("s", "t", {}, SigningKey("k1", SECRET_A), 1.0)
    with pytest.raises(Refused, match="does not hold"):
        read_signature(text.encode(), ring(SigningKey("k2", SECRET_B)))
    assert read_signature(framed("s", "t", {}).encode(), ring(SigningKey("k1", SECRET_A))) is None
    # Anything after the signature, or a signature that is not the last member: unsigned.
    assert read_signature((text[:-1] + ',"x":1}').encode(), ring(SigningKey("k1", SECRET_A))) \
        is None
    payload_sig = framed("s", "t", {"signature": {"key": "k1"}})
    assert read_signature(payload_sig.encode(), ring(SigningKey("k1", SECRET_A))) is None


@pytest.mark.parametrize("args, error", [
    (("", SECRET_A), ValueError),
    (("k 1", SECRET_A), ValueError),
    ((1, SECRET_A), TypeError),
    (("k1", b"short"), ValueError),
    (("k1", 12345), TypeError),
    (("k1", SECRET_A, "alice"), TypeError),
    (("k1", SECRET_A, ["a:b"]), ValueError),
])
def test_bad_keys_are_refused(args: Any, error: type) -> None:
    with pytest.raises(error):
        SigningKey(*args)


def test_a_key_never_shows_its_secret() -> None:
    key = SigningKey("k1", "s" * 20, senders=["alice"])
    assert key.secret == b"s" * 20 and key.senders == frozenset({"alice"})
    assert "sss" not in repr(key) and "sss" not in repr(Keyring([key]))


def test_keyring_add_use_retire() -> None:
    k1, k2 = SigningKey("k1", SECRET_A), SigningKey("k2", SECRET_B)
    keys = Keyring([k1])
    assert keys.signing_key is k1
    keys.add(k2)
    assert keys.key_ids == {"k1", "k2"} and keys.signing_key is k1
    with pytest.raises(ValueError, match="signs"):
        keys.retire("k1")
    keys.use("k2")
    keys.retire("k1")
    assert keys.key_ids == {"k2"} and keys.signing_key is k2
    with pytest.raises(ValueError):
        keys.use("k1")
    with pytest.raises(ValueError):
        keys.add(SigningKey("k2", SECRET_A))
    with pytest.raises(ValueError):
        Keyring([k1, SigningKey("k1", SECRET_B)])
    with pytest.raises(ValueError):
        Keyring([k1], sign_with="k9")
    with pytest.raises(TypeError):
        Keyring(["k1"])  # type: ignore[list-item]
    assert Keyring().signing_key is None


def test_options_are_checked(redis_url: str) -> None:
    key = SigningKey("k1", SECRET_A, senders=["alice"])
    with pytest.raises(ValueError, match="needs a keyring"):
        Agent("bob", redis_url=redis_url, require_signed=True)
    with pytest.raises(ValueError, match="may not sign for 'bob'"):
        Agent("bob", redis_url=redis_url, keyring=Keyring([key]))
    with pytest.raises(TypeError):
        Agent("bob", redis_url=redis_url, keyring={"k1": SECRET_A})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Agent("bob", redis_url=redis_url, accept_from="alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Agent("bob", redis_url=redis_url, accept_from=["a:b"])
    with pytest.raises(ValueError):
        Agent("bob", redis_url=redis_url, signature_window=0)


# -- agents -----------------------------------------------------------------------


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("k1", SECRET_A)


def test_signed_agents_talk_and_a_received_message_keeps_no_secret(
    make_agent: Callable[..., Any], key: SigningKey
) -> None:
    bob = make_agent("bob", Inbox, keyring=Keyring([key]), require_signed=True)
    alice = make_agent("alice", keyring=Keyring([key]), require_signed=True)
    alice.send("bob", {"token": 1})
    reply = alice.request("bob", {"token": 2}, timeout=5)
    assert reply.payload == {"pong": 2}
    wait_until(lambda: len(bob.got) == 2)
    got = bob.got[0]
    assert got.payload == {"token": 1}
    for clone in (copy.copy(got), copy.deepcopy(got), got.model_copy(), pickle.loads(pickle.dumps(got))):
        assert clone == got and clone._checked is None
    assert SECRET_A not in pickle.dumps(got)
    assert bob.stats.refused == 0 and alice.stats.refused == 0


def test_every_bad_message_is_refused_under_its_reason(
    make_agent: Callable[..., Any], r: redis.Redis, key: SigningKey
) -> None:
    """Unsigned, tampered, stale, replayed and forged messages, 20 of each, from raw redis-py."""
    alice_key = SigningKey("alice-key", SECRET_B, senders=["alice"])
    bob = make_agent("bob", Inbox, keyring=Keyring([key, alice_key]), require_signed=True)
    channel = _wire.agent_channel("bob")
    now = redis_now(r)
    n = 20
    for i in range(n):
        r.publish(channel, framed("mallory", "bob", {"bad": "unsigned", "i": i}))
        good = signed("alice", "bob", {"bad": "tampered", "i": i}, key, now)
        r.publish(channel, good.replace('"i":%d' % i, '"i":%d' % (i + 1000)))
        r.publish(channel, signed("alice", "bob", {"bad": "stale", "i": i}, key, now - 301))
        r.publish(channel, signed("alice", "bob", {"bad": "future", "i": i}, key, now + 301))
        # A key issued to alice cannot sign for anyone else.
        r.publish(channel, signed("mallory", "bob", {"bad": "forged", "i": i}, alice_key, now))
    replayed = [signed("alice", "bob", {"ok": "replayed", "i": i}, alice_key, now)
                for i in range(n)]
    for text in replayed + replayed:
        r.publish(channel, text)
    wait_until(lambda: bob.stats.refused >= 6 * n, message="refusals")
    wait_until(lambda: len(bob.got) >= n)
    stats = bob.stats
    assert (stats.refused_unsigned, stats.refused_bad_signature, stats.refused_stale,
            stats.refused_replayed, stats.refused_not_allowed) == (n, n, 2 * n, n, n)
    assert sorted(m.payload["i"] for m in bob.got) == list(range(n))
    assert all(m.payload["ok"] == "replayed" for m in bob.got)
    assert stats.handled == n


def test_refused_requests_get_an_error_reply_and_are_logged_once(
    make_agent: Callable[..., Any], key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    bob = make_agent("bob", Inbox, keyring=Keyring([key]), require_signed=True)
    alice = make_agent("alice")  # signs nothing
    caplog.set_level(logging.WARNING, logger="mas_sync")
    for _ in range(3):
        with pytest.raises(RequestError) as failed:
            alice.request("bob", {"token": 1}, timeout=5)
        assert failed.value.kind == "refused"
        assert failed.value.details == [{"reason": "unsigned"}]
    assert bob.got == [] and bob.stats.refused_unsigned == 3
    lines = [rec.getMessage() for rec in caplog.records if "refused message" in rec.getMessage()]
    assert len(lines) == 1 and "alice" in lines[0] and "unsigned" in lines[0]


def test_without_require_signed_unsigned_messages_pass_and_bad_ones_do_not(
    make_agent: Callable[..., Any], r: redis.Redis, key: SigningKey
) -> None:
    bob = make_agent("bob", Inbox, keyring=Keyring([key]))
    r.publish(_wire.agent_channel("bob"), framed("async-peer", "bob", {"token": "plain"}))
    text = signed("alice", "bob", {"token": "x"}, key, redis_now(r))
    r.publish(_wire.agent_channel("bob"), text.replace('"x"', '"y"'))
    wait_until(lambda: bob.stats.refused_bad_signature == 1 and len(bob.got) == 1)
    assert bob.payloads() == [{"token": "plain"}]


def test_a_forged_reply_is_refused_and_the_real_one_is_taken(
    make_agent: Callable[..., Any], r: redis.Redis, key: SigningKey
) -> None:
    answered = threading.Event()
    release = threading.Event()
    asked: List[str] = []

    class Slow(Agent):
        def on_message(self, message: AgentMessage) -> None:
            asked.append(message.correlation_id or "")
            answered.set()
            release.wait(5)
            message.reply({"from": "bob"})

    make_agent("bob", Slow, keyring=Keyring([key]))
    alice = make_agent("alice", keyring=Keyring([key]), require_signed=True)
    outcome: List[Any] = []
    caller = threading.Thread(
        target=lambda: outcome.append(alice.request("bob", {}, timeout=5)), daemon=True
    )
    caller.start()
    assert answered.wait(5)
    forged = framed("bob", "alice", _wire.reply_payload({"from": "mallory"}, asked[0]))
    r.publish(_wire.agent_channel("alice"), forged)
    wait_until(lambda: alice.stats.refused_unsigned == 1)
    release.set()
    caller.join(5)
    assert outcome and outcome[0].payload == {"from": "bob"}


def test_hosts_clocks_do_not_matter_redis_clock_does(r: redis.Redis) -> None:
    real = time.time
    ahead = RedisClock(r, wall=lambda: real() + 3600)
    behind = RedisClock(r, wall=lambda: real() - 3600)
    truth = redis_now(r)
    assert abs(ahead.now() - truth) < 1 and abs(behind.now() - truth) < 1


def test_an_agent_on_a_host_whose_clock_is_an_hour_off_signs_in_time(
    make_agent: Callable[..., Any], key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    bob = make_agent("bob", Inbox, keyring=Keyring([key]), require_signed=True)
    bob._mas_run.clock._wall = real  # bob's host keeps good time...
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # ...alice's is an hour fast
    alice = make_agent("alice", keyring=Keyring([key]))
    alice.send("bob", {"token": 1})
    wait_until(lambda: bob.payloads() == [{"token": 1}])
    assert bob.stats.refused == 0


# -- rotation ---------------------------------------------------------------------


def test_a_key_is_rotated_while_messages_flow_and_none_is_refused(
    make_agent: Callable[..., Any]
) -> None:
    old, new = SigningKey("2025", SECRET_A), SigningKey("2026", SECRET_B)
    rings = {name: Keyring([old]) for name in ("alice", "bob")}
    alice = make_agent("alice", Inbox, keyring=rings["alice"], require_signed=True)
    bob = make_agent("bob", Inbox, keyring=rings["bob"], require_signed=True)
    stop = threading.Event()
    sent = {"alice": 0, "bob": 0}

    def chatter(me: Agent, peer: str) -> None:
        while not stop.is_set():
            me.send(peer, {"n": sent[me.id]})
            sent[me.id] += 1
            stop.wait(0.002)

    threads = [threading.Thread(target=chatter, args=(alice, "bob"), daemon=True),
               threading.Thread(target=chatter, args=(bob, "alice"), daemon=True)]
    for thread in threads:
        thread.start()
    steps: List[Callable[[Keyring], None]] = [
        lambda k: k.add(new), lambda k: k.use("2026"), lambda k: k.retire("2025"),
    ]
    for step in steps:
        # One agent after the other, as a rolling deploy does.
        for name in ("alice", "bob"):
            step(rings[name])
            before = sent["alice"] + sent["bob"]
            wait_until(lambda: sent["alice"] + sent["bob"] > before + 20)
    stop.set()
    for thread in threads:
        thread.join(5)
    wait_until(lambda: len(bob.got) == sent["alice"] and len(alice.got) == sent["bob"])
    assert alice.stats.refused == 0 and bob.stats.refused == 0
    assert rings["bob"].key_ids == {"2026"}


# -- allow-lists ------------------------------------------------------------------


def test_only_accepted_senders_reach_the_handlers(make_agent: Callable[..., Any]) -> None:
    bob = make_agent("bob", Inbox, accept_from=["alice"], accept_capabilities=["billing"])
    alice = make_agent("alice")
    carol = make_agent("carol", capabilities=["billing"])
    mallory = make_agent("mallory", capabilities=["chat"])
    for sender in (alice, carol, mallory):
        sender.send("bob", {"from": sender.id})
    with pytest.raises(RequestError) as failed:
        mallory.request("bob", {}, timeout=5)
    assert failed.value.details == [{"reason": "not_allowed"}]
    wait_until(lambda: len(bob.got) == 2 and bob.stats.refused_not_allowed == 2)
    assert sorted(p["from"] for p in bob.payloads()) == ["alice", "carol"]
    # Replies are not concerned: bob may ask mallory.
    make_agent("dave", Inbox)
    assert bob.request("dave", {"token": 3}, timeout=5).payload == {"pong": 3}


# -- reliable delivery ------------------------------------------------------------


def test_a_reliable_agent_refuses_into_its_dead_letters_and_retries_are_no_replays(
    make_agent: Callable[..., Any], r: redis.Redis, key: SigningKey
) -> None:
    failures: List[int] = []

    class Flaky(Inbox):
        def on_message(self, message: AgentMessage) -> None:
            if message.payload.get("flaky") and len(failures) < 2:
                failures.append(1)
                raise RuntimeError("not yet")
            super().on_message(message)

    bob = make_agent("bob", Flaky, keyring=Keyring([key]), require_signed=True,
                     delivery="reliable", retry_delay=0.01)
    alice = make_agent("alice", keyring=Keyring([key]))
    alice.send("bob", {"flaky": True})
    wait_until(lambda: len(bob.got) == 1)
    assert bob.stats.retried == 2 and bob.stats.refused == 0
    # The same entry added again is a replay; an unsigned one is refused.
    stream = _wire.stream_key("bob")
    (entry_id, fields), = r.xrange(stream, count=1)
    r.xadd(stream, {_wire.ENVELOPE: fields[_wire.ENVELOPE]})
    r.xadd(stream, {_wire.ENVELOPE: framed("mallory", "bob", {})})
    wait_until(lambda: bob.stats.refused == 2)
    assert bob.stats.refused_replayed == 1 and bob.stats.refused_unsigned == 1
    letters = bob.dead_letters()
    assert sorted(letter.error.split(")")[0] for letter in letters) == [
        "refused (replayed", "refused (unsigned"
    ]
    assert len(bob.got) == 1


@pytest.mark.slow
def test_a_message_that_waited_in_a_stream_is_judged_by_when_it_entered(
    make_agent: Callable[..., Any], r: redis.Redis, key: SigningKey
) -> None:
    bob = make_agent("bob", Inbox, keyring=Keyring([key]), require_signed=True,
                     delivery="reliable", signature_window=1)
    bob.stop()
    alice = make_agent("alice", keyring=Keyring([key]))
    alice.send("bob", {"token": "waited"})
    sent_at = redis_now(r)
    # It waits longer than the window.
    wait_until(lambda: redis_now(r) > sent_at + 1.5, interval=0.1)
    bob.start()
    wait_until(lambda: bob.payloads() == [{"token": "waited"}])
    assert bob.stats.refused == 0


@pytest.mark.slow
def test_a_requeued_dead_letter_is_vouched_for_and_handled_long_after(
    make_agent: Callable[..., Any], r: redis.Redis
) -> None:
    """Past the window and with its nonce seen, a requeued message is handled all the same."""
    keys = {n: SigningKey(f"key-{n}", n * 16, senders=[n]) for n in ("alice", "bob")}
    failing = threading.Event()
    failing.set()

    class Fussy(Inbox):
        def on_message(self, message: AgentMessage) -> None:
            if failing.is_set():
                raise RuntimeError("not now")
            super().on_message(message)

    bob = make_agent("bob", Fussy, keyring=Keyring(keys.values(), sign_with="key-bob"),
                     require_signed=True, delivery="reliable", max_attempts=1,
                     signature_window=1)
    alice = make_agent("alice", keyring=Keyring(keys.values(), sign_with="key-alice"))
    alice.send("bob", {"token": "late"})
    wait_until(lambda: len(bob.dead_letters()) == 1)
    sent_at = redis_now(r)
    wait_until(lambda: redis_now(r) > sent_at + 1.5, interval=0.1)  # past the window
    failing.clear()
    assert bob.requeue_dead_letters() == 1
    wait_until(lambda: bob.payloads() == [{"token": "late"}])
    assert bob.stats.refused == 0
    # The requeued entry, vouch and all, added once more: a replay.
    stream = _wire.stream_key("bob")
    fields = [f for _, f in r.xrange(stream) if _wire.VOUCH in f][0]
    r.xadd(stream, fields)
    # A vouch by another agent's key is no vouch of bob's.
    forged = _signing.vouch(fields[_wire.ENVELOPE].encode(), "bob", keys["alice"], redis_now(r))
    r.xadd(stream, {_wire.ENVELOPE: fields[_wire.ENVELOPE], _wire.VOUCH: forged})
    wait_until(lambda: bob.stats.refused == 2)
    assert (bob.stats.refused_replayed, bob.stats.refused_bad_signature) == (1, 1)
    assert len(bob.got) == 1
