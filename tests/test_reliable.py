"""Reliable delivery: a stream inbox read through a consumer group, at least once."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List

import pytest
import redis

from mas_sync import Agent, AgentMessage, RequestError
from mas_sync._wire import frame_message
from mas_sync.testing import wait_until

RELIABLE: Dict[str, Any] = dict(delivery="reliable", retry_delay=0.01)


class Recorder(Agent):
    """Keeps every message it handles, with the attempt it came at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: List[AgentMessage] = []
        self.lock = threading.Lock()

    def on_message(self, message: AgentMessage) -> Any:
        with self.lock:
            self.seen.append(message)
        if message.expects_reply:
            return {"echo": message.payload}
        return None

    def payloads(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [m.payload for m in self.seen]


class Flaky(Recorder):
    """Raises until the attempt named by ``payload["ok_at"]`` (never without it)."""

    def on_message(self, message: AgentMessage) -> Any:
        super().on_message(message)
        if message.attempt < message.payload.get("ok_at", 10**9):
            raise RuntimeError(f"attempt {message.attempt} fails")
        return {"done_at": message.attempt} if message.expects_reply else None


def group_pending(r: redis.Redis, agent_id: str) -> int:
    return int(r.xpending(f"agent.stream:{agent_id}", "agents")["pending"])


def test_a_reliable_agent_reads_its_stream_and_acknowledges(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, **RELIABLE)
    sender = make_agent("sender")
    assert r.hget("agent:worker", "delivery") == "reliable" or r.exists("agent.stream:worker")
    for i in range(20):
        sender.send("worker", {"i": i})
    wait_until(lambda: len(worker.payloads()) == 20, message="not all handled")
    assert worker.payloads() == [{"i": i} for i in range(20)]
    assert r.xlen("agent.stream:worker") == 20  # the messages went by the stream
    wait_until(lambda: group_pending(r, "worker") == 0, message="not acknowledged")
    entry = r.xrange("agent.stream:worker", count=1)[0][1]
    assert json.loads(entry["envelope"])["payload"] == {"i": 0}


def test_messages_wait_in_the_stream_while_the_agent_is_stopped(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, **RELIABLE)
    worker.stop()
    sender = make_agent("sender")
    # No registration any more: the stream (and its group) says where to write.
    assert not r.exists("agent:worker")
    for i in range(5):
        sender.send("worker", {"i": i})
    sender.send_many([("worker", {"i": 5}), ("worker", {"i": 6})])
    again = make_agent("worker", Recorder, **RELIABLE)
    wait_until(lambda: len(again.payloads()) == 7, message="waiting messages not delivered")
    assert again.payloads() == [{"i": i} for i in range(7)]


def test_a_request_is_answered_through_the_stream(make_agent: Any) -> None:
    make_agent("worker", Recorder, **RELIABLE)
    asker = make_agent("asker")
    reply = asker.request("worker", {"q": 1}, timeout=5)
    assert reply.payload == {"echo": {"q": 1}}


def test_a_reliable_agent_asks_and_gets_its_reply(make_agent: Any) -> None:
    make_agent("worker", Recorder, **RELIABLE)
    asker = make_agent("asker", **RELIABLE)
    reply = asker.request("worker", {"q": 2}, timeout=5)
    assert reply.payload == {"echo": {"q": 2}}
    assert reply.target_instance == asker._mas_options.instance


def test_a_reliable_agent_still_hears_its_channel(make_agent: Any, r: redis.Redis) -> None:
    worker = make_agent("worker", Recorder, **RELIABLE)
    r.publish("agent.worker", frame_message("async-peer", "worker", '{"hi":1}'))
    wait_until(lambda: worker.payloads() == [{"hi": 1}], message="channel message not handled")


def test_a_failing_handler_is_tried_again_until_it_succeeds(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Flaky, **RELIABLE)
    asker = make_agent("asker")
    reply = asker.request("worker", {"ok_at": 3}, timeout=5)
    assert reply.payload == {"done_at": 3}
    assert [m.attempt for m in worker.seen] == [1, 2, 3]
    # (The reply goes out before the handled message is counted.)
    wait_until(lambda: worker.stats.handled == 1, message="counted as handled")
    stats = worker.stats
    assert stats.retried == 2 and stats.handler_errors == 2
    wait_until(lambda: group_pending(r, "worker") == 0, message="not acknowledged")
    assert r.xlen("agent.dlq:worker") == 0


def test_a_poison_message_goes_to_the_dead_letters_after_max_attempts(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Flaky, max_attempts=4, **RELIABLE)
    asker = make_agent("asker")
    with pytest.raises(RequestError) as caught:
        asker.request("worker", {"poison": True}, timeout=5)
    assert caught.value.kind == "handler_error"
    assert [m.attempt for m in worker.seen] == [1, 2, 3, 4]
    wait_until(lambda: r.xlen("agent.dlq:worker") == 1, message="no dead letter")
    _, letter = r.xrange("agent.dlq:worker")[0]
    assert letter["attempts"] == "4"
    assert letter["error"] == "RuntimeError: attempt 4 fails"
    assert letter["consumer"] == f"worker-{worker._mas_options.instance}"
    sent = json.loads(letter["envelope"])
    assert sent["sender_id"] == "asker" and sent["payload"]["poison"] is True
    assert letter["entry_id"] == r.xrange("agent.stream:worker")[0][0]
    wait_until(lambda: group_pending(r, "worker") == 0, message="dead letter left pending")
    assert worker.stats.dead_lettered == 1


def test_messages_that_cannot_be_read_go_to_the_dead_letters(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, **RELIABLE)
    raw = redis.Redis.from_url(_url(r))
    raw.xadd("agent.stream:worker", {"other": "field"})
    raw.xadd("agent.stream:worker", {"envelope": b"\xff\xfe not utf-8"})
    raw.xadd("agent.stream:worker", {"envelope": "{not json"})
    raw.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"ok":1}')})
    wait_until(lambda: worker.payloads() == [{"ok": 1}], message="good message not handled")
    wait_until(lambda: raw.xlen("agent.dlq:worker") == 3, message="bad entries not dead-lettered")
    wait_until(lambda: group_pending(r, "worker") == 0, message="bad entries left pending")
    assert worker.stats.invalid == 3 and worker.stats.dead_lettered == 3
    raw.close()


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def test_entries_of_a_crashed_consumer_are_taken_after_the_visibility_timeout(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, visibility_timeout=0.5, **RELIABLE)
    worker.stop()
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"n":1}')})
    # Another instance read it, then died without acknowledging it.
    r.xreadgroup("agents", "worker-dead", {"agent.stream:worker": ">"})
    again = make_agent("worker", Recorder, visibility_timeout=0.5, **RELIABLE)
    wait_until(lambda: again.payloads() == [{"n": 1}], message="idle entry not taken")
    assert again.seen[0].attempt == 2
    assert again.stats.reclaimed == 1
    wait_until(lambda: group_pending(r, "worker") == 0, message="not acknowledged")


