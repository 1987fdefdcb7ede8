"""Redis clients as mas_sync agents and services use them: pools, deadlines, retiring."""

from __future__ import annotations

import inspect
import queue
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import quote_plus, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .._errors import MASConnectionError
from .cluster import is_cluster, is_cluster_url, make_cluster_client
from .sentinel import is_sentinel_url, make_sentinel_client
from .tls import describe_tls_failure, split_query, tls_settings
from .urls import check_redis_url, redact_text, redact_url

#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for the answer to one command (redis-py's default too).
COMMAND_TIMEOUT = 5.0
#: Seconds a thread waits for a free connection when the pool is exhausted
#: (a call with a deadline waits no longer than its deadline).
POOL_TIMEOUT = 20.0


class NotConnected(redis.ConnectionError):
    """No connection to Redis could be had: nothing was sent, so trying again is safe.

    Raised for a refused or timed-out connect, a failed handshake, an
    exhausted pool, a retired pool, and a connect deadline that has passed;
    never once a command may have reached Redis.
    """


# -- deadlines ------------------------------------------------------------------
#
# A call that must end by a given time (request(timeout=...), a retry window)
# sets them for its thread; the pools and connections below read them, so that
# waiting for a pooled connection, connecting and reading the answer never
# outlast the call.

_local = threading.local()


class deadlines:  # noqa: N801 - used as a function: ``with deadlines(...):``
    """Bound the Redis I/O of the calling thread, in ``time.monotonic()`` time.

    A context manager (a class rather than a generator: every call to Redis
    of a public method goes through one).

    Args:
        connect_by: No pool wait or connect attempt (TCP connect and
            handshake) goes past it; past it they raise :class:`NotConnected`.
        answer_by: No read of an answer goes past it (a read that runs out
            raises ``redis.TimeoutError``); None keeps the command timeout.
    """

    __slots__ = ("_bounds", "_saved")

    def __init__(self, connect_by: Optional[float], answer_by: Optional[float] = None) -> None:
        self._bounds = (connect_by, answer_by)

    def __enter__(self) -> None:
        self._saved = getattr(_local, "bounds", None)
        _local.bounds = self._bounds

    def __exit__(self, *exc_info: Any) -> None:
        _local.bounds = self._saved


def _bounds() -> Tuple[Optional[float], Optional[float]]:
    return getattr(_local, "bounds", None) or (None, None)


#: The servers, as ``(host, port)``, that answered HELLO with a version
#: before 7.2, which has no CLIENT SETINFO: redis-py's two SETINFO commands
#: (round trips that end in an error) are no longer sent to them.
_no_setinfo: Set[Tuple[Any, Any]] = set()


#: The servers, as ``(host, port)``, that do not know CLIENT MAINT_NOTIFICATIONS
#: (redis-py 7 and later send it on each connection when RESP3 is on, in its
#: "auto" mode, and let a refusal pass): it is no longer sent to them.
_no_maint_notifications: Set[Tuple[Any, Any]] = set()


def _unknown_command(error: BaseException) -> bool:
    """True for Redis refusing a command or subcommand it does not know."""
    text = str(error).lower()
    return "unknown subcommand" in text or "unknown command" in text


def _before_setinfo(handshake: Any) -> bool:
    """True when a HELLO reply names a Redis version before 7.2 (no CLIENT SETINFO)."""
    if not isinstance(handshake, dict):
        return False
    version = handshake.get("version", handshake.get(b"version"))
    if isinstance(version, bytes):
        version = version.decode("ascii", "replace")
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (7, 2)


