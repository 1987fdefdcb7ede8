"""Agent ids and declared names: the id format, the host name, the name in registrations."""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Dict, Optional

from .. import Agent
from .._wire import validate_agent_id

#: How an agent's id is made from its declared name: the name, the host name
#: and the process id, so that the copies of one agent in several worker
#: processes (on one machine or several) never share an id.
DEFAULT_ID_FORMAT = "{name}-{host}-{pid}"

#: The key of a declared agent's registration metadata that holds its
#: declared name, so that :meth:`ProcessAgents.find` finds it wherever it runs.
#: Set on top of what the agent's own ``get_metadata()`` returns.
NAME_KEY = "declared_name"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def host_name() -> str:
    """This machine's host name, as it appears in agent ids (``{host}``)."""
    return _HOST_UNSAFE.sub("-", socket.gethostname())[:64] or "localhost"


def format_agent_id(id_format: str, name: str, pid: Optional[int] = None) -> str:
    """The agent id that ``id_format`` makes of ``name`` in process ``pid``.

    ``id_format`` may use ``{name}``, ``{pid}`` (this process's id by default)
    and ``{host}`` (:func:`host_name`).

    Raises:
        TypeError: ``id_format`` is not a string.
        ValueError: it uses another placeholder, or makes an invalid id.
    """
    if not isinstance(id_format, str):
        raise TypeError(f"an agent id format must be a str, not {type(id_format).__name__}")
    try:
        agent_id = id_format.format(
            name=name, pid=os.getpid() if pid is None else pid, host=host_name()
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"agent id format {id_format!r} is not valid ({type(exc).__name__}: {exc});"
            " it may use {name}, {pid} and {host}"
        ) from None
    return validate_agent_id(agent_id, f"agent id made by the format {id_format!r}")


def check_name(name: str, what: str = "agent name") -> str:
    """``name`` if it is a valid declared name: letters, digits, ``-``, ``_``, ``.``.

    Raises:
        ValueError: it is not.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must be letters, digits, '-', '_' or '.'")
    return name


def publish_name(agent: Agent, name: str) -> None:
    """Put ``name`` under :data:`NAME_KEY` in the registration metadata of ``agent``."""
    # The registration's metadata is what the agent's get_metadata() returns
    # (called by start(), in the thread that calls it), with the declared
    # name on top. A result that is no dict is left for start() to refuse.
    own = agent.get_metadata

    def get_metadata() -> Dict[str, Any]:
        metadata = own()
        return {**metadata, NAME_KEY: name} if isinstance(metadata, dict) else metadata

    agent.get_metadata = get_metadata  # type: ignore[method-assign]
