"""Concurrent send() calls coalesced into pipelines: order, errors to the right caller, no hang."""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import redis

from mas_sync import Agent, AgentMessage, MASConnectionError, RedisCommandError
from mas_sync._coalesce import Coalescer
from mas_sync.testing import RedisServer, wait_until

FAST: Dict[str, Any] = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)


# -- the coalescer alone -------------------------------------------------------------


class Interrupted(BaseException):
    """What a signal handler raises in the main thread, as KeyboardInterrupt would."""


class Pipelines:
    """A flush that records each pipeline, and can be held (blocked) on demand."""

    def __init__(
        self, fail: Callable[[int], Optional[BaseException]] = lambda n: None, io: float = 0.0
    ) -> None:
        self.batches: List[List[int]] = []
        self.fail = fail
        self.io = threading.Event()  # never set: waiting on it stands for a round trip
        self.round_trip = io
        self.hold = threading.Event()
        self.hold.set()
        self.holding = threading.Event()
        self.raise_next: List[BaseException] = []  # the next pipelines raise these

    def __call__(self, entries: Sequence[int]) -> List[Optional[BaseException]]:
        self.batches.append(list(entries))
        if not self.hold.is_set():
            self.holding.set()
            assert self.hold.wait(10)
        if self.raise_next:
            raise self.raise_next.pop(0)
        if self.round_trip:
            self.io.wait(self.round_trip)
        return [self.fail(n) for n in entries]


def interrupted(error: BaseException) -> BaseException:
    return MASConnectionError(f"interrupted by {type(error).__name__}")


def run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller hangs"


def held_first_pipeline() -> Tuple[Pipelines, "Coalescer[int]", threading.Thread]:
    """A coalescer whose first pipeline (entry 0) is out and held, and its leader's thread."""
    flush = Pipelines()
    coalescer: Coalescer[int] = Coalescer(flush, interrupted)
    flush.hold.clear()
    leader = threading.Thread(target=coalescer.submit, args=(lambda: 0,), daemon=True)
    leader.start()
    assert flush.holding.wait(10)
    return flush, coalescer, leader


def test_entries_go_out_in_the_order_they_were_made() -> None:
    flush = Pipelines()
    coalescer: Coalescer[int] = Coalescer(flush, interrupted)
    numbers = itertools.count()
    returned: Dict[int, List[int]] = {}

    def caller(k: int) -> None:
        returned[k] = [coalescer.submit(lambda: next(numbers)) for _ in range(300)]

    run_threads(8, caller)
    sent = [n for batch in flush.batches for n in batch]
    assert sent == list(range(8 * 300))
    for mine in returned.values():
        assert mine == sorted(mine)  # each caller's entries, in its order


def test_calls_made_while_a_pipeline_is_out_go_together_in_the_next() -> None:
    flush, coalescer, first = held_first_pipeline()
    others = [threading.Thread(target=coalescer.submit, args=(lambda k=k: k,), daemon=True)
              for k in range(1, 6)]
    for thread in others:
        thread.start()
    wait_until(lambda: len(coalescer._queue) == 5, timeout=10, message="five calls queued")
    flush.hold.set()
    for thread in [first, *others]:
        thread.join(10)
        assert not thread.is_alive()
    assert flush.batches[0] == [0]
    assert sorted(flush.batches[1]) == [1, 2, 3, 4, 5]
    assert len(flush.batches) == 2


def test_an_error_of_one_entry_reaches_its_caller_only() -> None:
    flush = Pipelines(fail=lambda n: ValueError(f"refused {n}") if n % 3 == 0 else None, io=0.0005)
    coalescer: Coalescer[int] = Coalescer(flush, interrupted)
    numbers = itertools.count()
    outcome: Dict[int, Any] = {}
    lock = threading.Lock()

    def caller(k: int) -> None:
        for _ in range(100):
            try:
                n = coalescer.submit(lambda: next(numbers))
            except ValueError as exc:
                with lock:
                    outcome[int(str(exc).split()[1])] = exc
            else:
                with lock:
                    outcome[n] = None

    run_threads(8, caller)
    assert len(outcome) == 800
    for n, error in outcome.items():
        assert (error is not None) == (n % 3 == 0), n
    assert max(len(batch) for batch in flush.batches) > 1  # they did share pipelines


