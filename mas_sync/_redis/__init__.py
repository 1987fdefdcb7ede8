"""Redis clients: URLs, plain, Sentinel and Cluster clients, their pools, and their errors.

Callers import from here (``from ._redis import make_client, redact_url``);
each concept lives in a module of its own:

- :mod:`.urls`: the URL schemes mas_sync takes, and redacting their secrets;
- :mod:`.connection`: client construction, pools, deadlines and retiring;
- :mod:`.sentinel`: ``redis+sentinel://`` URLs and following the master;
- :mod:`.cluster`: ``redis+cluster://`` URLs and the cluster client;
- :mod:`.tls`: the ``ssl_*`` settings of ``rediss://``, ``rediss+sentinel://``
  and ``rediss+cluster://`` URLs, and naming a failed TLS handshake;
- :mod:`.errors`: the Redis errors mas_sync tells apart.
"""

from .cluster import CLUSTER_MIN_REDIS_PY, CLUSTER_SCHEME, is_cluster, is_cluster_url
from .connection import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    POOL_TIMEOUT,
    NotConnected,
    close_client,
    deadlines,
    make_client,
    ping,
    publish,
    retire_connections,
)
from .errors import ANY_REDIS_ERROR, REDIS_ERRORS, DeadConnection
from .held import HeldConnection
from .sentinel import SentinelURL, follow_master, is_sentinel_url
from .urls import REDIS_URL_SCHEMES, check_redis_url, redact_text, redact_url

__all__ = [
    "ANY_REDIS_ERROR",
    "CLUSTER_MIN_REDIS_PY",
    "CLUSTER_SCHEME",
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DeadConnection",
    "HeldConnection",
    "NotConnected",
    "POOL_TIMEOUT",
    "REDIS_ERRORS",
    "REDIS_URL_SCHEMES",
    "SentinelURL",
    "check_redis_url",
    "close_client",
    "deadlines",
    "follow_master",
    "is_cluster",
    "is_cluster_url",
    "is_sentinel_url",
    "make_client",
    "ping",
    "publish",
    "redact_text",
    "redact_url",
    "retire_connections",
]
