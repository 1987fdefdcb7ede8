"""Redis Sentinel: ``redis+sentinel://`` URLs, and following the master on failover.

A ``rediss+sentinel://`` URL connects over TLS, with the same ``ssl_*``
settings, to the sentinels and to the master they name.

redis-py connects new connections to the master that Sentinel names, but it
leaves existing connections where they are: a subscriber stays on a demoted
master, and a demoted master keeps accepting PUBLISH for a while with no one
listening. So each process runs one watcher per monitored service that polls
Sentinel for the master's address and, when it changes, tells every agent and
service using it to drop its connections and subscribe again. A child made by
``fork()`` forgets its parent's watchers and starts its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .tls import check_only_tls_query, describe_tls_failure, split_query, tls_settings

log = logging.getLogger(__name__)

SCHEME = "redis+sentinel://"
#: The same over TLS.
TLS_SCHEME = "rediss+sentinel://"
#: Seconds between two questions to Sentinel about the master's address.
POLL_INTERVAL = 0.5

Address = Tuple[str, int]


class SentinelURL:
    """A parsed ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``.

    The password (and user) are those of the Redis servers, not of the
    sentinels. ``rediss+sentinel://`` is the same over TLS, its ``ssl_*``
    query parameters (see :func:`.tls.tls_settings`) in :attr:`tls`; a
    Sentinel URL takes no other query parameter.

    Raises:
        ValueError: the URL does not have that shape.
    """

    def __init__(self, url: str) -> None:
        if not is_sentinel_url(url):
            raise ValueError(f"not a {SCHEME} URL")
        check_only_tls_query(url, "Sentinel")
        #: The redis-py ``ssl_*`` arguments, for the sentinels and the master
        #: alike; None without TLS.
        self.tls: Optional[Dict[str, Any]] = tls_settings(url)
        rest = split_query(url)[0].partition("://")[2]
        netloc, _, path = rest.partition("/")
        self.username: Optional[str] = None
        self.password: Optional[str] = None
        if "@" in netloc:
            auth, _, netloc = netloc.rpartition("@")
            user, sep, password = auth.partition(":")
            self.username = unquote(user) or None
            self.password = unquote(password) if sep else None
        self.sentinels: List[Address] = []
        for part in netloc.split(","):
            host, sep, port = part.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"sentinel address {part!r} is not host:port")
            self.sentinels.append((host, int(port)))
        pieces = [p for p in path.split("/") if p]
        if not pieces or len(pieces) > 2:
            raise ValueError("the path must be /service_name or /service_name/db")
        self.service = pieces[0]
        self.db = int(pieces[1]) if len(pieces) == 2 and pieces[1].isdigit() else 0
        if len(pieces) == 2 and not pieces[1].isdigit():
            raise ValueError(f"database {pieces[1]!r} is not a number")

    @property
    def key(self) -> Tuple[Any, ...]:
        tls = None if self.tls is None else tuple(sorted(self.tls.items(), key=str))
        return tuple(self.sentinels), self.service, tls

    def sentinel_kwargs(self, **kwargs: Any) -> Dict[str, Any]:
        """``kwargs`` for the connections to the sentinels, with TLS if the URL has it."""
        if self.tls is not None:
            kwargs.update(ssl=True, **self.tls)
        return kwargs


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://`` URLs."""
    return url.startswith((SCHEME, TLS_SCHEME))


class SentinelMasterClient(redis.Redis):
    """A client of the master that Sentinel names; ``close()`` closes all its connections.

    redis-py's ``close()`` leaves the connections to the sentinels open
    (until the garbage collector finds them); this one closes them too.
    """

    def close(self) -> None:
        """Close the client, its pool, and its connections to the sentinels."""
        try:
            super().close()
        finally:
            manager = getattr(getattr(self, "connection_pool", None), "sentinel_manager", None)
            if manager is not None:
                close_sentinel(manager)


class _TLSSentinel(Sentinel):
    """A Sentinel manager that says why no sentinel answered when TLS is the reason.

    redis-py keeps only the class of each sentinel's error; on failure, one
    sentinel is asked once more, for the words.
    """

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as exc:
            hint = self._tls_failure()
            if hint is None:
                raise
            raise MasterNotFoundError(
                f"No master found for {service_name!r}: the sentinels: {hint}"
            ) from exc

    def _tls_failure(self) -> Optional[str]:
        if not self.sentinels:
            return None
        kwargs = dict(self.sentinels[0].connection_pool.connection_kwargs)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        connection = self.sentinels[0].connection_pool.connection_class(**kwargs)
        try:
            connection.connect()
        except (redis.RedisError, OSError) as exc:
            return describe_tls_failure(exc, connection)
        finally:
            connection.disconnect()
        return None