def test_a_restarted_instance_takes_back_its_own_entries_at_once(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, instance="web-1", visibility_timeout=3600, **RELIABLE)
    worker.stop()
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"n":2}')})
    r.xreadgroup("agents", "worker-web-1", {"agent.stream:worker": ">"})  # then it crashed
    again = make_agent("worker", Recorder, instance="web-1", visibility_timeout=3600, **RELIABLE)
    wait_until(lambda: again.payloads() == [{"n": 2}], message="own entry not taken back")
    assert again.seen[0].attempt == 2


def test_a_message_delivered_too_often_is_dead_lettered_unhandled(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", Recorder, instance="web-1", max_attempts=2, **RELIABLE)
    worker.stop()
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"n":3}')})
    # Two deliveries that crashed the instance before it could settle them.
    r.xreadgroup("agents", "worker-web-1", {"agent.stream:worker": ">"})
    r.xreadgroup("agents", "worker-web-1", {"agent.stream:worker": "0"})
    again = make_agent("worker", Recorder, instance="web-1", max_attempts=2, **RELIABLE)
    wait_until(lambda: r.xlen("agent.dlq:worker") == 1, message="not dead-lettered")
    assert again.payloads() == []
    assert r.xrange("agent.dlq:worker")[0][1]["attempts"] == "3"


