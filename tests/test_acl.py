"""Least-privilege Redis users: agents and the service run under the rules mas_sync prints."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import redis

from mas_sync import (
    Agent, AgentMessage, AgentRegistry, Keyring, MASService, SigningKey, acl_rules,
    service_acl_rules,
)
from mas_sync import _wire
from mas_sync.__main__ import main
from mas_sync.testing import RedisServer, redis_version, wait_until

FAST: Dict[str, Any] = dict(heartbeat_interval=0.2, heartbeat_ttl=1.0)
RELIABLE: Dict[str, Any] = dict(delivery="reliable", retry_delay=0.01)
PASSWORDS = {"a": "pw-a", "b": "pw-b", "mas-service": "pw-service"}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private server whose ACL file holds the users of agents a and b and of the service."""
    with RedisServer() as probe:
        if redis_version(probe) < (7,):
            pytest.skip("read-only key patterns and selectors need Redis 7")
    lines = [
        *acl_rules("a", password=PASSWORDS["a"], acl_file=True),
        *acl_rules("b", password=PASSWORDS["b"], acl_file=True),
        *service_acl_rules(password=PASSWORDS["mas-service"], acl_file=True),
        "user default on nopass ~* &* +@all",
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "users.acl")
        with open(path, "w", encoding="utf-8") as acl:
            acl.write("\n".join(lines) + "\n")
        with RedisServer(extra_args=["--aclfile", path]) as started:
            yield started


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """The default user, on a clean database and an empty ACL log; checks the log stays empty."""
    client = redis.Redis(port=server.port, decode_responses=True)
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{server.port}/0"


def refusals(admin: redis.Redis) -> List[str]:
    """What the ACL log holds: one ``user reason object`` line per refusal."""
    return [f"{e['username']} {e['reason']} {e['object']}" for e in admin.acl_log()]


