"""A connection kept out of a client's pool, for batches of commands written at once.

The sends of an agent's run go this way (see :mod:`mas_sync._routes`):
taking a connection from redis-py 8's pool and giving it back costs about as
much as the rest of a send, and redis-py's pipeline and packer add as much
again for commands whose replies need no callback.
"""

from __future__ import annotations

import threading
from typing import Any, List, Sequence, Tuple

import redis

from .connection import _GET_CONNECTION_ARGS


def _pack(commands: Sequence[Tuple[Any, ...]]) -> bytes:
    """``commands`` in the Redis protocol, as one buffer: their arguments are str or bytes."""
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _run_on(connection: Any, commands: Sequence[Tuple[Any, ...]]) -> List[Any]:
    try:
        connection.send_packed_command([_pack(commands)])
        replies: List[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # its replies may be half read
        raise


class HeldConnection:
    """Runs batches of commands on one connection kept out of a client's pool.

    What a pipeline does, without its per-command cost, nor the pool's per
    call: the arguments are str (sent as UTF-8) or bytes, the replies come
    raw (no response callbacks), a command Redis refuses has its
    ``redis.ResponseError`` in its place (the others ran), and a lost
    connection raises redis-py's error (what was sent may have run). Before each batch the connection is checked as the pool checks
    those it hands out (one with data waiting, or closed, is made anew);
    when the client has moved to a new pool (see :func:`retire_connections`)
    it goes back to its old one, which closes it, and the next is taken from
    the new. Thread-safe: a caller that finds it busy uses a pooled
    connection for its batch. Not for a cluster client (see
    :func:`~mas_sync._redis.is_cluster`).

    Args:
        client: Whose pool the connection comes from; :func:`close_client`
            closes it with the pool's others.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._pool: Any = None
        self._connection: Any = None

    def run(self, commands: Sequence[Tuple[Any, ...]]) -> List[Any]:
        """Send ``commands`` in one write; their replies, in order."""
        if not self._lock.acquire(blocking=False):
            pool = self._client.connection_pool
            connection = pool.get_connection(*_GET_CONNECTION_ARGS)
            try:
                return _run_on(connection, commands)
            finally:
                pool.release(connection)
        try:
            return _run_on(self._ready(), commands)
        finally:
            self._lock.release()

    def _ready(self) -> Any:
        pool = self._client.connection_pool
        connection = self._connection
        if connection is not None and self._pool is pool:
            if getattr(connection, "_sock", None) is None:
                connection.connect()
                return connection
            try:
                if not connection.can_read():
                    return connection
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            connection.disconnect()  # closed by Redis, or a stray reply waits
            connection.connect()
            return connection
        if connection is not None:
            self._connection = None
            self._pool.release(connection)
        self._connection = pool.get_connection(*_GET_CONNECTION_ARGS)
        self._pool = pool
        return self._connection