def test_a_full_queue_leaves_entries_in_the_stream(make_agent: Any, r: redis.Redis) -> None:
    gate = threading.Event()

    class Slow(Recorder):
        def on_message(self, message: AgentMessage) -> Any:
            gate.wait(10)
            return super().on_message(message)

    worker = make_agent("worker", Slow, max_workers=1, max_pending=2, **RELIABLE)
    sender = make_agent("sender")
    sender.send_many([("worker", {"i": i}) for i in range(10)])
    wait_until(lambda: r.xinfo_groups("agent.stream:worker")[0]["pending"] >= 2)
    assert r.xinfo_groups("agent.stream:worker")[0]["pending"] <= 3  # read no faster than handled
    gate.set()
    wait_until(lambda: len(worker.payloads()) == 10, message="not all handled")
    assert worker.payloads() == [{"i": i} for i in range(10)]
    assert worker.stats.dropped_overflow == 0


def test_dead_letters_are_listed_requeued_and_purged(make_agent: Any, r: redis.Redis) -> None:
    worker = make_agent("worker", Flaky, max_attempts=1, **RELIABLE)
    sender = make_agent("sender")
    for i in range(3):
        sender.send("worker", {"i": i, "ok_at": 2})
    wait_until(lambda: r.xlen("agent.dlq:worker") == 3, message="no dead letters")
    letters = worker.dead_letters()
    assert [d.message.payload["i"] for d in letters if d.message] == [0, 1, 2]
    assert all(d.attempts == 1 and d.error.startswith("RuntimeError") for d in letters)
    assert worker.dead_letters(count=1)[0].id == letters[0].id
    # Requeued, a message counts its attempts from 1 again: with max_attempts=1
    # and ok_at=2 it fails again, so raise the bar on the copy that is handled.
    assert worker.requeue_dead_letters([letters[0].id]) == 1
    wait_until(lambda: len(worker.seen) == 4, message="requeued message not handled")
    wait_until(lambda: r.xlen("agent.dlq:worker") == 3, message="requeued one not back")
    assert worker.purge_dead_letters([letters[1].id]) == 1
    assert [d.id for d in worker.dead_letters()][0] == letters[2].id
    assert worker.purge_dead_letters() == 2
    assert worker.dead_letters() == []
    with pytest.raises(ValueError):
        worker.purge_dead_letters(["not-an-id"])
    with pytest.raises(TypeError):
        worker.requeue_dead_letters("1-0")


def test_requeueing_every_dead_letter_ends_while_they_fail_again(
    make_agent: Any, r: redis.Redis
) -> None:
    """Requeued messages that fail again are dead letters after the ones being
    read; the requeue of "all" used to page on through them for ever."""
    from mas_sync._dead_letters import PAGE

    worker = make_agent("worker", Flaky, max_attempts=1, **RELIABLE)
    sender = make_agent("sender")
    total = PAGE + 100
    sender.send_many([("worker", {"i": i}) for i in range(total)])
    wait_until(lambda: r.xlen("agent.dlq:worker") == total, 30, message="no dead letters")
    moved: List[int] = []
    requeue = threading.Thread(target=lambda: moved.append(worker.requeue_dead_letters()),
                               daemon=True)
    requeue.start()
    requeue.join(30)
    assert not requeue.is_alive(), "the requeue goes on"
    assert moved == [total]
    wait_until(lambda: r.xlen("agent.dlq:worker") == total, 30, message="failed again")


