"""The ``MAS_*`` Django settings: their defaults, and the agents they declare."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .._names import DEFAULT_ID_FORMAT
from .._process import ProcessAgents
from .._spec import AgentSpec, check_settings

#: Every setting the integration reads, with its default.
DEFAULTS: Dict[str, Any] = {
    "MAS_REDIS_URL": "redis://localhost:6379",
    "MAS_AGENTS": {},
    "MAS_AGENT_ID_FORMAT": DEFAULT_ID_FORMAT,
    "MAS_AGENT_OPTIONS": {},
    "MAS_CLIENT_NAME": "web",
    "MAS_REQUEST_TIMEOUT": 10.0,
    "MAS_STOP_TIMEOUT": 5.0,
    "MAS_START_IN_PROCESS": False,
}

#: Keys of one entry of ``MAS_AGENTS`` given as a dict.
AGENT_KEYS = ("CLASS", "CAPABILITIES", "ID_FORMAT", "OPTIONS")


def get(name: str) -> Any:
    """The value of the setting ``name``, or its default."""
    return getattr(settings, name, DEFAULTS[name])


def agent_specs(declared_in_code: Iterable[AgentSpec] = ()) -> List[AgentSpec]:
    """The agents of ``MAS_AGENTS``, then those declared in code.

    An entry of ``MAS_AGENTS`` maps a name to the dotted path of an
    :class:`~mas_sync.Agent` subclass, or to a dict with ``CLASS`` and,
    optionally, ``CAPABILITIES``, ``ID_FORMAT`` and ``OPTIONS``.

    Raises:
        ImproperlyConfigured: an entry that cannot be read, a class that
            cannot be imported, or a name declared twice.
    """
    declared = get("MAS_AGENTS")
    if not isinstance(declared, Mapping):
        raise ImproperlyConfigured(
            "MAS_AGENTS must be a dict of agent name -> dotted class path or"
            f" {{'CLASS': ..., 'CAPABILITIES': [...]}}, not {declared!r}"
        )
    specs: List[AgentSpec] = []
    for name, entry in declared.items():
        if isinstance(entry, str):
            entry = {"CLASS": entry}
        if not isinstance(entry, Mapping) or "CLASS" not in entry:
            raise ImproperlyConfigured(
                f"MAS_AGENTS[{name!r}] must be a dotted class path or a dict with 'CLASS'"
            )
        unknown = sorted(set(entry) - set(AGENT_KEYS))
        if unknown:
            raise ImproperlyConfigured(
                f"MAS_AGENTS[{name!r}] has unknown keys {unknown}; known: {', '.join(AGENT_KEYS)}"
            )
        if not isinstance(entry["CLASS"], str):
            raise ImproperlyConfigured(
                f"MAS_AGENTS[{name!r}]['CLASS'] must be a dotted class path (a string),"
                f" not {entry['CLASS']!r}"
            )
        try:
            cls = import_string(entry["CLASS"])
        except ImportError as exc:
            raise ImproperlyConfigured(f"MAS_AGENTS[{name!r}]: {exc}") from exc
        try:
            specs.append(
                AgentSpec(
                    name,
                    cls,
                    entry.get("CAPABILITIES") or (),
                    entry.get("ID_FORMAT"),
                    entry.get("OPTIONS") or {},
                )
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"MAS_AGENTS[{name!r}]: {exc}") from exc
    names = {spec.name for spec in specs}
    for spec in declared_in_code:
        if spec.name in names:
            raise ImproperlyConfigured(
                f"agent {spec.name!r} is declared both in MAS_AGENTS and in code"
            )
        names.add(spec.name)
        specs.append(spec)
    return specs


def build_process_agents(
    declared_in_code: Iterable[AgentSpec] = (),
    *,
    redis_url: Optional[str] = None,
    id_format: Optional[str] = None,
) -> ProcessAgents:
    """A :class:`~mas_sync.contrib.ProcessAgents` configured from the settings.

    ``declared_in_code`` is read again each time agents start. ``redis_url``
    and ``id_format`` override ``MAS_REDIS_URL`` and ``MAS_AGENT_ID_FORMAT``.
    ``MAS_REDIS_URL`` must use a scheme mas_sync takes, and the options of
    ``MAS_AGENT_OPTIONS`` and of each agent's ``OPTIONS`` must be keyword
    arguments that the agent's class takes.

    Raises:
        ImproperlyConfigured: a setting with a bad value, named.
    """
    try:
        check_settings(None if redis_url else get("MAS_REDIS_URL"), get("MAS_AGENT_OPTIONS"))
        return ProcessAgents(
            lambda: agent_specs(declared_in_code),
            redis_url=redis_url or get("MAS_REDIS_URL"),
            id_format=id_format or get("MAS_AGENT_ID_FORMAT"),
            agent_options=get("MAS_AGENT_OPTIONS"),
            client_name=get("MAS_CLIENT_NAME"),
            request_timeout=get("MAS_REQUEST_TIMEOUT"),
            stop_timeout=get("MAS_STOP_TIMEOUT"),
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"mas_sync settings: {exc}") from exc


def declared_specs(agents: ProcessAgents) -> List[AgentSpec]:
    """The agents that ``agents`` declares, each checked with the settings.

    Raises:
        ImproperlyConfigured: a bad declaration, or ``MAS_AGENT_OPTIONS``
            with an option that a declared class does not take.
    """
    try:
        return agents.specs()
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"mas_sync settings: {exc}") from exc