def test_a_failed_pipeline_fails_every_call_in_it_and_the_next_ones_go_out() -> None:
    flush = Pipelines()
    coalescer: Coalescer[int] = Coalescer(flush, interrupted)
    flush.hold.clear()
    flush.raise_next.append(MASConnectionError("connection lost"))
    errors: Dict[int, BaseException] = {}

    def caller(k: int) -> None:
        try:
            coalescer.submit(lambda: k)
        except MASConnectionError as exc:
            errors[k] = exc

    first = threading.Thread(target=caller, args=(0,), daemon=True)
    first.start()
    assert flush.holding.wait(10)
    flush.holding.clear()
    flush.hold.set()
    first.join(10)
    # The failed pipeline held entry 0 only; now one with several fails.
    flush.hold.clear()
    flush.raise_next.append(MASConnectionError("connection lost again"))
    leader = threading.Thread(target=caller, args=(1,), daemon=True)
    leader.start()
    assert flush.holding.wait(10)
    others = [threading.Thread(target=caller, args=(k,), daemon=True) for k in (2, 3)]
    for thread in others:
        thread.start()
    wait_until(lambda: len(coalescer._queue) == 2, timeout=10, message="two calls queued")
    flush.raise_next.append(MASConnectionError("the second pipeline failed"))
    flush.hold.set()
    for thread in [leader, *others]:
        thread.join(10)
        assert not thread.is_alive()
    assert str(errors[0]) == "connection lost"
    assert str(errors[1]) == "connection lost again"
    assert str(errors[2]) == str(errors[3]) == "the second pipeline failed"
    assert errors[2] is not errors[3]  # each caller raises an exception of its own
    assert coalescer.submit(lambda: 4) == 4  # the lead was not lost


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_a_waiting_caller_that_is_interrupted_hangs_nobody() -> None:
    assert threading.current_thread() is threading.main_thread()
    flush, coalescer, leader = held_first_pipeline()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    main = threading.main_thread().ident
    assert main is not None
    killer = threading.Thread(
        target=lambda: (
            wait_until(lambda: len(coalescer._queue) == 1, timeout=10, message="main queued"),
            signal.pthread_kill(main, signal.SIGUSR1),
        ),
        daemon=True,
    )
    try:
        killer.start()
        with pytest.raises(Interrupted):
            coalescer.submit(lambda: 1)  # the main thread waits behind the held pipeline
    finally:
        signal.signal(signal.SIGUSR1, previous)
    # A caller queued behind the interrupted one still gets its turn.
    late = threading.Thread(target=coalescer.submit, args=(lambda: 2,), daemon=True)
    late.start()
    wait_until(lambda: len(coalescer._queue) == 2, timeout=10, message="late call queued")
    flush.hold.set()
    for thread in (leader, late, killer):
        thread.join(10)
        assert not thread.is_alive(), "a caller hangs"
    assert [n for batch in flush.batches for n in batch] == [0, 1, 2]  # entry 1 went out too