class _GuardedConnection:
    """Mixed into redis-py's connection classes (see :func:`_guarded`).

    Connect failures become :class:`NotConnected`; a connection of a retired
    pool never connects again; the thread's deadlines bound connects and reads.
    A server that lacks CLIENT SETINFO (Redis before 7.2, as its HELLO reply
    says, or it refused the command) or CLIENT MAINT_NOTIFICATIONS (it
    refused the command) is not sent them again by any connection of the
    process, and under RESP3 HELLO names the connection: round trips saved
    on each connection, which count when a process starts many agents.
    """

    _mas_pool: Any = None
    #: While the connection is set up: the errors Redis answered with so far
    #: (redis-py lets a refused CLIENT SETINFO or MAINT_NOTIFICATIONS pass).
    _mas_refused: Optional[List[BaseException]] = None

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 7.1 and later (driver_info); older releases never get here
        # with a driver_info to drop.
        address = (getattr(self, "host", None), getattr(self, "port", None))
        if address in _no_setinfo and getattr(self, "driver_info", None) is not None:
            self.driver_info = None
        name = self._mas_name_in_hello()
        refused: List[BaseException] = []
        self._mas_refused = refused
        try:
            super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._mas_refused = None
            if name is not None:
                del self.send_command
                self.client_name = name
        if getattr(self, "driver_info", None) is not None and (
            _before_setinfo(getattr(self, "handshake_metadata", None))
            or any(_unknown_command(e) and "setinfo" in str(e).lower() for e in refused)
        ):
            _no_setinfo.add(address)

    def _mas_name_in_hello(self) -> Optional[str]:
        """Have HELLO set the connection's name (``HELLO 3 SETNAME``): one round trip less.

        Only where redis-py sends a bare ``HELLO 3``: RESP3, no credentials.
        Returns the name, which the caller puts back once connected.
        """
        name = getattr(self, "client_name", None)
        if (not name or getattr(self, "protocol", None) not in (3, "3")
                or getattr(self, "credential_provider", None) is not None
                or getattr(self, "username", None) or getattr(self, "password", None)):
            return None
        send = self.send_command  # type: ignore[attr-defined]

        def send_command(*args: Any, **kwargs: Any) -> Any:
            if args and args[0] == "HELLO" and len(args) == 2:
                args = (*args, "SETNAME", name)
            return send(*args, **kwargs)

        self.send_command = send_command
        self.client_name = None  # redis-py sends no CLIENT SETNAME then
        return name

    def _enable_maintenance_notifications(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 7 and later.
        enable = super()._enable_maintenance_notifications  # type: ignore[misc]
        config = kwargs.get("maint_notifications_config", args[0] if args else None)
        if getattr(config, "enabled", None) != "auto":
            return enable(*args, **kwargs)
        address = (getattr(self, "host", None), getattr(self, "port", None))
        if address in _no_maint_notifications:
            return None
        # "auto" lets a refusal pass without a trace: watch the answers.
        refused = self._mas_refused
        before = len(refused) if refused is not None else 0
        try:
            return enable(*args, **kwargs)
        finally:
            if refused is not None and len(refused) > before and _unknown_command(refused[before]):
                _no_maint_notifications.add(address)

    def connect(self) -> None:
        self._mas_connect(super().connect)  # type: ignore[misc]

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 6 and later reconnect through this one inside send_command.
        self._mas_connect(lambda: super(_GuardedConnection, self).connect_check_health(*args, **kwargs))  # type: ignore[misc]

    def _mas_connect(self, connect: Any) -> None:
        if getattr(self, "_sock", None) is not None:
            return connect()
        pool = self._mas_pool
        if pool is not None and pool.mas_retired:
            raise NotConnected("the connection pool was closed")
        bounds = _bounds()
        connect_by, answer_by = bounds
        saved = None
        if connect_by is not None:
            left = connect_by - time.monotonic()
            if left <= 0:
                raise NotConnected("no time left to connect")
            # The TCP connect, then the handshake's reads (see read_response),
            # end by connect_by. socket_timeout itself is left alone: redis-py's
            # parsers keep a copy of it for the life of the connection.
            saved = getattr(self, "socket_connect_timeout", None)
            self.socket_connect_timeout = min(saved or left, left)
            _local.bounds = (connect_by, connect_by if answer_by is None else min(answer_by, connect_by))
        try:
            connect()
        except (NotConnected, redis.AuthenticationError):
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            message = str(exc)
            tls_failure = describe_tls_failure(exc, self)
            if tls_failure and tls_failure not in message:
                message = f"{tls_failure} ({message})"
            raise NotConnected(message) from exc
        finally:
            if connect_by is not None:
                self.socket_connect_timeout = saved
                _local.bounds = bounds

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        refused = self._mas_refused
        if refused is None:
            return self._mas_read(*args, **kwargs)
        try:
            return self._mas_read(*args, **kwargs)
        except redis.ResponseError as exc:
            refused.append(exc)
            raise

    def _mas_read(self, *args: Any, **kwargs: Any) -> Any:
        _, answer_by = _bounds()
        sock = getattr(self, "_sock", None)
        if answer_by is None or sock is None:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        left = answer_by - time.monotonic()
        sock.settimeout(max(0.001, min(left, self.socket_timeout or left)))  # type: ignore[attr-defined]
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        finally:
            sock = getattr(self, "_sock", None)
            if sock is not None:
                sock.settimeout(self.socket_timeout)  # type: ignore[attr-defined]


_guarded_classes: Dict[type, type] = {}


def _guarded(connection_class: type) -> type:
    if issubclass(connection_class, _GuardedConnection):
        return connection_class
    guarded = _guarded_classes.get(connection_class)
    if guarded is None:
        guarded = _guarded_classes[connection_class] = type(
            f"Guarded{connection_class.__name__}", (_GuardedConnection, connection_class), {}
        )
    return guarded


class _RetirablePool:
    """Mixed into redis-py's pools: :meth:`retire` instead of disconnecting in use.

    redis-py does not support disconnecting a connection that another thread
    is using (redis/redis-py#2967). A retired pool hands out no connection;
    its idle connections are closed at once, the others when they come back.
    """

    mas_retired = False
    _mas_timeout: Optional[float] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["connection_class"] = _guarded(
            kwargs.get("connection_class") or self._mas_default_connection(kwargs)
        )
        self._mas_args = (args, kwargs)  # kwargs is this call's own dict
        self._mas_retire_lock = threading.Lock()
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]

    @property  # type: ignore[override]
    def timeout(self) -> Optional[float]:
        # BlockingConnectionPool's wait for a free connection.
        connect_by, _ = _bounds()
        if connect_by is None:
            return self._mas_timeout
        return max(0.0, min(self._mas_timeout or POOL_TIMEOUT, connect_by - time.monotonic()))

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._mas_timeout = value

    @staticmethod
    def _mas_default_connection(kwargs: Dict[str, Any]) -> type:
        return redis.Connection

    def make_connection(self) -> Any:
        connection = super().make_connection()  # type: ignore[misc]
        connection._mas_pool = self
        return connection

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.mas_retired:
            raise NotConnected("the connection pool was closed")
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[misc]
        except (NotConnected, redis.AuthenticationError):
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Nothing was sent: no free connection in time, or none ready.
            raise NotConnected(str(exc)) from exc

    def release(self, connection: Any) -> None:
        super().release(connection)  # type: ignore[misc]
        with self._mas_retire_lock:
            retired = self.mas_retired
        if retired:
            self._mas_disconnect_idle()

    def retire(self) -> None:
        """Refuse new work; close the idle connections now, the others when released."""
        with self._mas_retire_lock:
            self.mas_retired = True
        self._mas_disconnect_idle()

    def _mas_disconnect_idle(self) -> None:
        # disconnect(inuse_connections=False) does this, but not on every
        # redis-py release's BlockingConnectionPool.
        queue = getattr(self, "pool", None)
        if queue is not None:  # BlockingConnectionPool: a queue of free ones
            with queue.mutex:
                idle = [c for c in queue.queue if c is not None]
        else:
            with self._lock:
                idle = list(self._available_connections)
        for connection in idle:
            connection.disconnect()

    def _mas_has_open(self) -> bool:
        connections = getattr(self, "_connections", None)
        if connections is None:  # ConnectionPool keeps two collections instead
            connections = [*self._available_connections, *self._in_use_connections]
        return any(getattr(c, "_sock", None) is not None for c in connections)

    def renewed(self) -> Any:
        """A new, empty pool made like this one."""
        args, kwargs = self._mas_args
        return type(self)(*args, **kwargs)