def test_a_handler_that_raises_system_exit_has_its_message_tried_again(
    make_agent: Any, r: redis.Redis
) -> None:
    """A BaseException out of a handler used to leave its entry held by the
    running instance for good: neither acknowledged, retried, nor reclaimed."""

    class Exiting(Recorder):
        def on_message(self, message: AgentMessage) -> Any:
            super().on_message(message)
            if message.attempt == 1:
                raise SystemExit(3)
            return None

    worker = make_agent("worker", Exiting, **RELIABLE)
    sender = make_agent("sender")
    sender.send("worker", {"i": 1})
    wait_until(lambda: [m.attempt for m in worker.seen] == [1, 2], 5, message="not tried again")
    wait_until(lambda: group_pending(r, "worker") == 0, 5, message="not acknowledged")
    assert worker.stats.handler_errors == 1 and worker.stats.handled == 1


@pytest.mark.slow
def test_entries_the_queue_refuses_are_not_counted_as_deliveries(
    make_agent: Any, r: redis.Redis, redis_url: str
) -> None:
    """Messages on the agent's channel fill its one-place queue as the reader
    hands it an entry: the entry is refused and taken back later. Each take-back
    used to count as a delivery, and entries no handler had seen were
    dead-lettered as "delivered N times without being handled"."""
    attempts: List[int] = []
    lock = threading.Lock()

    class Busy(Agent):
        def on_message(self, message: AgentMessage) -> None:
            if message.payload.get("kind") == "stream":
                with lock:
                    attempts.append(message.attempt)
            threading.Event().wait(0.002)

    make_agent("w", Busy, max_workers=1, max_pending=1, max_attempts=3, **RELIABLE)
    sender = make_agent("s")
    stop = threading.Event()

    def flood() -> None:  # a peer that publishes on the agent's channel (as async agents do)
        client = redis.Redis.from_url(redis_url)
        message = json.dumps({"sender_id": "p", "target_id": "w", "payload": {"kind": "pub"}})
        while not stop.is_set():
            client.publish("agent.w", message)
        client.close()

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    try:
        for thread in flooders:
            thread.start()
        for i in range(20):
            sender.send("w", {"kind": "stream", "i": i})
        wait_until(lambda: len(attempts) + r.xlen("agent.dlq:w") >= 20, 30,
                   message="stream messages neither handled nor dead-lettered")
    finally:
        stop.set()
        for thread in flooders:
            thread.join(5)
    assert r.xlen("agent.dlq:w") == 0
    assert attempts == [1] * 20


def test_history_and_replay_hand_stored_messages_again(make_agent: Any, r: redis.Redis) -> None:
    import time

    worker = make_agent("worker", Recorder, **RELIABLE)
    sender = make_agent("sender")
    sender.send("worker", {"i": 0})
    wait_until(lambda: len(worker.seen) == 1)
    # A moment with whole milliseconds on each side (stream ids count milliseconds).
    first = time.time()
    wait_until(lambda: time.time() > first + 0.002)
    middle = time.time()
    wait_until(lambda: time.time() > middle + 0.002)
    sender.send("worker", {"i": 1})
    sender.request("worker", {"i": 2}, timeout=5)
    wait_until(lambda: len(worker.seen) == 3)
    assert [m.payload for m in worker.history()] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [m.payload for m in worker.history(since=middle)] == [{"i": 1}, {"i": 2}]
    assert [m.payload for m in worker.history(until=middle)] == [{"i": 0}]
    assert worker.replay(since=middle) == 2
    assert worker.payloads()[3:] == [{"i": 1}, {"i": 2}]
    replies = r.pubsub()
    replies.subscribe("agent.sender")
    assert worker.replay() == 3  # the request among them is not answered again
    assert replies.get_message(timeout=0.2)["type"] == "subscribe"
    assert replies.get_message(timeout=0.3) is None
    replies.close()
    with pytest.raises(ValueError):
        worker.history(since="yesterday")  # type: ignore[arg-type]
    for never in (float("inf"), float("nan")):  # inf used to be an OverflowError
        with pytest.raises(ValueError, match="seconds since the epoch"):
            list(worker.history(until=never))


