"""State: untyped and typed, concurrent updates, restarts and bad input."""

from __future__ import annotations

import datetime
import enum
import json
import sys
import threading
from typing import Dict, List, Optional, Tuple

import pytest
from pydantic import BaseModel, Field

from mas_sync import StateError


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Inner(BaseModel):
    name: str = ""
    tags: List[str] = Field(default_factory=list)
    when: Optional[datetime.datetime] = None


class Rich(BaseModel):
    counter: int = 0
    ratio: float = 0.0
    flag: bool = False
    name: str = ""
    items: List[int] = Field(default_factory=list)
    mapping: Dict[str, float] = Field(default_factory=dict)
    inner: Inner = Field(default_factory=Inner)
    color: Color = Color.RED
    level: Level = Level.LOW
    stamp: datetime.datetime = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    day: datetime.date = datetime.date(2020, 1, 1)
    maybe: Optional[int] = None
    maybe_text: Optional[str] = "set"
    pair: Tuple[int, str] = (0, "")
    huge: float = 0.0
    text_like_json: str = ""


def test_untyped_state_reads_back_what_redis_holds_before_and_after_restart(make_agent, r) -> None:
    agent = make_agent("st")
    agent.update_state({"counter": 42, "status": "active", "items": [1, 2], "cfg": {"a": 1}, "none": None})
    expected = {
        "counter": "42",
        "status": "active",
        "items": "[1, 2]",
        "cfg": '{"a": 1}',
        "none": "None",
    }
    assert dict(agent.state) == expected
    assert agent.state["counter"] == "42"
    assert r.hgetall("agent.state:st") == expected
    agent.stop()
    again = make_agent("st")
    assert dict(again.state) == expected


def test_typed_state_round_trips_every_field_type_across_a_restart(make_agent, r) -> None:
    agent = make_agent("typed", state_model=Rich)
    assert agent.state.counter == 0
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    updates = dict(
        counter=42,
        ratio=0.1,
        flag=True,
        name="None of these",
        items=[3, 1, 2],
        mapping={"a": 1.5},
        inner=Inner(name="n", tags=["x", "y"], when=when),
        color=Color.BLUE,
        level=Level.HIGH,
        stamp=when,
        day=datetime.date(2024, 2, 29),
        maybe=None,
        maybe_text=None,
        pair=(7, "seven"),
        huge=float("inf"),
        text_like_json='["not", "a", "list"]',
    )
    agent.update_state(updates)
    before = agent.state.model_dump()
    agent.stop()
    again = make_agent("typed", state_model=Rich)
    after = again.state.model_dump()
    assert after == before
    assert again.state.items == [3, 1, 2]
    assert again.state.inner.when == when
    assert again.state.color is Color.BLUE
    assert again.state.level is Level.HIGH
    assert again.state.maybe is None and again.state.maybe_text is None
    assert again.state.text_like_json == '["not", "a", "list"]'
    assert json.loads(r.hget("agent.state:typed", "items")) == [3, 1, 2]
    assert r.hget("agent.state:typed", "counter") == "42"


def test_typed_state_with_a_list_field_is_not_reset_on_restart(make_agent) -> None:
    class WithList(BaseModel):
        items: List[str] = Field(default_factory=list)
        count: int = 0

    agent = make_agent("lst", state_model=WithList)
    agent.update_state({"items": ["a", "b"], "count": 2})
    agent.stop()
    again = make_agent("lst", state_model=WithList)
    assert again.state.items == ["a", "b"]
    assert again.state.count == 2


def test_concurrent_updates_from_many_threads_all_land(make_agent, r) -> None:
    agent = make_agent("busy")
    threads_n, per_thread = 16, 40
    barrier = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        barrier.wait(5)
        for i in range(per_thread):
            agent.update_state({f"t{t}-{i}": i, f"last-{t}": i})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    expected = {}
    for t in range(threads_n):
        for i in range(per_thread):
            expected[f"t{t}-{i}"] = str(i)
        expected[f"last-{t}"] = str(per_thread - 1)
    assert dict(agent.state) == expected
    assert r.hgetall("agent.state:busy") == expected


