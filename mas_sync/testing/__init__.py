"""Helpers for testing code that uses mas_sync.

- :class:`RedisServer` starts a private ``redis-server`` on a free loopback
  port (from ``$MAS_SYNC_REDIS_SERVER``, ``PATH``, or the ``embedded`` extra).
- :class:`SentinelGroup` starts a master, replicas and sentinels, for
  failover tests; :class:`LocalCluster` starts a Redis Cluster.
- :class:`TLSCertificates` makes a CA, a server and a client certificate with
  ``openssl``, for a :class:`RedisServer` (or a group, or a cluster) that
  serves TLS; :func:`tls_unsupported` says why TLS cannot be tested here.
- :func:`local_redis` gives a Redis URL: the one passed, or a private server's.
- :func:`wait_until` waits for a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar

from ._server import RedisServer, find_redis_server, free_port
from ._tls import TLSCertificates, find_openssl, tls_unsupported
from ._topology import LocalCluster, SentinelGroup, redis_version

T = TypeVar("T")

__all__ = [
    "LocalCluster",
    "RedisServer",
    "SentinelGroup",
    "TLSCertificates",
    "find_openssl",
    "find_redis_server",
    "free_port",
    "local_redis",
    "redis_version",
    "tls_unsupported",
    "wait_until",
]


def wait_until(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01, message: str = ""
) -> T:
    """Call ``predicate`` until it returns something true, and return that.

    Args:
        predicate: The condition to wait for.
        timeout: Seconds to wait at most.
        interval: Seconds between two calls.
        message: What is awaited, for the error.

    Raises:
        TimeoutError: ``predicate`` stayed false for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"not true within {timeout} s: {message or predicate!r}")
        pause.wait(min(interval, remaining))


@contextlib.contextmanager
def local_redis(url: Optional[str] = None) -> Iterator[str]:
    """Yield ``url`` if given, else the URL of a private :class:`RedisServer`.

    The private server is stopped when the block ends. Scripts and examples
    use it to run against a given Redis or, with none, on their own.
    """
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url
