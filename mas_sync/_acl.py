"""Least-privilege Redis users (ACL) for agents and for the registry service.

:func:`acl_rules` gives the ``ACL SETUSER`` line of one agent's user,
:func:`service_acl_rules` that of :class:`~mas_sync.MASService`; every key and
channel pattern in them is built from :mod:`._wire`. They need Redis 7 or
later: read-only key patterns (``%R~``) and selectors (``(...)``).

An agent's user may, on its own keys only, do what an agent does (register,
beat, keep its state, read its stream and dead letters, record the ids,
nonces and rate limits it sees); read every registration (discovery); write
every shared circuit breaker; publish on every agent's channel and on
``mas.system``; add entries to every agent's stream (``XADD``, and ``TYPE``
to learn that it is one) without reading it. It may subscribe only to its
own channel and its own wake-up channels. The two grants that reach other
agents' channels and streams sit in selectors of their own, so that the
other commands it may run (``SUBSCRIBE``, ``XACK``, ``XREADGROUP``, ...)
still apply to its own channel and keys alone.
"""

from __future__ import annotations

import hashlib
import re
from typing import List, Optional, Tuple

from . import _wire

#: Connecting and naming a connection; Cluster clients also read the slots
#: and the command table.
_CONNECTION = (
    "ping", "hello", "auth", "select", "client|setname", "client|getname", "client|id",
    "command", "cluster|slots", "cluster|shards",
)
#: Lua: the registry's scripts (registration, heartbeat, discovery), the
#: stream trimming script, and those of nonces and rate limits. A script
#: runs with the caller's permissions, command by command and key by key.
_SCRIPTS = ("eval", "evalsha", "script|load", "script|exists")
#: Keys: registrations, heartbeats, state, seen ids, nonces, rate limits,
#: circuit breakers (and what the scripts call on them).
_KEYS = (
    "exists", "type", "del", "unlink", "pttl", "ttl", "pexpire", "expire", "persist",
    "scan", "time", "get", "set", "incr", "incrby",
    "hget", "hmget", "hgetall", "hset", "hdel", "hincrby",
    "multi", "exec", "discard",
)
#: Reliable delivery: the agent's own stream, group and dead letters.
_STREAMS = (
    "xadd", "xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xrange",
    "xrevrange", "xlen", "xdel", "xtrim",
    "xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer",
    "xinfo|groups", "xinfo|consumers", "xinfo|stream",
)
#: Pub/sub: its own channel and wake-up channels (sharded on a Cluster).
_PUBSUB = (
    "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "publish", "spublish",
)
#: The registry service: scans, judges and marks registrations, reads mas.system.
_SERVICE = (
    "scan", "time", "exists", "type", "pttl", "persist", "pexpire",
    "hmget", "hgetall", "hset",
)

#: A Redis user name: no white space, no control character.
_USER_NAME = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")


def acl_rules(
    agent_id: str,
    *,
    user: Optional[str] = None,
    password: Optional[str] = None,
    nopass: bool = False,
    acl_file: bool = False,
) -> List[str]:
    """The ``ACL SETUSER`` command line of the Redis user that one agent runs as.

    The rules start with ``reset``, so that the line replaces whatever the
    user had: paste it into ``redis-cli`` (or run it with ``execute_command``
    after splitting it on spaces). With ``acl_file=True`` it is the line of
    an ACL file (``user NAME reset resetchannels on ...``, for ``aclfile`` in
    ``redis.conf``).

    Args:
        agent_id: The agent's id.
        user: The user name; the agent id by default.
        password: The user's password; the line holds its SHA-256
            (``#<hex>``), never the password itself.
        nopass: Let the user in with any password (for tests; never with
            ``password``).
        acl_file: Give the ACL file form.

    Returns:
        One line (a list, like :func:`service_acl_rules`).

    Raises:
        TypeError, ValueError: a bad agent id or user name, or both
            ``password`` and ``nopass``.
    """
    _wire.validate_agent_id(agent_id)
    name = _check_user(agent_id if user is None else user)
    any_id = "*"
    own_keys = [
        _wire.agent_key(agent_id),
        _wire.heartbeat_key(agent_id),
        _wire.stats_key(agent_id),
        _wire.state_key(agent_id),
        _wire.stream_key(agent_id),
        _wire.dlq_key(agent_id),
        _wire.seen_key(agent_id, any_id),
        _wire.nonce_key(agent_id, any_id),
        _wire.rate_key(agent_id, any_id),
        _wire.breaker_key(any_id),
    ]
    channel = _wire.agent_channel(agent_id)
    rules = [
        *_commands((*_CONNECTION, *_SCRIPTS, *_KEYS, *_STREAMS, *_PUBSUB)),
        *("~" + key for key in own_keys),
        # Discovery reads every registration and heartbeat (agent:*).
        "%R~" + _wire.AGENT_KEY_PATTERN,
        "&" + channel,
        "&" + _wire.wake_channel_pattern(channel),
        # Sending: publish on any agent's channel, announce on mas.system...
        _selector(("publish", "spublish"),
                  ["&" + _wire.agent_channel(any_id), "&" + _wire.SYSTEM_CHANNEL]),
        # ...and add to any reliable agent's stream, without reading it.
        _selector(("xadd", "type"), ["%W~" + _wire.stream_key(any_id)]),
    ]
    return [_line(name, _password_rules(password, nopass), rules, acl_file)]


