"""Where a message to one agent goes: its stream (a reliable agent) or its channel."""

from __future__ import annotations

import json
from typing import Any

import redis

from mas_sync.testing import wait_until

from tests.conftest import read_message


def test_one_message_to_a_reliable_target_is_one_xadd(make_agent: Any, r: redis.Redis) -> None:
    worker = make_agent("worker", delivery="reliable")
    worker.stop()
    sender = make_agent("sender")
    r.config_resetstat()
    sender.send("worker", {"n": 1})
    stats = r.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 1
    assert "cmdstat_publish" not in stats
    entry = r.xrange("agent.stream:worker")[-1][1]
    assert json.loads(entry["envelope"])["payload"] == {"n": 1}


def test_a_stream_gone_since_its_route_was_read_is_not_made_again(
    make_agent: Any, r: redis.Redis
) -> None:
    worker = make_agent("worker", delivery="reliable")
    worker.stop()
    one, many = make_agent("one"), make_agent("many")
    one.send("worker", {"n": 0})  # the route (a stream) is now cached by both
    many.send("worker", {"n": 0})
    r.delete("agent.stream:worker")
    pubsub = r.pubsub()
    pubsub.subscribe("agent.worker")
    try:
        wait_until(lambda: r.pubsub_numsub("agent.worker")[0][1] == 1, message="not subscribed")
        one.send("worker", {"n": 1})
        many.send_many([("worker", {"n": 2}), ("worker", {"n": 3})])
        for n in (1, 2, 3):
            message = read_message(pubsub)
            assert message is not None and json.loads(message["data"])["payload"] == {"n": n}
        assert not r.exists("agent.stream:worker")
    finally:
        pubsub.close()
