"""Removed at merge: the old home of :mod:`mas_sync._redis.connection`, for the agent core."""

from ._redis import (
    COMMAND_TIMEOUT,
    NotConnected,
    check_redis_url,
    close_client,
    deadlines,
    is_cluster,
    make_client,
    ping,
    publish,
    redact_text,
    redact_url,
    retire_connections,
)

__all__ = ["COMMAND_TIMEOUT", "NotConnected", "check_redis_url", "close_client", "deadlines", "is_cluster", "make_client", "ping", "publish", "redact_text", "redact_url", "retire_connections"]
