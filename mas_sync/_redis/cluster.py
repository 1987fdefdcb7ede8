"""Redis Cluster: ``redis+cluster://`` URLs and the cluster client.

A ``rediss+cluster://`` URL connects to every node over TLS, with the URL's
``ssl_*`` settings.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import redis
from redis.retry import Retry

from .._errors import MASConnectionError
from .tls import check_only_tls_query, describe_tls_failure, split_query, tls_settings
from .urls import redact_text, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from redis.cluster import RedisCluster

CLUSTER_SCHEME = "redis+cluster://"
#: The same over TLS.
CLUSTER_TLS_SCHEME = "rediss+cluster://"
#: Sharded pub/sub in cluster mode reconnects and follows slot migrations
#: only from this redis-py release on.
CLUSTER_MIN_REDIS_PY = (8, 1, 0)


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://host:port[,host:port...]`` URLs (and ``rediss+cluster://``)."""
    return url.startswith((CLUSTER_SCHEME, CLUSTER_TLS_SCHEME))


def check_cluster_support() -> None:
    """Refuse cluster mode where the installed redis-py cannot run it.

    Raises:
        ValueError: redis-py is older than 8.1.0 (on Python 3.9, whose newest
            redis-py is 7.0, that is always so).
    """
    version = tuple(int(p) for p in re.findall(r"\d+", redis.__version__)[:3])
    if version < CLUSTER_MIN_REDIS_PY:
        raise ValueError(
            "cluster mode needs redis-py 8.1.0 or newer (sharded pub/sub that"
            f" reconnects), and redis-py {redis.__version__} is installed"
        )


def make_cluster_client(url: str, **kwargs: Any) -> "RedisCluster":
    """A Redis Cluster client from ``redis+cluster://[[user]:password@]host:port[,...]``.

    ``rediss+cluster://`` connects to every node over TLS; the URL takes no
    query parameter but the ``ssl_*`` ones.

    Raises:
        ValueError: a malformed URL, or the installed redis-py is older than 8.1.0.
        MASConnectionError: no node answers.
    """
    check_cluster_support()
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.cluster import ClusterNode
    from redis.exceptions import RedisClusterException

    check_only_tls_query(url, "Cluster")
    tls = tls_settings(url)
    if tls is not None:
        kwargs.update(ssl=True, **tls)
    netloc = split_query(url)[0].partition("://")[2].split("/", 1)[0]
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
        tls_failure = describe_tls_failure(exc) if tls is not None else None
        raise MASConnectionError(
            f"cannot reach Redis Cluster at {redact_url(url)}: "
            + (f"{tls_failure} " if tls_failure else "")
            + redact_text(str(exc), url)
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