@pytest.mark.slow
def test_the_stream_is_trimmed_but_never_below_what_is_not_acknowledged(
    make_agent: Any, r: redis.Redis
) -> None:
    gate = threading.Event()

    class Gated(Recorder):
        def on_message(self, message: AgentMessage) -> Any:
            if message.payload.get("hold"):
                gate.wait(10)
            return super().on_message(message)

    worker = make_agent("worker", Gated, stream_maxlen=5, max_workers=2, **RELIABLE)
    make_agent("holder").send("worker", {"hold": True})  # pending until the gate opens
    wait_until(lambda: group_pending(r, "worker") == 1)
    make_agent("sender").send_many([("worker", {"i": i}) for i in range(20)])
    wait_until(lambda: len(worker.seen) == 20, message="not handled")
    # Everything after the held entry was acknowledged, but it is older: kept.
    wait_until(lambda: r.xinfo_groups("agent.stream:worker")[0]["pending"] == 1)
    assert r.xlen("agent.stream:worker") == 21
    gate.set()
    wait_until(lambda: r.xlen("agent.stream:worker") == 5, timeout=5, message="not trimmed")
    assert [json.loads(e["envelope"])["payload"]["i"] for _, e in r.xrange("agent.stream:worker")] \
        == list(range(15, 20))


def test_dedupe_window_skips_a_message_id_seen_within_it(make_agent: Any, r: redis.Redis) -> None:
    worker = make_agent("worker", Recorder, dedupe_window=60, **RELIABLE)
    data = frame_message("a", "worker", '{"n":1}', message_id="same-id")
    r.xadd("agent.stream:worker", {"envelope": data})
    r.xadd("agent.stream:worker", {"envelope": data})
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"n":2}')})
    wait_until(lambda: worker.stats.duplicates == 1 and len(worker.seen) == 2)
    assert worker.payloads() == [{"n": 1}, {"n": 2}]
    wait_until(lambda: group_pending(r, "worker") == 0, message="duplicate not acknowledged")


def test_instances_of_one_agent_share_its_messages(make_agent: Any, r: redis.Redis) -> None:
    import time

    class Slow(Recorder):
        def on_message(self, message: AgentMessage) -> Any:
            time.sleep(0.002)
            return super().on_message(message)

    one = make_agent("worker", Slow, instance="one", max_pending=4, **RELIABLE)
    two = make_agent("worker", Slow, instance="two", max_pending=4, **RELIABLE)
    sender = make_agent("sender")
    sender.send_many([("worker", {"i": i}) for i in range(100)])
    wait_until(lambda: len(one.seen) + len(two.seen) == 100, message="not all handled")
    got = sorted(p["i"] for p in one.payloads() + two.payloads())
    assert got == list(range(100))  # each message once, by one instance
    assert one.seen and two.seen
    wait_until(lambda: group_pending(r, "worker") == 0)
    assert sender.discover()[-1]["instances"] == 2


def test_a_reply_reaches_the_instance_that_asked(make_agent: Any) -> None:
    make_agent("worker", Recorder, **RELIABLE)
    askers = [make_agent("asker", instance=f"i{n}", **RELIABLE) for n in range(2)]
    replies: Dict[int, Any] = {}

    def ask(n: int) -> None:
        replies[n] = askers[n].request("worker", {"from": n}, timeout=5).payload

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert replies == {0: {"echo": {"from": 0}}, 1: {"echo": {"from": 1}}}
    # Each instance heard both replies on agent.asker, and took only its own.
    assert [a.stats.replies_dropped for a in askers] == [0, 0]


def test_a_published_message_is_handled_by_one_instance(make_agent: Any, r: redis.Redis) -> None:
    one = make_agent("worker", Recorder, instance="one", **RELIABLE)
    two = make_agent("worker", Recorder, instance="two", **RELIABLE)
    r.publish("agent.worker", frame_message("async-peer", "worker", '{"hi":1}'))
    wait_until(lambda: one.stats.duplicates + two.stats.duplicates == 1)
    assert one.payloads() + two.payloads() == [{"hi": 1}]