def service_acl_rules(
    *,
    user: str = "mas-service",
    password: Optional[str] = None,
    nopass: bool = False,
    acl_file: bool = False,
) -> List[str]:
    """The ``ACL SETUSER`` command line of the Redis user that :class:`MASService` runs as.

    It reads and writes every registration and reads every heartbeat
    (``agent:*``), and subscribes to ``mas.system``; nothing else. See
    :func:`acl_rules` for the arguments.

    Raises:
        TypeError, ValueError: a bad user name, or both ``password`` and ``nopass``.
    """
    name = _check_user(user)
    channel = _wire.SYSTEM_CHANNEL
    rules = [
        *_commands((*_CONNECTION, *_SCRIPTS, *_SERVICE, *_PUBSUB)),
        "~" + _wire.AGENT_KEY_PATTERN,
        "&" + channel,
        "&" + _wire.wake_channel_pattern(channel),
    ]
    return [_line(name, _password_rules(password, nopass), rules, acl_file)]


def _commands(names: Tuple[str, ...]) -> List[str]:
    """``-@all`` then ``+name`` for each command, once each, in order."""
    return ["-@all", *("+" + name for name in dict.fromkeys(names))]


def _selector(commands: Tuple[str, ...], patterns: List[str]) -> str:
    """A selector: one more set of commands, keys and channels, checked on its own.

    It starts from no channel (``resetchannels``), as the user's own rules do.
    """
    return "(" + " ".join(["+" + name for name in commands] + ["resetchannels"] + patterns) + ")"


def _check_user(user: object) -> str:
    """``user`` if Redis takes it as a user name."""
    if not isinstance(user, str):
        raise TypeError(f"user must be a str, not {type(user).__name__}")
    if not _USER_NAME.match(user):
        raise ValueError(
            f"user {user!r} must be non-empty, without white space or control characters"
        )
    return user


def _password_rules(password: Optional[str], nopass: bool) -> List[str]:
    """The password rules: ``nopass``, the password's SHA-256 (``#<hex>``), or none."""
    if password is not None and not isinstance(password, str):
        raise TypeError(f"password must be a str, not {type(password).__name__}")
    if password is not None and nopass:
        raise ValueError("give a password or nopass, not both")
    if password == "":
        raise ValueError("password must not be empty")
    if nopass:
        return ["nopass"]
    if password is None:
        return []  # no password: nobody logs in as this user until one is added
    return ["#" + hashlib.sha256(password.encode("utf-8")).hexdigest()]


def _line(name: str, passwords: List[str], rules: List[str], acl_file: bool) -> str:
    """One user's line: ``ACL SETUSER`` or the ACL file's ``user``, then its rules."""
    head = ["user", name] if acl_file else ["ACL", "SETUSER", name]
    # resetchannels: where acl-pubsub-default is allchannels, "reset" (and a
    # new selector) grants every channel, and a channel pattern after that is
    # refused.
    head += ["reset", "resetchannels", "on"]
    return " ".join([*head, *passwords, *rules])
