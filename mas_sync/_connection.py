"""Redis clients as mas_sync agents and services use them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ._errors import MASConnectionError
from ._sentinel import is_sentinel_url, make_sentinel_client

if TYPE_CHECKING:  # pragma: no cover
    from redis.cluster import RedisCluster

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
        if is_cluster_url(url):
            del kwargs["timeout"]
            kwargs["max_connections"] = max(max_connections, 64)
            return make_cluster_client(url, **kwargs)
        pool = redis.BlockingConnectionPool.from_url(url, **kwargs)
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None
    return redis.Redis(connection_pool=pool)


CLUSTER_SCHEME = "redis+cluster://"
#: Sharded pub/sub in cluster mode reconnects and follows slot migrations
#: only from this redis-py release on.
CLUSTER_MIN_REDIS_PY = (8, 1, 0)


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://host:port[,host:port...]`` URLs."""
    return url.startswith(CLUSTER_SCHEME)


def make_cluster_client(url: str, **kwargs: Any) -> "RedisCluster":
    """A Redis Cluster client from ``redis+cluster://[[user]:password@]host:port[,...]``.

    Raises:
        ValueError: a malformed URL.
        RuntimeError: the installed redis-py is older than 8.1.0.
        MASConnectionError: no node answers.
    """
    version = tuple(int(p) for p in re.findall(r"\d+", redis.__version__)[:3])
    if version < CLUSTER_MIN_REDIS_PY:
        raise RuntimeError(
            f"cluster mode needs redis-py 8.1.0 or newer (sharded pub/sub), not {redis.__version__}"
        )
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException

    netloc = url[len(CLUSTER_SCHEME):].split("/", 1)[0]
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, password = auth.partition(":")
        kwargs["username"] = unquote(user) or None
        kwargs["password"] = unquote(password) if sep else None
    nodes = []
    for part in netloc.split(","):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"cluster node {part!r} is not host:port")
        nodes.append(ClusterNode(host, int(port)))
    # At least two cluster-level retries: a MOVED reply or a node that went
    # away refreshes the slot map, then the command is tried again.
    retry = kwargs.pop("retry")
    kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), max(2, retry.get_retries()))
    try:
        # Asks the nodes for the slot map at once.
        return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **kwargs)
    except RedisClusterException as exc:
        raise MASConnectionError(f"cannot reach Redis Cluster at {redact_url(url)}: {exc}") from exc


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (or one of its pipelines)."""
    from redis.cluster import ClusterPipeline, RedisCluster

    return isinstance(client, (RedisCluster, ClusterPipeline))


def publish(client: Any, channel: str, data: Any) -> Any:
    """PUBLISH, or SPUBLISH (sharded pub/sub) on a cluster client or pipeline."""
    if is_cluster(client):
        return client.spublish(channel, data)
    return client.publish(channel, data)


def drop_connections(client: Any) -> None:
    """Disconnect every connection of ``client``, those in use by other threads too.

    A call in flight fails and is retried on a fresh connection; used when the
    connections are known, or likely, to be dead.
    """
    if is_cluster(client):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def close_client(client: Any) -> None:
    """Close ``client`` and every connection of its pool(s)."""
    client.close()
    drop_connections(client)


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
