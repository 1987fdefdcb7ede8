"""What the commands share: the Redis URL, clients, argument checks and errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any, Dict, Iterator

import redis

from .. import _wire
from .._json import dumps_object, loads_strict
from .._redis import close_client, make_client, ping

#: The Redis URL when neither ``--redis-url`` nor ``$MAS_REDIS_URL`` gives one.
DEFAULT_REDIS_URL = "redis://localhost:6379"
#: The environment variable that gives the default Redis URL.
URL_ENV = "MAS_REDIS_URL"


class CommandError(Exception):
    """A command failed (exit status 1): its message is printed as ``error: ...``."""


class UsageError(Exception):
    """An argument is wrong (exit status 2): its message is printed as ``error: ...``."""


def redis_url(args: argparse.Namespace) -> str:
    """The Redis URL: ``--redis-url``, else ``$MAS_REDIS_URL``, else the default."""
    return getattr(args, "redis_url", None) or os.environ.get(URL_ENV) or DEFAULT_REDIS_URL


@contextlib.contextmanager
def connect(args: argparse.Namespace, *, decode: bool = True) -> Iterator[redis.Redis]:
    """A client of the deployment the arguments name, checked with a PING, closed at the end.

    Raises:
        UsageError: the URL is not a Redis URL (or names TLS files that are missing).
        MASConnectionError: Redis does not answer.
    """
    url = redis_url(args)
    try:
        client = make_client(url, 4, decode=decode, client_name="mas-cli")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        ping(client, url)
        yield client
    finally:
        close_client(client)


def agent_id(text: str, what: str = "agent id") -> str:
    """``text`` if it is a valid agent id.

    Raises:
        UsageError: it is not.
    """
    try:
        return _wire.validate_agent_id(text, what)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def json_object(text: str, what: str = "payload") -> Dict[str, Any]:
    """``text`` parsed as a JSON object (strict: no NaN), one that an agent may send.

    Raises:
        UsageError: it is not a JSON object.
    """
    try:
        value = loads_strict(text)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} is not valid JSON: {_reason(exc)}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object ({{...}}), not {type(value).__name__}")
    try:  # what send() and request() would refuse: the reserved keys
        dumps_object(value, what, _wire.RESERVED_KEYS)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def unknown_agent(agent: str) -> CommandError:
    """The error of an agent that Redis knows nothing of."""
    return CommandError(f"no agent {agent!r} is registered")


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (at character {exc.pos})"
    return str(exc)

