"""discover() over many SCAN pages: the same records as reading every hash one by one."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional

import pytest
import redis

from mas_sync import AgentRegistry
from mas_sync._discovery import SCAN_COUNT


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _everyone(client: redis.Redis) -> List[Dict[str, Any]]:
    """Every record discover() must return, read key by key in Python (all pub/sub)."""
    keys = [k for k in client.scan_iter(match="agent:*", _type="hash") if b":" not in k[6:]]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
        pipe.exists(key + b":heartbeat")
    replies = pipe.execute()
    found = []
    for key, fields, beating in zip(keys, replies[::2], replies[1::2]):
        if fields.get(b"status") != b"ACTIVE" or not beating:
            continue
        try:
            caps = json.loads(fields[b"capabilities"], parse_constant=_refuse)
            meta = json.loads(fields[b"metadata"], parse_constant=_refuse)
        except (KeyError, ValueError):
            continue
        if fields.get(b"id", b"").decode() != key[6:].decode() or not isinstance(meta, dict):
            continue
        found.append({"id": fields[b"id"].decode(), "capabilities": caps, "metadata": meta,
                      "delivery": "pubsub", "instances": 1})
    return sorted(found, key=lambda r: r["id"])


def _matching(everyone: List[Dict[str, Any]], wanted: Optional[List[str]]) -> List[Dict[str, Any]]:
    return [r for r in everyone if not wanted or set(wanted) & set(r["capabilities"])]


@pytest.mark.slow
def test_many_pages_give_the_same_records(redis_url, caplog) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        n = 3 * SCAN_COUNT  # with their heartbeats, several SCAN pages
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            key = f"agent:p-{i:05d}"
            caps = ["even" if i % 2 else "odd"] + (["third"] if i % 3 == 0 else [])
            meta = {"n": i, "q": 'say "hi"'} if i % 7 == 0 else {}
            status = "INACTIVE" if i % 11 == 0 else "ACTIVE"
            pipe.hset(key, mapping={"id": f"p-{i:05d}", "capabilities": json.dumps(caps),
                                    "metadata": json.dumps(meta), "status": status,
                                    "token": "t", "registered_at": "1"})
            if i % 13:  # every 13th never beats
                pipe.set(key + ":heartbeat", "1", ex=600)
        # Ids that need escaping, and a few registrations that cannot be read.
        pipe.hset('agent:q"uote', mapping={"id": 'q"uote', "capabilities": '["even"]',
                                            "metadata": "{}", "status": "ACTIVE"})
        pipe.set('agent:q"uote:heartbeat', "1", ex=600)
        for i in range(0, n, 997):
            pipe.hset(f"agent:bad-{i}", mapping={"id": f"bad-{i}", "capabilities": '["even"]',
                                                 "metadata": '{"a": NaN}', "status": "ACTIVE"})
            pipe.set(f"agent:bad-{i}:heartbeat", "1", ex=600)
        pipe.execute()
        skipped: List[int] = []
        registry = AgentRegistry(redis.Redis.from_url(redis_url, decode_responses=True),
                                 on_skip=skipped.append)
        caplog.set_level(logging.WARNING)
        everyone = _everyone(client)
        assert len(everyone) > SCAN_COUNT
        for wanted in (None, ["even"], ["third"], ["odd", "third"], ["none"]):
            assert registry.discover(wanted) == _matching(everyone, wanted), wanted
        bad = len(range(0, n, 997))
        assert skipped[:2] == [bad, bad]  # discover() and discover(["even"]) meet them all
        assert 'q"uote' in [r["id"] for r in registry.discover(["even"])]
    finally:
        client.close()
