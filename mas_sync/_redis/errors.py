"""The Redis errors mas_sync tells apart: a lost Redis, any Redis error, a dead subscription."""

from __future__ import annotations

import redis
from redis.exceptions import RedisClusterException

#: What a lost or unreachable Redis raises (a cluster client raises its own
#: RedisClusterException, outside redis-py's RedisError tree).
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, RedisClusterException, OSError)
#: The same, plus anything else Redis may answer with.
ANY_REDIS_ERROR = (redis.RedisError, RedisClusterException, OSError)


class DeadConnection(redis.ConnectionError):
    """The pub/sub connection did not answer a PING in time."""