def test_concurrent_typed_updates_keep_memory_and_redis_equal(make_agent, r) -> None:
    class Many(BaseModel):
        a: int = 0
        b: int = 0
        c: List[int] = Field(default_factory=list)

    agent = make_agent("many", state_model=Many)

    def worker(field: str) -> None:
        for i in range(100):
            agent.update_state({field: i} if field != "c" else {"c": [i]})

    threads = [threading.Thread(target=worker, args=(f,)) for f in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert (agent.state.a, agent.state.b, agent.state.c) == (99, 99, [99])
    assert r.hgetall("agent.state:many") == {"a": "99", "b": "99", "c": "[99]"}


def test_invalid_typed_update_raises_and_writes_nothing(make_agent, r) -> None:
    agent = make_agent("strict", state_model=Rich)
    agent.update_state({"counter": 1})
    snapshot = r.hgetall("agent.state:strict")
    with pytest.raises(StateError) as info:
        agent.update_state({"counter": 2, "items": "not a list"})
    assert isinstance(info.value, ValueError)
    with pytest.raises(StateError, match="'nope'"):
        agent.update_state({"counter": 3, "nope": 1})
    assert agent.state.counter == 1
    assert r.hgetall("agent.state:strict") == snapshot


def test_untyped_state_refuses_values_it_cannot_store(make_agent, r) -> None:
    agent = make_agent("plain")
    with pytest.raises(TypeError, match="'when'"):
        agent.update_state({"ok": 1, "when": datetime.datetime.now()})
    with pytest.raises(TypeError):
        agent.update_state({"ok": 1, "bad": [object()]})
    with pytest.raises(TypeError):
        agent.update_state({1: "int key"})
    with pytest.raises(TypeError):
        agent.update_state(["not", "a", "dict"])
    assert dict(agent.state) == {}
    assert not r.exists("agent.state:plain")


def test_stored_state_that_does_not_fit_the_model_fails_start_and_is_kept(make_agent, r) -> None:
    r.hset("agent.state:old", mapping={"counter": "not a number", "extra": "x"})
    agent = make_agent("old", state_model=Rich, start=False)
    with pytest.raises(StateError, match="counter"):
        agent.start()
    assert not agent.is_running
    assert r.hgetall("agent.state:old") == {"counter": "not a number", "extra": "x"}


def test_fields_in_redis_unknown_to_the_model_are_left_alone(make_agent, r) -> None:
    r.hset("agent.state:mixed", mapping={"counter": "5", "foreign": "kept"})
    agent = make_agent("mixed", state_model=Rich)
    assert agent.state.counter == 5
    agent.update_state({"counter": 6})
    assert r.hget("agent.state:mixed", "foreign") == "kept"


def test_state_written_by_the_async_framework_loads_typed(make_agent, r) -> None:
    # What mas-framework 0.2.0 writes: str() for scalars, json.dumps for lists and dicts.
    r.hset(
        "agent.state:legacy",
        mapping={"counter": "7", "flag": "True", "ratio": "0.5", "items": "[1, 2]", "maybe": "None"},
    )
    agent = make_agent("legacy", state_model=Rich)
    assert (agent.state.counter, agent.state.flag, agent.state.ratio) == (7, True, 0.5)
    assert agent.state.items == [1, 2]
    assert agent.state.maybe is None


def test_reset_state_deletes_untyped_state_and_writes_typed_defaults(make_agent, r) -> None:
    plain = make_agent("rs")
    plain.update_state({"counter": 9})
    plain.reset_state()
    assert dict(plain.state) == {}
    assert not r.exists("agent.state:rs")
    typed = make_agent("rs2", state_model=Rich)
    typed.update_state({"counter": 9})
    typed.reset_state()
    assert typed.state.counter == 0
    assert r.hget("agent.state:rs2", "counter") == "0"


def test_state_view_is_read_only_and_hands_out_copies(make_agent) -> None:
    plain = make_agent("ro")
    plain.update_state({"a": 1})
    with pytest.raises(TypeError, match="update_state"):
        plain.state["a"] = "2"
    typed = make_agent("ro2", state_model=Rich)
    typed.update_state({"items": [1]})
    with pytest.raises(TypeError, match="update_state"):
        typed.state.counter = 5
    typed.state.items.append(2)  # changes a copy only
    assert typed.state.items == [1]
    assert typed.state == Rich(items=[1])


def test_state_is_none_before_start_and_kept_after_stop(make_agent) -> None:
    agent = make_agent("life", start=False)
    assert agent.state is None
    agent.start()
    agent.update_state({"x": 1})
    agent.stop()
    assert agent.state["x"] == "1"


# -- enums (issue 9, item 13) -------------------------------------------------


class Priority(int, enum.Enum):
    LOW = 1
    HIGH = 2


class Share(float, enum.Enum):
    HALF = 0.5
    ALL = 1.0


class Shade(enum.Enum):
    DARK = 1
    LIGHT = "light"


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


class OldLevel(enum.IntEnum):
    """An IntEnum as Python < 3.11 prints it: str() gives 'OldLevel.HIGH'."""

    LOW = 1
    HIGH = 2
    __str__ = enum.Enum.__str__
    __format__ = enum.Enum.__format__


class OldPerm(enum.IntFlag):
    """An IntFlag as Python < 3.11 prints it: 'OldPerm.R|W', not '6'."""

    R = 4
    W = 2
    __str__ = enum.Flag.__str__


class Enums(BaseModel):
    priority: Priority = Priority.LOW
    share: Share = Share.ALL
    shade: Shade = Shade.DARK
    shade2: Shade = Shade.DARK
    color: Color = Color.RED
    level: Level = Level.LOW
    perm: Perm = Perm.R
    old_level: OldLevel = OldLevel.LOW
    old_perm: OldPerm = OldPerm.R
    maybe: Optional[Priority] = None
    many: List[Priority] = Field(default_factory=list)
    by_name: Dict[str, Share] = Field(default_factory=dict)


ENUM_UPDATES = dict(
    priority=Priority.HIGH,
    share=Share.HALF,
    shade=Shade.LIGHT,
    shade2=Shade.DARK,
    color=Color.BLUE,
    level=Level.HIGH,
    perm=Perm.R | Perm.W,
    old_level=OldLevel.HIGH,
    old_perm=OldPerm.R | OldPerm.W,
    maybe=Priority.HIGH,
    many=[Priority.HIGH, Priority.LOW],
    by_name={"h": Share.HALF},
)


def test_every_kind_of_enum_round_trips_across_a_restart(make_agent, r) -> None:
    agent = make_agent("enums", state_model=Enums)
    agent.update_state(ENUM_UPDATES)
    assert r.hgetall("agent.state:enums") == {
        "priority": "2",
        "share": "0.5",
        "shade": "light",
        "shade2": "1",
        "color": "blue",
        "level": "2",
        "perm": "6",
        "old_level": "2",
        "old_perm": "6",
        "maybe": "2",
        "many": "[2, 1]",
        "by_name": '{"h": 0.5}',
    }
    agent.stop()
    again = make_agent("enums", state_model=Enums)
    for name, value in ENUM_UPDATES.items():
        got = getattr(again.state, name)
        assert got == value and type(got) is type(value), name
    assert again.state.priority is Priority.HIGH


class Odd(enum.Enum):
    BIG = float("inf")
    YES = True
    PAIR = (1, 2)


def test_enums_with_values_json_cannot_say_round_trip(make_agent, r) -> None:
    class WithOdd(BaseModel):
        a: Odd = Odd.YES
        b: Odd = Odd.YES
        c: Optional[Odd] = None

    agent = make_agent("odd", state_model=WithOdd)
    agent.update_state({"a": Odd.BIG, "b": Odd.PAIR, "c": Odd.YES})
    assert r.hgetall("agent.state:odd") == {"a": "inf", "b": "[1, 2]", "c": "true"}
    agent.stop()
    again = make_agent("odd", state_model=WithOdd)
    assert (again.state.a, again.state.b, again.state.c) == (Odd.BIG, Odd.PAIR, Odd.YES)


@pytest.mark.skipif(not hasattr(enum, "StrEnum"), reason="enum.StrEnum is new in Python 3.11")
def test_str_enum_round_trips(make_agent, r) -> None:
    Mode = enum.StrEnum("Mode", {"FAST": "fast", "SLOW": "slow"})

    class WithMode(BaseModel):
        mode: Mode = Mode.SLOW  # type: ignore[valid-type]

    agent = make_agent("mode", state_model=WithMode)
    agent.update_state({"mode": Mode.FAST})
    assert r.hget("agent.state:mode", "mode") == "fast"
    agent.stop()
    assert make_agent("mode", state_model=WithMode).state.mode is Mode.FAST


def test_enums_stored_by_name_load(make_agent, r) -> None:
    # What earlier releases, and the async framework (str(value)), stored.
    r.hset(
        "agent.state:named",
        mapping={"priority": "Priority.HIGH", "share": "Share.HALF", "old_level": "OldLevel.HIGH",
                 "maybe": "Priority.HIGH", "shade": "Shade.LIGHT", "perm": "Perm.W|R",
                 "old_perm": "OldPerm.R|W"},
    )
    agent = make_agent("named", state_model=Enums)
    assert agent.state.priority is Priority.HIGH
    assert agent.state.share is Share.HALF
    assert agent.state.old_level is OldLevel.HIGH
    assert agent.state.maybe is Priority.HIGH
    assert agent.state.shade is Shade.LIGHT
    assert agent.state.perm == Perm.R | Perm.W and agent.state.old_perm == OldPerm.R | OldPerm.W


def test_str_of_enums_differs_as_on_old_pythons() -> None:
    # The classes above store and load under the convention they stand for.
    assert str(OldLevel.HIGH) == "OldLevel.HIGH"
    assert str(OldPerm.R | OldPerm.W) in ("OldPerm.R|W", "OldPerm.W|R")
    assert str(Priority.HIGH) == "Priority.HIGH" and str(Share.HALF) == "Share.HALF"


# -- a write whose reply is lost (issue 9, item 11) ---------------------------


class Counter(BaseModel):
    counter: int = 0
    label: str = ""


@pytest.fixture
def proxy(redis_server):
    from .proxy import FreezableProxy

    proxy = FreezableProxy(redis_server.port)
    yield proxy
    proxy.restore()
    proxy.close()


@pytest.fixture
def state_client(proxy):
    """A client through the proxy that neither retries nor waits long for a reply."""
    from mas_sync._redis import close_client, make_client

    client = make_client(proxy.url, 4, timeout=0.3)
    yield client
    close_client(client)


@pytest.mark.parametrize("model", [None, Counter], ids=["untyped", "typed"])
def test_a_lost_hset_reply_leaves_memory_and_redis_agreeing(model, proxy, state_client, r) -> None:
    import redis as redis_py

    from mas_sync import StateManager

    manager = StateManager("lost", state_client, model)
    manager.load()
    manager.update({"counter": 1})
    assert proxy.swallow_replies(new_connections=False) == 1
    with pytest.raises(redis_py.RedisError):
        manager.update({"counter": 2})
    assert r.hget("agent.state:lost", "counter") == "2"  # the HSET ran
    counter = manager.state["counter"] if model is None else manager.state.counter
    assert str(counter) == "2"  # memory follows what Redis holds
    # Back to the old value: really written.
    manager.update({"counter": 1})
    assert r.hget("agent.state:lost", "counter") == "1"
    counter = manager.state["counter"] if model is None else manager.state.counter
    assert str(counter) == "1"


@pytest.mark.slow
def test_a_lost_reply_with_redis_silent_is_repaired_by_the_next_update(proxy, state_client, r) -> None:
    from mas_sync import StateManager

    manager = StateManager("silent", state_client, Counter)
    manager.load()
    manager.update({"counter": 1, "label": "one"})
    proxy.swallow_replies(new_connections=True)  # the re-read gets no answer either
    for _ in range(2):  # as a retrying caller would, or not
        with pytest.raises(Exception) as info:
            manager.update({"counter": 2})
        assert not isinstance(info.value, (StateError, AssertionError))
    assert manager.state.counter == 1  # unknown yet: the value from before
    proxy.restore()
    assert r.hget("agent.state:silent", "counter") == "2"
    manager.update({"counter": 1})  # the value memory still shows
    assert r.hgetall("agent.state:silent") == {"counter": "1", "label": "one"}
    assert manager.state == Counter(counter=1, label="one")


def test_update_state_through_a_lost_reply_raises_a_mas_error_and_recovers(
    proxy, make_agent, r, monkeypatch
) -> None:
    from mas_sync import MASError

    agent = make_agent("lossy", state_model=Counter, redis_url=proxy.url, command_timeout=0.5)
    agent.update_state({"counter": 1})
    proxy.swallow_replies(new_connections=False)
    try:
        with pytest.raises(MASError):
            agent.update_state({"counter": 2})
    finally:
        proxy.restore()
    assert r.hget("agent.state:lossy", "counter") == "2"
    agent.update_state({"counter": 1})
    assert r.hget("agent.state:lossy", "counter") == "1"
    assert agent.state.counter == 1


# -- reset_state (issue 9, item 12) -------------------------------------------


class Required(BaseModel):
    name: str
    counter: int = 0


def test_reset_state_of_a_model_without_defaults_raises_and_changes_nothing(make_agent, r) -> None:
    r.hset("agent.state:req", mapping={"name": "x", "counter": "3"})
    agent = make_agent("req", state_model=Required)
    with pytest.raises(StateError, match="name"):
        agent.reset_state()
    assert r.hgetall("agent.state:req") == {"name": "x", "counter": "3"}
    assert agent.state.name == "x" and agent.state.counter == 3
    agent.stop()
    agent.start()
    assert agent.state.counter == 3


def test_reset_state_replaces_the_stored_state_with_the_defaults(make_agent, r) -> None:
    import uuid

    class Stamped(BaseModel):
        counter: int = 0
        token: str = Field(default_factory=lambda: uuid.uuid4().hex)

    agent = make_agent("stamped", state_model=Stamped)
    agent.update_state({"counter": 4})
    r.hset("agent.state:stamped", "foreign", "x")
    agent.reset_state()
    token = agent.state.token
    assert r.hgetall("agent.state:stamped") == {"counter": "0", "token": token}
    agent.stop()
    again = make_agent("stamped", state_model=Stamped)
    assert again.state.token == token  # memory and Redis held the same defaults


def test_a_lost_reset_reply_leaves_memory_and_redis_agreeing(proxy, state_client, r) -> None:
    import redis as redis_py

    from mas_sync import StateManager

    manager = StateManager("lost-reset", state_client, Counter)
    manager.load()
    manager.update({"counter": 5, "label": "five"})
    proxy.swallow_replies(new_connections=False)
    with pytest.raises(redis_py.RedisError):
        manager.reset()
    assert r.hgetall("agent.state:lost-reset") == {"counter": "0", "label": ""}
    assert manager.state == Counter()
    manager.update({"counter": 5, "label": "five"})
    assert r.hgetall("agent.state:lost-reset") == {"counter": "5", "label": "five"}


# -- agent.state is the model (issue 9, item 14) ------------------------------


def test_typed_state_is_an_instance_of_the_model(make_agent) -> None:
    agent = make_agent("inst", state_model=Rich)
    agent.update_state({"counter": 3, "items": [1, 2]})
    state = agent.state
    assert isinstance(state, Rich)

    def takes(value: Rich) -> int:
        return value.counter

    assert takes(state) == 3

    class Holder(BaseModel):
        state: Rich

    assert Holder(state=state).state.counter == 3
    assert Rich.model_validate(state).counter == 3
    assert state == Rich(counter=3, items=[1, 2]) and Rich(counter=3, items=[1, 2]) == state
    assert repr(state).startswith("Rich(")
    assert json.loads(state.model_dump_json())["items"] == [1, 2]
    with pytest.raises(TypeError, match="update_state"):
        state.counter = 5
    with pytest.raises(TypeError, match="update_state"):
        del state.counter
    copy = state.model_copy()
    copy.counter = 7  # a copy is an ordinary, mutable Rich
    assert type(copy) is Rich and agent.state.counter == 3


def test_typed_state_snapshot_survives_pickling(make_agent) -> None:
    import pickle

    agent = make_agent("pick", state_model=Rich)
    agent.update_state({"counter": 3})
    back = pickle.loads(pickle.dumps(agent.state))
    assert type(back) is Rich and back.counter == 3


def test_a_held_snapshot_keeps_its_value_and_nested_values_are_private(make_agent, r) -> None:
    agent = make_agent("held", state_model=Rich)
    agent.update_state({"counter": 1, "items": [1], "inner": Inner(tags=["a"])})
    held = agent.state
    agent.update_state({"counter": 2, "items": [1, 2]})
    assert (held.counter, held.items) == (1, [1])
    assert (agent.state.counter, agent.state.items) == (2, [1, 2])
    mine = agent.state
    mine.items.append(99)
    mine.inner.tags.append("b")
    assert agent.state.items == [1, 2] and agent.state.inner.tags == ["a"]
    agent.update_state({"counter": 3})
    assert json.loads(r.hget("agent.state:held", "items")) == [1, 2]


@pytest.mark.parametrize("model", [None, "typed"])
def test_readers_in_threads_always_see_a_consistent_snapshot(make_agent, model) -> None:
    class Pair(BaseModel):
        a: int = 0
        b: int = 0
        c: List[int] = Field(default_factory=list)

    agent = make_agent("pair", state_model=Pair if model else None)
    done = threading.Event()
    torn: List[Tuple[str, str]] = []

    def reader() -> None:
        while not done.is_set():
            s = agent.state
            a, b = (s.a, s.b) if model else (s["a"], s["b"])
            if str(a) != str(b):
                torn.append((str(a), str(b)))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    agent.update_state({"a": 0, "b": 0})
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: a torn read shows
    for t in readers:
        t.start()
    try:
        for i in range(200):
            agent.update_state({"a": i, "b": i, "c": [i]})
    finally:
        done.set()
        sys.setswitchinterval(switch)
        for t in readers:
            t.join(10)
    assert torn == []


def test_untyped_state_is_a_read_only_snapshot(make_agent) -> None:
    agent = make_agent("plain-snap")
    agent.update_state({"x": 1})
    held = agent.state
    agent.update_state({"x": 2, "y": 3})
    assert dict(held) == {"x": "1"}
    assert dict(agent.state) == {"x": "2", "y": "3"}
    with pytest.raises(TypeError, match="update_state"):
        held["x"] = "5"
