"""Foreign or malformed data under ``agent:*`` never breaks discovery or the health checks.

Each test runs on one server and on a 3-primary cluster (skipped with
redis-server older than 7 or redis-py older than 8.1). Hostile entries are
written as raw bytes, as any client of the same Redis could write them.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import redis
from redis.cluster import RedisCluster

from mas_sync import Agent, AgentRegistry, MASService
from mas_sync._redis import close_client, make_client
from mas_sync.testing import LocalCluster, wait_until

from .support import FAST

Fields = Dict[bytes, bytes]


def _fields(agent_id: bytes, caps: bytes = b'["x"]', meta: bytes = b"{}") -> Fields:
    return {b"id": agent_id, b"capabilities": caps, b"metadata": meta, b"status": b"ACTIVE",
            b"token": b"t", b"registered_at": b"1"}


# Registrations that must be skipped, by key: each is ACTIVE, beating, and has
# the capability "x", so that only its malformed content can keep it out.
HOSTILE: Dict[str, Tuple[bytes, Fields]] = {
    # What Lua's cjson accepts and Python's json (or strict JSON) refuses.
    "hex-number": (b"agent:hex", _fields(b"hex", caps=b'["x", 0x10]')),
    "lua-nan": (b"agent:lnan", _fields(b"lnan", meta=b'{"a": nan}')),
    "lua-inf": (b"agent:linf", _fields(b"linf", meta=b'{"a": inf}')),
    "json-NaN": (b"agent:jnan", _fields(b"jnan", meta=b'{"a": NaN}')),
    "json-Infinity": (b"agent:jinf", _fields(b"jinf", meta=b'{"a": -Infinity}')),
    "overflowing-float": (b"agent:huge", _fields(b"huge", meta=b'{"a": 1e999}')),
    # Not UTF-8, in each field and in the key name.
    "utf8-id": (b"agent:badid", _fields(b"bad\xffid")),
    "utf8-capabilities": (b"agent:badcaps", _fields(b"badcaps", caps=b'["x", "\xff"]')),
    "utf8-metadata": (b"agent:badmeta", _fields(b"badmeta", meta=b'{"a": "\xc3("}')),
    "utf8-key": (b"agent:\xffkey", _fields(b"\xffkey")),
    # Well-formed JSON of the wrong shape.
    "capabilities-not-strings": (b"agent:capint", _fields(b"capint", caps=b'["x", 1]')),
    "capabilities-an-object": (b"agent:capobj", _fields(b"capobj", caps=b'{"1": "x"}')),
    "metadata-a-list": (b"agent:metalist", _fields(b"metalist", meta=b'["x"]')),
    "metadata-a-string": (b"agent:metastr", _fields(b"metastr", meta=b'"x"')),
    "no-id": (b"agent:noid", {k: v for k, v in _fields(b"noid").items() if k != b"id"}),
    "id-of-another-key": (b"agent:alias", _fields(b"good")),
    # Nested deeper than either parser goes.
    "deep": (b"agent:deep", _fields(b"deep", meta=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000
                                     + b"}")),
}

# Keys under agent:* that are not registrations at all.
FOREIGN: Dict[bytes, Tuple[str, Any]] = {
    b"agent:oops": ("set", b"x"),
    b"agent:alist": ("rpush", b"x"),
    b"agent:\xff": ("hset", {b"id": b"\xff", b"status": b"ACTIVE"}),
    b"agent:half": ("hset", {b"status": b"ACTIVE"}),
    b"agent:rawstatus": ("hset", {b"id": b"rawstatus", b"status": b"\xff", b"token": b"\xfe"}),
}


@pytest.fixture(scope="module")
def cluster(cluster_supported: None) -> Iterator[LocalCluster]:
    with LocalCluster(primaries=3) as started:
        yield started


@pytest.fixture(params=["single", "cluster"])
def where(request, redis_url) -> Iterator[Tuple[str, Any]]:
    """``(url, raw client)`` of a flushed server or cluster; the client does not decode."""
    if request.param == "single":
        client: Any = redis.Redis.from_url(redis_url)
        url = redis_url
    else:
        cluster = request.getfixturevalue("cluster")
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        url = cluster.url
    try:
        yield url, client
    finally:
        client.close()


def _write(client: Any, key: bytes, fields: Fields, beating: bool = True) -> None:
    client.hset(key, mapping=fields)
    if beating:
        client.set(key + b":heartbeat", b"1", ex=60)


def _write_foreign(client: Any) -> None:
    for key, (command, value) in FOREIGN.items():
        if command == "hset":
            client.hset(key, mapping=value)
            client.set(key + b":heartbeat", b"1", ex=60)
        else:
            getattr(client, command)(key, value)


def _ids(found: List[Dict[str, Any]]) -> List[str]:
    return [entry["id"] for entry in found]


def _warnings_about(caplog, key: bytes) -> int:
    shown = repr(key.decode("utf-8", "backslashreplace"))
    return sum(1 for rec in caplog.records
               if rec.levelno == logging.WARNING and shown in rec.getMessage())


# -- discover() -------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_discover_skips_one_malformed_registration_and_counts_it(where, case, caplog) -> None:
    url, client = where
    key, fields = HOSTILE[case]
    with Agent("good", ["x"], url, **FAST) as agent:
        _write(client, key, fields)
        assert _ids(agent.discover()) == ["good"]
        assert _ids(agent.discover()) == ["good"]
        assert agent.stats.skipped_registrations == 2
        assert _ids(agent.discover(["x"])) == ["good"]
        assert _warnings_about(caplog, key) == 1, "logged once, not on every call"


def test_discover_finds_everyone_else_among_hostile_and_foreign_keys(where, caplog) -> None:
    url, client = where
    registry_client = make_client(url, 4)
    try:
        for key, fields in HOSTILE.values():
            _write(client, key, fields)
        _write_foreign(client)
        for n in range(30):
            _write(client, b"agent:ok-%02d" % n, _fields(b"ok-%02d" % n, meta=b'{"n": %d}' % n))
        with Agent("good", ["x"], url, **FAST) as agent:
            expected = ["good"] + [f"ok-{n:02d}" for n in range(30)]
            assert _ids(agent.discover(["x"])) == expected
            assert _ids(agent.discover()) == expected
            assert agent.discover(["x"])[5] == {"id": "ok-04", "capabilities": ["x"],
                                                 "metadata": {"n": 4}, "delivery": "pubsub",
                                                 "instances": 1}
            assert agent.stats.skipped_registrations >= 2 * len(HOSTILE)
            # The registry alone, as a service or a script uses it.
            counted: List[int] = []
            registry = AgentRegistry(registry_client, on_skip=counted.append)
            assert _ids(registry.discover()) == expected
            assert counted == [len(HOSTILE) + 2]  # and agent:\xff, agent:half
            assert registry.get_agent("good") is not None
            for bad in ("hex", "badcaps", "alias", "noid", "rawstatus"):
                assert registry.get_agent(bad) is None
        for key, _ in HOSTILE.values():  # once by each registry: the agent's and the test's
            assert _warnings_about(caplog, key) == 2, key
    finally:
        close_client(registry_client)


# -- health checks --------------------------------------------------------------------


def test_health_checks_skip_foreign_keys_and_cover_every_registration(where, caplog) -> None:
    url, client = where
    _write_foreign(client)
    for key, fields in HOSTILE.values():
        _write(client, key, fields, beating=False)
    for n in range(20):
        _write(client, b"agent:ghost-%02d" % n, _fields(b"ghost-%02d" % n), beating=False)
    # Every registration is judged, whatever its capabilities and metadata
    # hold (the check reads the status and token alone); the keys that are
    # not registrations (not hashes, names or status not UTF-8) are skipped.
    expected = sorted(
        [f"ghost-{n:02d}" for n in range(20)]
        + [key[len(b"agent:"):].decode() for key, _ in HOSTILE.values() if key.isascii()]
    )
    with MASService(url, heartbeat_timeout=0, check_interval=60) as service:
        assert service.check_health() == expected
        assert service.check_health() == []
    assert client.type(b"agent:oops") == b"string"
    assert client.hget(b"agent:rawstatus", b"status") == b"\xff"
    assert client.hget(b"agent:\xff", b"status") == b"ACTIVE"
    assert client.hget(b"agent:\xffkey", b"status") == b"ACTIVE"
    assert _warnings_about(caplog, b"agent:\xff") == 1
    assert _warnings_about(caplog, b"agent:rawstatus") == 1


def test_the_service_loop_marks_a_dead_agent_among_foreign_keys(where) -> None:
    url, client = where
    _write_foreign(client)
    for key, fields in HOSTILE.values():
        _write(client, key, fields)
    decoded = make_client(url, 4)
    try:
        with Agent("steady", ["x"], url, **FAST), \
                MASService(url, heartbeat_timeout=0, check_interval=0.1):
            AgentRegistry(decoded).register("victim", ["x"], heartbeat_ttl=0.5)
            # Seen beating, then its heartbeat dies: the loop marks it.
            wait_until(lambda: client.hget(b"agent:victim", b"status") == b"INACTIVE", 5,
                       message="the dead agent is marked while foreign keys exist")
            assert client.hget(b"agent:steady", b"status") == b"ACTIVE"
    finally:
        close_client(decoded)


def test_prune_dead_skips_foreign_keys(where) -> None:
    url, client = where
    _write_foreign(client)
    _write(client, b"agent:dead", _fields(b"dead"), beating=False)
    decoded = make_client(url, 4)
    try:
        assert AgentRegistry(decoded).prune_dead(30) == ["dead"]
    finally:
        close_client(decoded)
    assert client.pttl(b"agent:oops") == -1
    assert client.pttl(b"agent:\xff") == -1


def test_a_registration_that_turns_into_a_string_while_judged(where, monkeypatch) -> None:
    # Between the read of a check and its mark, a key read as a dead
    # registration is replaced by a string: the rest of the batch is judged.
    url, client = where
    for n in range(5):
        _write(client, b"agent:ghost-%d" % n, _fields(b"ghost-%d" % n), beating=False)
    real = AgentRegistry._read_liveness

    def read_then_replace(self, agent_ids):
        found = real(self, agent_ids)
        client.delete(b"agent:ghost-0")
        client.set(b"agent:ghost-0", b"now a string")
        return found

    with MASService(url, heartbeat_timeout=0, check_interval=60) as service:
        monkeypatch.setattr(AgentRegistry, "_read_liveness", read_then_replace)
        assert service.check_health() == [f"ghost-{n}" for n in range(1, 5)]
    assert client.get(b"agent:ghost-0") == b"now a string"


def test_strict_parsing_keeps_every_valid_number(r) -> None:
    registry = AgentRegistry(r)
    meta = {"n": 10**30, "f": -1.5e300, "tiny": 5e-324, "s": "\u00e9\u2603", "deep": [[[{}]]]}
    for n in range(50):
        registry.register(f"a{n:02d}", ["x"], {**meta, "i": n}, heartbeat_ttl=30)
    found = registry.discover(["x"])
    assert [e["metadata"] for e in found] == [{**meta, "i": n} for n in range(50)]
    assert json.dumps(found, allow_nan=False)