class Recorder(Agent):
    """Keeps what it handles; answers requests; fails messages that ask for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: List[AgentMessage] = []
        self.lock = threading.Lock()

    def on_message(self, message: AgentMessage) -> Any:
        if message.payload.get("fail"):
            raise RuntimeError("asked to fail")
        with self.lock:
            self.seen.append(message)
        if message.expects_reply:
            return {"echo": message.payload}
        return None

    def payloads(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [m.payload for m in self.seen]


# -- what each agent does succeeds -------------------------------------------------


def test_pubsub_agents_do_everything_under_their_own_users(
    server: RedisServer, admin: redis.Redis, agents: List[Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = Recorder("a", ["x"], url(server, "a"), **FAST)
    b = Recorder("b", ["y"], url(server, "b"), dedupe_window=60, **FAST)
    for agent in (a, b):
        agent.start()
        agents.append(agent)
    a.send("b", {"n": 1})
    b.send("a", {"n": 2})
    wait_until(lambda: b.payloads() == [{"n": 1}] and a.payloads() == [{"n": 2}])
    assert a.request("b", {"q": 1}, timeout=5).payload == {"echo": {"q": 1}}
    assert b.request("a", {"q": 2}, timeout=5).payload == {"echo": {"q": 2}}
    assert sorted(found["id"] for found in a.discover()) == ["a", "b"]
    assert [found["id"] for found in b.discover(["x"])] == ["a"]
    a.update_state({"k": "v"})
    a.reset_state()
    a.update_state({"k": "w"})
    beat = admin.get("agent:a:heartbeat")
    wait_until(lambda: admin.get("agent:a:heartbeat") != beat, message="no heartbeat")
    a.stop(timeout=5)
    again = Recorder("a", ["x"], url(server, "a"), **FAST)
    again.start()  # loads its state
    agents.append(again)
    assert dict(again.state) == {"k": "w"}
    assert refusals(admin) == []
    assert "NOPERM" not in caplog.text and "wake" not in caplog.text


@pytest.mark.parametrize("reliable", [False, True], ids=["pubsub", "reliable"])
def test_signed_rate_limited_agents_with_shared_breakers_work_under_their_own_users(
    server: RedisServer, admin: redis.Redis, agents: List[Agent],
    caplog: pytest.LogCaptureFixture, reliable: bool,
) -> None:
    keys = {n: SigningKey(f"key-{n}", n * 32, senders=[n]) for n in ("a", "b")}
    both = list(keys.values())
    a = Recorder("a", ["x"], url(server, "a"), keyring=Keyring(both, sign_with="key-a"),
                 require_signed=True, accept_capabilities=["y"], breaker_failures=3,
                 breaker_shared=True, send_rate="1000/s", **FAST)
    b = Recorder("b", ["y"], url(server, "b"), keyring=Keyring(both, sign_with="key-b"),
                 require_signed=True, accept_from=["a"], rate_limit="1000/s",
                 **(RELIABLE if reliable else {}), **FAST)
    for agent in (b, a):
        agent.start()
        agents.append(agent)
    a.send_many([("b", {"i": i}) for i in range(20)])
    b.send("a", {"n": 2})
    wait_until(lambda: len(b.payloads()) == 20 and a.payloads() == [{"n": 2}])
    assert a.request("b", {"q": 1}, timeout=5).payload == {"echo": {"q": 1}}
    admin.publish("agent.b", admin.xrange("agent.stream:b")[0][1]["envelope"] if reliable
                  else '{"sender_id":"a","target_id":"b","payload":{}}')
    wait_until(lambda: b.stats.refused == 1)
    assert a.stats.refused == 0
    assert refusals(admin) == []
    assert "NOPERM" not in caplog.text


def test_reliable_agents_do_everything_under_their_own_users(
    server: RedisServer, admin: redis.Redis, agents: List[Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = Recorder("a", ["x"], url(server, "a"), **FAST)
    b = Recorder("b", ["y"], url(server, "b"), max_attempts=1, stream_maxlen=3,
                 visibility_timeout=0.5, dedupe_window=60, **RELIABLE, **FAST)
    for agent in (b, a):
        agent.start()
        agents.append(agent)
    a.send_many([("b", {"i": i}) for i in range(6)])
    a.send("b", {"fail": True})
    wait_until(lambda: len(b.payloads()) == 6 and admin.xlen("agent.dlq:b") == 1)
    wait_until(lambda: admin.xlen("agent.stream:b") == 3, message="not trimmed")
    assert admin.xinfo_groups("agent.stream:b")[0]["pending"] == 0
    assert a.request("b", {"q": 1}, timeout=5).payload == {"echo": {"q": 1}}
    assert b.request("a", {"q": 2}, timeout=5).payload == {"echo": {"q": 2}}
    letters = b.dead_letters()
    assert [letter.message.payload for letter in letters if letter.message] == [{"fail": True}]
    assert b.requeue_dead_letters() == 1  # fails again: back among the dead letters
    wait_until(lambda: admin.xlen("agent.dlq:b") == 1 and b.dead_letters()[0].id != letters[0].id)
    assert b.purge_dead_letters() == 1
    assert len(b.history()) >= 1
    handled = len(b.payloads())
    assert b.replay() >= 1
    wait_until(lambda: len(b.payloads()) > handled, message="not replayed")
    [found] = a.discover(["y"])
    assert (found["id"], found["delivery"], found["instances"]) == ("b", "reliable", 1)
    registry = AgentRegistry(redis.Redis.from_url(url(server, "a"), decode_responses=True))
    record = registry.get_agent("b")
    assert record is not None and record["instances"] == 1
    b.stop(timeout=5)
    assert refusals(admin) == []
    assert "NOPERM" not in caplog.text and "wake" not in caplog.text


def test_a_reliable_agent_claims_what_a_crashed_instance_left(
    server: RedisServer, admin: redis.Redis, agents: List[Agent]
) -> None:
    b = Recorder("b", [], url(server, "b"), instance="one", visibility_timeout=0.3,
                 **RELIABLE, **FAST)
    b.start()
    agents.append(b)
    a = Recorder("a", [], url(server, "a"), **FAST)
    a.start()
    agents.append(a)
    # A consumer of b that read an entry and died without acknowledging it.
    a.send("b", {"first": True})
    wait_until(lambda: b.payloads() == [{"first": True}])
    wait_until(lambda: admin.xpending("agent.stream:b", "agents")["pending"] == 0)
    envelope = admin.xrange("agent.stream:b")[0][1]["envelope"].replace("first", "second")
    crashed = admin.pipeline(transaction=True)  # b's reader cannot come in between
    crashed.xadd("agent.stream:b", {"envelope": envelope})
    crashed.xreadgroup("agents", "b-crashed", {"agent.stream:b": ">"}, count=1)
    entry = crashed.execute()[0]
    assert admin.xpending("agent.stream:b", "agents")["pending"] == 1
    wait_until(lambda: {"second": True} in b.payloads(), message=f"{entry} not claimed")
    wait_until(lambda: admin.xpending("agent.stream:b", "agents")["pending"] == 0)
    assert refusals(admin) == []


def test_the_service_marks_a_dead_agent_inactive_under_its_user(
    server: RedisServer, admin: redis.Redis, agents: List[Agent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mas_sync")
    with MASService(url(server, "mas-service"), heartbeat_timeout=0, check_interval=60,
                    prune_after=30) as service:
        registry = AgentRegistry(redis.Redis.from_url(url(server, "a"), decode_responses=True))
        registry.register("a", ["x"])  # a run that died before its first heartbeat
        wait_until(lambda: "agent a registered" in caplog.text)
        assert service.check_health() == ["a"]
        assert admin.hget("agent:a", "status") == "INACTIVE"
        assert admin.pttl("agent:a") > 0
    assert refusals(admin) == []
    assert "NOPERM" not in caplog.text and "wake" not in caplog.text


# -- what reaches another agent is refused ---------------------------------------


def _subscribe(client: redis.Redis, channel: str) -> Any:
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        return pubsub.get_message(timeout=2)
    finally:
        pubsub.close()


REFUSED: List[Tuple[str, Callable[[redis.Redis], Any]]] = [
    ("subscribe-b-channel", lambda c: _subscribe(c, "agent.b")),
    ("subscribe-mas-system", lambda c: _subscribe(c, "mas.system")),
    ("subscribe-b-wake", lambda c: _subscribe(c, "mas_sync:wake:{agent.b}:x")),
    ("hset-b-registration", lambda c: c.hset("agent:b", "status", "ACTIVE")),
    ("del-b-registration", lambda c: c.delete("agent:b")),
    ("set-b-heartbeat", lambda c: c.set("agent:b:heartbeat", "1")),
    ("eval-b-registration", lambda c: c.eval("return 1", 1, "agent:b")),
    ("lua-hset-b-registration",
     lambda c: c.eval("return redis.call('HSET', 'agent:b', 'status', 'x')", 0)),
    ("set-b-state", lambda c: c.set("agent.state:b", "x")),
    ("hset-b-state", lambda c: c.hset("agent.state:b", "k", "v")),
    ("hgetall-b-state", lambda c: c.hgetall("agent.state:b")),
    ("xreadgroup-b-stream",
     lambda c: c.xreadgroup("agents", "a-spy", {"agent.stream:b": ">"}, count=1)),
    ("xrange-b-stream", lambda c: c.xrange("agent.stream:b")),
    ("xinfo-b-stream", lambda c: c.xinfo_stream("agent.stream:b")),
    ("xinfo-groups-b-stream", lambda c: c.xinfo_groups("agent.stream:b")),
    ("xgroup-create-b-stream", lambda c: c.xgroup_create("agent.stream:b", "spies", id="0")),
    ("xgroup-destroy-b-stream", lambda c: c.xgroup_destroy("agent.stream:b", "agents")),
    ("xack-b-stream", lambda c: c.xack("agent.stream:b", "agents", "0-1")),
    ("xtrim-b-stream", lambda c: c.xtrim("agent.stream:b", maxlen=0)),
    ("xdel-b-stream", lambda c: c.xdel("agent.stream:b", "0-1")),
    ("del-b-stream", lambda c: c.delete("agent.stream:b")),
    ("xrange-b-dlq", lambda c: c.xrange("agent.dlq:b")),
    ("xadd-b-dlq", lambda c: c.xadd("agent.dlq:b", {"envelope": "x"})),
    ("set-b-seen", lambda c: c.set("mas_sync:seen:b:x", "1")),
    ("get-b-seen", lambda c: c.get("mas_sync:seen:b:x")),
    ("set-b-nonce", lambda c: c.set(_wire.nonce_key("b", "x"), "1", nx=True, ex=60)),
    ("set-b-rate", lambda c: c.set("mas_sync:rate:b:x", "1")),
    ("get-b-rate", lambda c: c.get("mas_sync:rate:b:x")),
    ("set-other-key", lambda c: c.set("elsewhere", "1")),
    ("flushall", lambda c: c.flushall()),
    ("config-get", lambda c: c.config_get("requirepass")),
    ("keys", lambda c: c.keys("*")),
    ("acl-list", lambda c: c.acl_list()),
    ("shutdown", lambda c: c.shutdown()),
]


@pytest.fixture
def b_keys(admin: redis.Redis) -> None:
    """What agent b has in Redis, written by the default user."""
    admin.hset("agent:b", mapping={"id": "b", "capabilities": "[]", "metadata": "{}",
                                   "status": "ACTIVE", "delivery": "reliable"})
    admin.set("agent:b:heartbeat", "1", ex=60)
    admin.hset("agent.state:b", "k", "v")
    admin.xgroup_create("agent.stream:b", "agents", id="0", mkstream=True)
    admin.xadd("agent.stream:b", {"envelope": "{}"})
    admin.xadd("agent.dlq:b", {"envelope": "{}"})
    for key in ("mas_sync:seen:b:x", _wire.nonce_key("b", "x"), "mas_sync:rate:b:x"):
        admin.set(key, "1", ex=60)


@pytest.mark.parametrize("operation", [op for _, op in REFUSED], ids=[n for n, _ in REFUSED])
def test_a_cross_agent_operation_is_refused(
    server: RedisServer, admin: redis.Redis, b_keys: None,
    operation: Callable[[redis.Redis], Any],
) -> None:
    client = redis.Redis.from_url(url(server, "a"), decode_responses=True)
    try:
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            operation(client)
    finally:
        client.close()
    # NOPERM; in a script, the script's error that says the user may not.
    assert isinstance(refused.value, redis.exceptions.NoPermissionError) \
        or "The user executing the script can't" in str(refused.value)
    assert admin.hgetall("agent.state:b") == {"k": "v"}
    assert admin.xlen("agent.stream:b") == 1


ALLOWED: List[Tuple[str, Callable[[redis.Redis], Any]]] = [
    ("publish-b-channel", lambda c: c.publish("agent.b", "{}")),
    ("publish-mas-system", lambda c: c.publish("mas.system", "{}")),
    ("xadd-b-stream", lambda c: c.xadd("agent.stream:b", {"envelope": "{}"}, nomkstream=True)),
    ("type-b-stream", lambda c: c.type("agent.stream:b")),
    ("hgetall-b-registration", lambda c: c.hgetall("agent:b")),
    ("exists-b-heartbeat", lambda c: c.exists("agent:b:heartbeat")),
    ("set-b-breaker", lambda c: c.set("mas_sync:breaker:b", "open")),
    ("set-own-nonce", lambda c: c.set(_wire.nonce_key("a", "x"), "1", nx=True, ex=60)),
    ("incr-own-rate", lambda c: c.incr("mas_sync:rate:a:b")),
]


@pytest.mark.parametrize("operation", [op for _, op in ALLOWED], ids=[n for n, _ in ALLOWED])
def test_what_an_agent_may_do_to_others_is_allowed(
    server: RedisServer, admin: redis.Redis, b_keys: None,
    operation: Callable[[redis.Redis], Any],
) -> None:
    client = redis.Redis.from_url(url(server, "a"), decode_responses=True)
    try:
        operation(client)
    finally:
        client.close()
    assert refusals(admin) == []


def test_the_service_user_reaches_registrations_only(
    server: RedisServer, admin: redis.Redis, b_keys: None
) -> None:
    client = redis.Redis.from_url(url(server, "mas-service"), decode_responses=True)
    try:
        assert client.hmget("agent:b", "id") == ["b"]
        for refused in (lambda: client.hgetall("agent.state:b"),
                        lambda: client.xrange("agent.stream:b"),
                        lambda: client.publish("agent.b", "{}"),
                        lambda: client.flushall()):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    finally:
        client.close()


# -- the rules themselves, and the command line -------------------------------------


def test_the_setuser_line_gives_the_same_user_as_the_acl_file(
    server: RedisServer, admin: redis.Redis
) -> None:
    [line] = acl_rules("a", user="a-copy", password=PASSWORDS["a"])
    assert line.startswith("ACL SETUSER a-copy reset resetchannels on #")
    admin.execute_command(*line.split())
    try:
        copy, original = admin.acl_getuser("a-copy"), admin.acl_getuser("a")
        assert copy == original
    finally:
        admin.acl_deluser("a-copy")


def test_the_lines_hold_where_every_channel_is_granted_by_default() -> None:
    # acl-pubsub-default allchannels (the default before Redis 7): "reset"
    # grants every channel, after which a channel pattern is refused.
    with RedisServer(extra_args=["--acl-pubsub-default", "allchannels"]) as server:
        if redis_version(server) < (7,):
            pytest.skip("the ACL rules need Redis 7")
        with server.client(decode_responses=True) as admin:
            for line in (*acl_rules("a", password="pw"), *service_acl_rules(password="pw")):
                admin.execute_command(*line.split())
            def may(*command: str) -> bool:
                return admin.execute_command("ACL", "DRYRUN", "a", *command) == "OK"

            assert may("SUBSCRIBE", "agent.a") and may("PUBLISH", "agent.b", "x")
            assert not may("SUBSCRIBE", "agent.b") and not may("PUBLISH", "elsewhere", "x")


def test_the_rules_name_commands_and_keep_the_password_out() -> None:
    [line] = acl_rules("a", password="secret")
    assert "secret" not in line and "+@all" not in line and " ~* " not in line
    assert " ~agent:a ~agent:a:heartbeat ~agent:a:stats ~agent.state:a " in line
    assert " %R~agent:* &agent.a &mas_sync:wake:{agent.a}:* " in line
    assert ("(+publish +spublish resetchannels &agent.* &mas.system)"
            " (+xadd +type resetchannels %W~agent.stream:*)") in line
    head = "a reset resetchannels on"
    assert acl_rules("a", nopass=True)[0].startswith(f"ACL SETUSER {head} nopass -@all ")
    assert acl_rules("a")[0].startswith(f"ACL SETUSER {head} -@all ")  # no way in yet
    assert acl_rules("a", acl_file=True)[0].startswith(f"user {head} -@all ")
    [service] = service_acl_rules(nopass=True)
    assert service.startswith("ACL SETUSER mas-service reset resetchannels on nopass -@all ")
    assert service.endswith(" ~agent:* &mas.system &mas_sync:wake:{mas.system}:*")


@pytest.mark.parametrize("call, error", [
    (lambda: acl_rules("a:b"), ValueError),
    (lambda: acl_rules(1), TypeError),  # type: ignore[arg-type]
    (lambda: acl_rules("a", user="a b"), ValueError),
    (lambda: acl_rules("a", user=""), ValueError),
    (lambda: acl_rules("a", password="x", nopass=True), ValueError),
    (lambda: acl_rules("a", password=""), ValueError),
    (lambda: service_acl_rules(user=None), TypeError),  # type: ignore[arg-type]
])
def test_bad_arguments_are_refused(call: Callable[[], Any], error: type) -> None:
    with pytest.raises(error):
        call()


def test_the_cli_prints_one_line_per_user(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A_PASSWORD", "secret")
    assert main(["acl", "a", "--password-env", "A_PASSWORD"]) == 0
    out, err = capsys.readouterr()
    assert out == acl_rules("a", password="secret")[0] + "\n" and err == ""
    assert main(["acl", "a", "b", "--service", "--nopass"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [*acl_rules("a", nopass=True), *acl_rules("b", nopass=True),
                                *service_acl_rules(nopass=True)]
    assert "nopass" in err  # a warning
    assert main(["acl", "a", "--user", "alice", "--acl-file"]) == 0
    out, err = capsys.readouterr()
    assert out == acl_rules("a", user="alice", acl_file=True)[0] + "\n"
    assert "no password" in err
    assert main(["acl", "--service", "--user", "svc", "--nopass"]) == 0
    assert capsys.readouterr()[0] == service_acl_rules(user="svc", nopass=True)[0] + "\n"


@pytest.mark.parametrize("argv", [
    ["acl"],  # nobody
    ["acl", "a:b"],  # a bad id
    ["acl", "a", "--password-env", "X", "--nopass"],
    ["acl", "a", "--password-env", "MAS_SYNC_TEST_UNSET"],
    ["acl", "a", "b", "--user", "both"],  # one name for two users
    ["acl", "a", "--user", "a b"],
])
def test_the_cli_refuses_bad_arguments(
    argv: List[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAS_SYNC_TEST_UNSET", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "error" in err