class _FreeConnections(queue.LifoQueue):  # type: ignore[type-arg]
    """The free connections of a :class:`_BlockingPool`, with one Condition instead of three.

    Only ``get()`` ever waits on it: the pool puts back, with
    ``put_nowait()``, at most the connections it took, so the queue is never
    full when something is put, and nothing ever joins it. One Condition
    (and its deque) serves for the three of ``queue.Queue``, which saves
    some 1.5 KiB per pool: an agent has two.
    """

    def __init__(self, maxsize: int = 0) -> None:  # pylint: disable=super-init-not-called
        self.maxsize = maxsize
        self._init(maxsize)
        self.mutex = threading.Lock()
        self.not_empty = self.not_full = self.all_tasks_done = threading.Condition(self.mutex)
        self.unfinished_tasks = 0
        self.is_shutdown = False  # Queue.shutdown(), Python 3.13+


class _BlockingPool(_RetirablePool, redis.BlockingConnectionPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("queue_class", _FreeConnections)
        super().__init__(*args, **kwargs)


class _SentinelPool(_RetirablePool, SentinelConnectionPool):
    @staticmethod
    def _mas_default_connection(kwargs: Dict[str, Any]) -> type:
        return SentinelManagedSSLConnection if kwargs.get("ssl") else SentinelManagedConnection


def retire_connections(client: Any) -> None:
    """Move ``client`` to a new pool; the old one's connections close as they come back.

    Used when the connections are known, or likely, to be dead (the
    subscription was lost, Sentinel moved the master). Calls in flight finish
    (or fail) on their connection; no connection is pulled from under them.
    A cluster client follows its nodes by itself and is left alone.
    """
    if is_cluster(client):
        return
    with _retire_lock:
        old = client.connection_pool
        client.connection_pool = old.renewed()
        retired = client.__dict__.setdefault("_mas_retired_pools", [])
        retired[:] = [p for p in retired if p._mas_has_open()]
        retired.append(old)
    old.retire()


_retire_lock = threading.Lock()


# -- what every client of the process shares ------------------------------------
#
# Built once instead of per client: an agent makes two clients, and a process
# may run a thousand agents.

try:  # redis-py 7.1 and later; before, nothing is looked up per connection
    from redis.driver_info import DriverInfo
except ImportError:  # pragma: no cover - older redis-py
    _DRIVER_INFO: Any = None
else:
    # What CLIENT SETINFO reports, as redis-py's default; made once, for
    # redis-py would otherwise read its version from the package metadata
    # (about a millisecond) for every connection it makes.
    _DRIVER_INFO = DriverInfo()

# Each redis-py client, pool and connection would make a dispatcher of its
# own (six per agent); its listeners keep state only for a streaming
# credential provider, which mas_sync never gives.
if "event_dispatcher" in inspect.signature(redis.Redis.__init__).parameters:
    from redis.event import EventDispatcher

    _EVENT_DISPATCHER: Any = EventDispatcher()
else:  # pragma: no cover - redis-py before 5.1
    _EVENT_DISPATCHER = None

try:  # redis-py 7 and later
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - older redis-py
    _MAINT_NOTIFICATIONS_OFF: Any = None
else:
    # For a server known to refuse them: the pool then builds no handler.
    _MAINT_NOTIFICATIONS_OFF = MaintNotificationsConfig(enabled=False)


def _server(url: str) -> Tuple[Any, Any]:
    """``(host, port)`` of a plain URL, as its connections name them."""
    parts = urlsplit(url)
    try:
        return parts.hostname, parts.port or 6379
    except ValueError:  # a bad port: from_url reports it
        return None, None


_callbacks: Dict[Tuple[Any, ...], Any] = {}


def _share_callbacks(client: redis.Redis) -> None:
    """Give ``client`` the reply callbacks of the clients made like it.

    redis-py builds a table of some 300 callbacks per client (about 13 KiB);
    mas_sync never changes them (no ``set_response_callback``), so the
    clients of one protocol share one table.
    """
    kwargs = client.connection_pool.connection_kwargs
    key = (kwargs.get("protocol"), kwargs.get("legacy_responses", True))
    client.response_callbacks = _callbacks.setdefault(key, client.response_callbacks)


def renew_lock_after_fork() -> None:
    """Make the retiring lock anew, in a child after ``fork()`` (see :mod:`mas_sync._process`)."""
    global _retire_lock
    _retire_lock = threading.Lock()


def make_client(
    url: str,
    max_connections: int,
    *,
    decode: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    client_name: Optional[str] = None,
    read_size: Optional[int] = None,
) -> redis.Redis:
    """A client with its own blocking pool of at most ``max_connections``.

    Threads that find the pool exhausted wait for a connection (up to
    ``POOL_TIMEOUT``, or the thread's :func:`deadlines`) instead of failing at
    once. redis-py itself never sends a command twice: a failure to connect
    raises :class:`NotConnected`, which the caller may retry; any other
    failure (a timed-out answer, a connection lost mid-command) may have
    left the command run, and is for the caller to report. A pooled
    connection that died while idle (a Redis restart) is replaced before
    use. ``client_name`` names the connections in ``CLIENT LIST``.
    ``read_size`` is the most each read from the socket takes (redis-py's
    default when None, 32 KiB in redis-py 8): a thread blocked in a read
    holds a buffer of that size. The caller owns the client and must close
    it with :func:`close_client`.

    Connections speak RESP2, as redis-py before 8 does by default, unless
    the URL asks for ``protocol=3``: under RESP3, redis-py 8 takes each
    pub/sub message through its push path, and a received message costs
    the agent about a fifth more CPU.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """
    kwargs: Any = dict(
        max_connections=max_connections,
        timeout=POOL_TIMEOUT,
        socket_connect_timeout=min(CONNECT_TIMEOUT, timeout),
        socket_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode,
        protocol=2,
    )
    if client_name is not None:
        kwargs["client_name"] = client_name
    if read_size is not None:
        kwargs["socket_read_size"] = read_size
    check_redis_url(url)
    plain = not (is_sentinel_url(url) or is_cluster_url(url))
    if plain and _DRIVER_INFO is not None:
        kwargs["driver_info"] = _DRIVER_INFO
    if (plain and _MAINT_NOTIFICATIONS_OFF is not None
            and _server(url) in _no_maint_notifications):
        kwargs["maint_notifications_config"] = _MAINT_NOTIFICATIONS_OFF
    shared: Dict[str, Any] = {}
    if plain and _EVENT_DISPATCHER is not None:
        kwargs["event_dispatcher"] = shared["event_dispatcher"] = _EVENT_DISPATCHER
    try:
        tls = tls_settings(url, check_files=True)
        if is_sentinel_url(url):
            del kwargs["timeout"]  # redis-py's Sentinel pool does not block
            kwargs["max_connections"] = max(max_connections, 64)
            return make_sentinel_client(url, pool_class=_SentinelPool, **kwargs)
        if is_cluster_url(url):
            del kwargs["timeout"]
            kwargs["max_connections"] = max(max_connections, 64)
            return make_cluster_client(url, **kwargs)
        if tls is not None:
            # The ssl_* parameters as read by tls_settings, not as this
            # redis-py release would read them from the URL.
            base, pairs = split_query(url)
            rest = "&".join(f"{quote_plus(n)}={quote_plus(v)}" for n, v in pairs
                            if not n.startswith("ssl_"))
            kwargs.update(tls)
            pool = _BlockingPool.from_url(f"{base}?{rest}" if rest else base, **kwargs)
        else:
            pool = _BlockingPool.from_url(url, **kwargs)
    except ValueError as exc:
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: {redact_text(str(exc), url)}"
        ) from None
    client = redis.Redis(connection_pool=pool, **shared)
    _share_callbacks(client)
    return client


