"""Redis clients as mas_sync agents and services use them."""

from __future__ import annotations

import re
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ._errors import MASConnectionError
from ._sentinel import is_sentinel_url, make_sentinel_client

#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for the answer to one command (redis-py's default too).
COMMAND_TIMEOUT = 5.0
#: Seconds a thread waits for a free connection when the pool is exhausted.
POOL_TIMEOUT = 20.0


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    return _PASSWORD.sub(r"\1***@", url)


_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")


def make_client(
    url: str,
    max_connections: int,
    *,
    decode: bool = True,
    retries: int = 1,
    timeout: float = COMMAND_TIMEOUT,
) -> redis.Redis:
    """A client with its own blocking pool of at most ``max_connections``.

    Threads that find the pool exhausted wait for a connection (up to
    ``POOL_TIMEOUT``) instead of failing at once. redis-py retries a failed
    command ``retries`` times at once (one retry replaces a pooled connection
    that died, say after a Redis restart); longer outages are for the caller
    to handle. The caller owns the client and must ``close()`` it.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """
    kwargs: Any = dict(
        max_connections=max_connections,
        timeout=POOL_TIMEOUT,
        socket_connect_timeout=min(CONNECT_TIMEOUT, timeout),
        socket_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries),
        decode_responses=decode,
    )
    try:
        if is_sentinel_url(url):
            del kwargs["timeout"]  # redis-py's Sentinel pool does not block
            kwargs["max_connections"] = max(max_connections, 64)
            return make_sentinel_client(url, **kwargs)
        pool = redis.BlockingConnectionPool.from_url(url, **kwargs)
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None
    return redis.Redis(connection_pool=pool)


def ping(client: redis.Redis, url: str) -> None:
    """Check that Redis answers.

    Raises:
        MASConnectionError: it does not, with the (redacted) URL in the message.
    """
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise MASConnectionError(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
    except redis.RedisError as exc:
        raise MASConnectionError(f"Redis at {redact_url(url)} refused PING: {exc}") from exc