def close_sentinel(sentinel: Sentinel) -> None:
    """Close every connection ``sentinel`` holds to the sentinels (not those to the master)."""
    for client in sentinel.sentinels:
        try:
            client.close()
            client.connection_pool.disconnect()
        except Exception:  # pragma: no cover - closing is best effort
            log.debug("Sentinel: error closing a sentinel connection", exc_info=True)


def make_sentinel_client(
    url: str, max_connections: int, pool_class: Optional[type] = None, **connection_kwargs: Any
) -> redis.Redis:
    """A client whose connections go to the master that Sentinel names now.

    Its pool is redis-py's Sentinel pool: it does not block when exhausted, so
    it is sized generously (``max_connections``) and grows only with use.
    Closing the client closes its connections to the sentinels too.
    """
    parsed = SentinelURL(url)
    timeout = connection_kwargs.get("socket_timeout") or 1.0
    sentinel = (Sentinel if parsed.tls is None else _TLSSentinel)(
        parsed.sentinels,
        sentinel_kwargs=parsed.sentinel_kwargs(
            socket_timeout=min(timeout, 1.0), socket_connect_timeout=1.0
        ),
    )
    if pool_class is not None:
        connection_kwargs["connection_pool_class"] = pool_class
    if parsed.tls is not None:
        connection_kwargs.update(ssl=True, **parsed.tls)
    return sentinel.master_for(
        parsed.service,
        redis_class=SentinelMasterClient,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        max_connections=max_connections,
        **connection_kwargs,
    )


class _Watcher:
    """One thread that polls Sentinel for a service's master, shared in a process."""

    def __init__(self, parsed: SentinelURL) -> None:
        self.parsed = parsed
        self.callbacks: List[Callable[[Address], None]] = []
        self.stop = threading.Event()
        self.sentinel = Sentinel(
            parsed.sentinels,
            sentinel_kwargs=parsed.sentinel_kwargs(socket_timeout=1.0, socket_connect_timeout=1.0),
        )
        self.master: Optional[Address] = self._ask()
        self.thread = threading.Thread(
            target=self._run, name=f"mas-sentinel[{parsed.service}]", daemon=True
        )

    def _ask(self) -> Optional[Address]:
        try:
            host, port = self.sentinel.discover_master(self.parsed.service)
            return host, int(port)
        except (redis.RedisError, OSError):
            return None

    def _run(self) -> None:
        while not self.stop.wait(POLL_INTERVAL):
            master = self._ask()
            if master is None or master == self.master:
                continue
            old, self.master = self.master, master
            log.warning(
                "Sentinel: master of %s moved from %s to %s; moving every connection",
                self.parsed.service, _fmt(old), _fmt(master),
            )
            with _lock:
                callbacks = list(self.callbacks)
            for callback in callbacks:
                try:
                    callback(master)
                except Exception:
                    log.exception("Sentinel: a failover callback failed")

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(2 * POLL_INTERVAL + 2.0)
        close_sentinel(self.sentinel)


_lock = threading.Lock()
_watchers: Dict[Tuple[Any, ...], _Watcher] = {}


def follow_master(url: str, on_change: Callable[[Address], None]) -> Callable[[], None]:
    """Call ``on_change(new_address)`` (in the watcher thread) after each failover.

    Returns:
        A function that stops following; the watcher thread ends with the
        last follower.
    """
    parsed = SentinelURL(url)
    with _lock:
        watcher = _watchers.get(parsed.key)
        if watcher is None:
            watcher = _watchers[parsed.key] = _Watcher(parsed)
            watcher.thread.start()
        watcher.callbacks.append(on_change)

    def unfollow() -> None:
        with _lock:
            if on_change in watcher.callbacks:
                watcher.callbacks.remove(on_change)
            last = not watcher.callbacks and _watchers.get(parsed.key) is watcher
            if last:
                del _watchers[parsed.key]
        if last:
            watcher.close()

    return unfollow


def forget_watchers_after_fork() -> None:
    # Runs in the child: the parent's watcher threads do not exist here and
    # their lock may be held for ever. The child starts watchers of its own
    # when its agents follow a master. The parent's watchers are forgotten,
    # their connections never used: the garbage collector closes the child's
    # copies of their sockets, which redis-py does not shut down in a process
    # other than the one that opened them, so the parent's stay up.
    global _lock, _watchers
    _lock = threading.Lock()
    _watchers = {}



def _fmt(address: Optional[Address]) -> str:
    return "unknown" if address is None else f"{address[0]}:{address[1]}"