def publish(client: Any, channel: str, data: Any) -> Any:
    """PUBLISH, or SPUBLISH (sharded pub/sub) on a cluster client or pipeline."""
    if is_cluster(client):
        return client.spublish(channel, data)
    return client.publish(channel, data)


#: What a pool's get_connection() takes: redis-py 6 deprecated its command name.
_GET_CONNECTION_ARGS: Tuple[str, ...] = (
    () if int(redis.__version__.split(".")[0]) >= 6 else ("PUBLISH",)
)


def close_client(client: Any) -> None:
    """Close ``client`` and every connection of its pool(s), those in use too.

    Its pool is retired first, so that a connection closed under a call in
    flight is never opened again: the call fails instead.
    """
    client.close()
    if is_cluster(client):
        client.disconnect_connection_pools()
        return
    with _retire_lock:
        pools = [client.connection_pool, *client.__dict__.get("_mas_retired_pools", ())]
    for pool in pools:
        if isinstance(pool, _RetirablePool):
            pool.retire()
        pool.disconnect()


def ping(client: redis.Redis, url: str) -> None:
    """Check that Redis answers.

    Where the connections are named (``client_name``), connecting is the
    check: the handshake's CLIENT SETNAME is a command Redis must answer,
    so one connection of the pool is opened and no PING is sent.

    Raises:
        MASConnectionError: it does not, with the (redacted) URL in the message.
    """
    try:
        pool = getattr(client, "connection_pool", None)  # none on a cluster client
        if pool is not None and pool.connection_kwargs.get("client_name"):
            pool.release(pool.get_connection(*_GET_CONNECTION_ARGS))
        else:
            client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise MASConnectionError(
            f"cannot reach Redis at {redact_url(url)}: {redact_text(str(exc), url)}"
        ) from exc
    except redis.RedisError as exc:
        raise MASConnectionError(
            f"Redis at {redact_url(url)} refused PING: {redact_text(str(exc), url)}"
        ) from exc