def test_a_leader_interrupted_as_it_settles_its_pipeline_hangs_nobody() -> None:
    """The leader's pipeline returned; it waits for the queue's lock (another
    caller is framing its message under it) and is interrupted there. It used
    to leave the lead taken and its pipeline's callers unsettled: they, and
    every later call, waited for ever."""
    assert threading.current_thread() is threading.main_thread()
    flush = Pipelines()
    coalescer: Coalescer[int] = Coalescer(flush, interrupted)
    flush.hold.clear()
    fired, in_make, made = threading.Event(), threading.Event(), threading.Event()
    results: Dict[int, Any] = {}

    def interrupt(signum: int, frame: Any) -> None:
        fired.set()
        raise Interrupted()

    def call(n: int, make: Callable[[], int]) -> None:
        try:
            results[n] = coalescer.submit(make)
        except BaseException as exc:  # noqa: B902 - recorded for the assertions
            results[n] = exc

    def slow_make() -> int:  # framing (signing) a message under the queue's lock
        in_make.set()
        assert made.wait(10)
        return 2

    main = threading.main_thread().ident
    assert main is not None
    waiting = threading.Thread(target=call, args=(1, lambda: 1), daemon=True)
    framing = threading.Thread(target=call, args=(2, slow_make), daemon=True)

    def choreography() -> None:
        assert flush.holding.wait(10)  # the main thread's pipeline is out
        waiting.start()
        wait_until(lambda: len(coalescer._queue) == 1, timeout=10, message="1 queued")
        framing.start()
        assert in_make.wait(10)
        flush.hold.set()  # the pipeline returns; the main thread waits for the lock
        wait_until(lambda: sys._current_frames()[main].f_code.co_name in ("_lead", "_settle"),
                   timeout=10, message="the leader waits to settle")
        signal.pthread_kill(main, signal.SIGUSR1)
        assert fired.wait(10)
        made.set()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    killer = threading.Thread(target=choreography, daemon=True)
    try:
        killer.start()
        with pytest.raises(Interrupted):
            coalescer.submit(lambda: 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    late = threading.Thread(target=call, args=(3, lambda: 3), daemon=True)
    late.start()
    for thread in (killer, waiting, framing, late):
        thread.join(10)
        assert not thread.is_alive(), "a caller hangs"
    assert results == {1: 1, 2: 2, 3: 3}
    assert sorted(n for batch in flush.batches for n in batch) == [0, 1, 2, 3]
    assert not coalescer._leading and not coalescer._queue


# -- through agents, on a real Redis --------------------------------------------------


def count_pipelines(agent: Agent) -> List[int]:
    """Record the number of calls in each pipeline the agent's outbox sends."""
    outbox = agent._mas_run.outbox
    sizes: List[int] = []
    flush = outbox._pipeline._flush

    def counted(entries: Sequence[Any]) -> Any:
        sizes.append(len(entries))
        return flush(entries)

    outbox._pipeline._flush = counted
    return sizes


def test_concurrent_sends_return_after_redis_took_them_in_each_senders_order(
    make_agent: Callable[..., Any], r: redis.Redis
) -> None:
    # A reliable target's stream shows what Redis accepted, and in which order.
    make_agent("rx", delivery="reliable").stop()
    sender = make_agent("tx")
    sizes = count_pipelines(sender)
    stream = "agent.stream:rx"
    late: List[str] = []
    sent: Dict[int, List[str]] = {}

    def caller(k: int) -> None:
        mine = sent[k] = []
        for i in range(25):
            message_id = sender.send("rx", {"k": k, "i": i})
            mine.append(message_id)
            recent = r.xrevrange(stream, count=400)
            if not any(message_id in fields["envelope"] for _, fields in recent):
                late.append(message_id)

    run_threads(8, caller)
    assert late == []  # every send() returned once its message was in the stream
    order: Dict[int, List[int]] = {}
    for _, fields in r.xrange(stream):
        payload = json.loads(fields["envelope"])["payload"]
        order.setdefault(payload["k"], []).append(payload["i"])
    assert order == {k: list(range(25)) for k in range(8)}
    assert sum(sizes) == 200
    assert len(sizes) < 200  # some calls shared a pipeline


@pytest.mark.slow
def test_a_refused_channel_fails_only_the_calls_sent_there() -> None:
    with RedisServer() as server:
        admin = redis.Redis(port=server.port)
        # All commands and keys, but only some channels: agent.forbidden is refused.
        admin.execute_command(
            "ACL", "SETUSER", "tx", "on", "nopass", "+@all", "~*", "resetchannels",
            "&agent.tx", "&mas:wake:{agent.tx}:*", "&mas.system", "&agent.ok",
        )
        admin.close()
        url = f"redis://tx@127.0.0.1:{server.port}/0"
        got: List[Any] = []

        class Ok(Agent):
            def on_message(self, message: AgentMessage) -> None:
                got.append((message.payload["k"], message.payload["i"]))

        with Ok("ok", redis_url=server.url, **FAST), Agent("tx", redis_url=url, **FAST) as sender:
            sizes = count_pipelines(sender)
            refused: List[Any] = []
            lock = threading.Lock()

            def caller(k: int) -> None:
                for i in range(50):
                    target = "forbidden" if i % 2 else "ok"
                    try:
                        sender.send(target, {"k": k, "i": i})
                    except RedisCommandError as exc:
                        assert "agent.forbidden" in str(exc) or "channel" in str(exc).lower()
                        with lock:
                            refused.append((k, i))

            run_threads(8, caller)
            assert sorted(refused) == [(k, i) for k in range(8) for i in range(1, 50, 2)]
            wait_until(lambda: len(got) >= 200, timeout=10, message="the allowed messages")
            assert sorted(got) == [(k, i) for k in range(8) for i in range(0, 50, 2)]
            assert len(sizes) < 400


@pytest.mark.slow
def test_senders_do_not_hang_when_redis_goes_away() -> None:
    with RedisServer() as server:
        sender = Agent("tx", redis_url=server.url, retry_timeout=0.5, **FAST)
        sender.start()
        errors: List[BaseException] = []
        started = threading.Event()

        def caller(k: int) -> None:
            try:
                while True:
                    sender.send("rx", {"k": k})
                    started.set()
            except MASConnectionError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(8)]
        for thread in threads:
            thread.start()
        assert started.wait(10)
        server.kill()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive(), "a sender hangs"
        assert len(errors) == 8
        sender.stop(timeout=2)



def test_the_first_sends_after_redis_closed_the_connection_go_through(redis_url: str) -> None:
    # As when Redis closes idle clients (its ``timeout`` setting): the sending
    # connection is dead while the subscription lives on. It is made anew
    # before use, as the pool does for the connections it hands out.
    admin = redis.Redis.from_url(redis_url)
    listener = admin.pubsub()
    listener.subscribe("agent.rx")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    with Agent("tx", redis_url=redis_url, **FAST) as sender:
        sender.send("rx", {"n": 0})
        sender.send_many([("rx", {"n": 1}), ("rx", {"n": 2})])
        for client in admin.client_list(_type="normal"):
            if client["name"].startswith("mas-agent:tx"):
                admin.client_kill_filter(_id=client["id"])
        sender.send("rx", {"n": 3})
        sender.send_many([("rx", {"n": 4}), ("rx", {"n": 5})])
    got = []
    while len(got) < 6:
        message = listener.get_message(timeout=5)
        assert message is not None, f"only {got} arrived"
        got.append(json.loads(message["data"])["payload"]["n"])
    assert got == [0, 1, 2, 3, 4, 5]
    listener.close()
    admin.close()


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    from redis.connection import Connection

    from mas_sync._redis.held import _pack

    commands = [("PUBLISH", "agent.rx", '{"text": "h\u00e9llo \u2603"}'),
                ("XADD", "agent.stream:x", "NOMKSTREAM", "*", "envelope", b"\x00\xff\r\n")]
    assert _pack(commands) == b"".join(Connection().pack_commands(commands))