def test_a_stopping_instance_hands_over_what_it_did_not_handle(
    make_agent: Any, r: redis.Redis
) -> None:
    gate = threading.Event()

    class Stuck(Recorder):
        def on_message(self, message: AgentMessage) -> Any:
            if message.payload["i"] == 0:
                gate.wait(10)
            return super().on_message(message)

    first = make_agent("worker", Stuck, instance="a", max_workers=1, visibility_timeout=3600,
                       **RELIABLE)
    make_agent("sender").send_many([("worker", {"i": i}) for i in range(5)])
    wait_until(lambda: group_pending(r, "worker") == 5)
    first.stop(timeout=0.3)  # gives up on the stuck handler; four wait in its queue
    gate.set()
    assert first.stats.dropped_on_stop == 4
    # A new instance takes them at once, not after the visibility timeout.
    second = make_agent("worker", Recorder, instance="b", visibility_timeout=3600, **RELIABLE)
    wait_until(lambda: {1, 2, 3, 4} <= {p["i"] for p in second.payloads()}, timeout=5,
               message="handed-over entries not taken")
    assert second.stats.reclaimed >= 4


def test_consumers_of_instances_long_gone_are_deleted(
    make_agent: Any, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mas_sync import _streams

    worker = make_agent("worker", Recorder, instance="old", **RELIABLE)
    make_agent("sender").send("worker", {"i": 0})
    wait_until(lambda: worker.seen)
    worker.stop()
    r.xadd("agent.stream:worker", {"envelope": frame_message("a", "worker", '{"i":1}')})
    [(_, [(entry_id, _)])] = r.xreadgroup("agents", "worker-held", {"agent.stream:worker": ">"})
    r.xack("agent.stream:worker", "agents", entry_id)  # a consumer that holds nothing now
    names = {c["name"] for c in r.xinfo_consumers("agent.stream:worker", "agents")}
    assert names == {"worker-old", "worker-held"}
    monkeypatch.setattr(_streams, "CONSUMER_GONE_AFTER", 0.0)
    monkeypatch.setattr(_streams, "CONSUMER_CLEANUP_INTERVAL", 0.0)
    make_agent("worker", Recorder, instance="new", visibility_timeout=0.05, **RELIABLE)
    # (Redis 7.2 and later list the new consumer as soon as it reads.)
    wait_until(lambda: {c["name"] for c in r.xinfo_consumers("agent.stream:worker", "agents")}
               <= {"worker-new"}, message="gone consumers kept")


def test_a_stream_key_of_another_type_fails_the_start_clearly(
    make_agent: Any, r: redis.Redis
) -> None:
    from mas_sync import RedisCommandError

    r.set("agent.stream:worker", "not a stream")
    with pytest.raises(RedisCommandError, match="agent.stream:worker.*WRONGTYPE"):
        make_agent("worker", Recorder, **RELIABLE)
    assert not r.exists("agent:worker")
    assert r.get("agent.stream:worker") == "not a stream"
    # Senders do not take the key for a stream either: they publish.
    sender = make_agent("sender")
    sender.send("worker", {"i": 1})
    assert r.get("agent.stream:worker") == "not a stream"


def test_an_entry_whose_ack_is_not_out_yet_is_not_taken_back(
    make_agent: Any, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mas_sync import _streams

    # Acknowledgements held back (as while a batch gathers) for the whole test.
    monkeypatch.setattr(_streams, "ACK_DELAY_MS", 3_600_000)
    monkeypatch.setattr(_streams.StreamTransport, "_waiting", lambda self: 1)
    worker = make_agent("worker", Recorder, **RELIABLE)
    make_agent("sender").send("worker", {"n": 1})
    wait_until(lambda: worker.payloads() == [{"n": 1}])
    assert group_pending(r, "worker") == 1  # handled, its XACK not sent yet
    transport = worker._mas_run.transport
    transport._own_left = True  # what a refused entry, or a reconnection, does
    wait_until(lambda: not transport._own_left, message="no pass over its own entries")
    assert worker.payloads() == [{"n": 1}]  # not handled a second time
    worker.stop()
    assert group_pending(r, "worker") == 0  # sent at the stop
