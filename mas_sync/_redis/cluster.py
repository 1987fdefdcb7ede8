"""Redis Cluster: ``redis+cluster://`` URLs and the cluster client."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import redis
from redis.retry import Retry

from .._errors import MASConnectionError
from .urls import redact_text, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from redis.cluster import RedisCluster

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
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.cluster import ClusterNode
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
    # Two cluster-level retries: a node that cannot be reached refreshes the
    # slot map, then the command is tried again; a timed-out one is not (see
    # _Cluster).
    kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 2)
    try:
        # Asks the nodes for the slot map at once.
        return _cluster_class()(startup_nodes=nodes, require_full_coverage=False, **kwargs)
    except RedisClusterException as exc:
        raise MASConnectionError(
            f"cannot reach Redis Cluster at {redact_url(url)}: {redact_text(str(exc), url)}"
        ) from exc


@functools.lru_cache(maxsize=None)
def _cluster_class() -> type:
    from redis.cluster import RedisCluster
    from redis.exceptions import ClusterDownError, SlotNotCoveredError

    class _Cluster(RedisCluster):
        # RedisCluster also retries TimeoutError, which sends again a command
        # that may have run. (Its node clients cannot tell a refused
        # connection from one lost mid-command: both stay retried here.)
        ERRORS_ALLOW_RETRY = (redis.ConnectionError, ClusterDownError, SlotNotCoveredError)

    return _Cluster


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (or one of its pipelines)."""
    from redis.cluster import ClusterPipeline, RedisCluster

    return isinstance(client, (RedisCluster, ClusterPipeline))

