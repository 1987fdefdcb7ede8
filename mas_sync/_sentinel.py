"""Removed at merge: the old home of :mod:`mas_sync._redis.sentinel`, for the agent core."""

from ._redis import follow_master, is_sentinel_url

__all__ = ["follow_master", "is_sentinel_url"]
