"""What an application declares: :class:`AgentSpec`, and the checks of its options and settings."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Type, Union

from .. import Agent
from .._redis import check_redis_url
from ._names import check_name, format_agent_id


#: Keyword arguments of an agent that settings of their own give.
_SET_ELSEWHERE = {
    "redis_url": "MAS_REDIS_URL (or runagents --redis-url) gives it",
    "capabilities": "each agent's own capabilities (CAPABILITIES, capabilities=) give them",
}


def check_agent_options(cls: Type[Agent], options: Mapping[str, Any], where: str) -> None:
    """Refuse options that ``cls(agent_id, **options)`` would not take.

    Compares the names with the signature of ``cls.__init__`` (a subclass may
    take more than :class:`~mas_sync.Agent`, or fewer). A class whose
    ``__init__`` takes ``**kwargs`` is taken at its word. The agent id is
    never an option: the id format makes it.

    Args:
        cls: The agent class the options are for.
        options: The keyword arguments.
        where: What holds them, for the message (``"MAS_AGENT_OPTIONS"``).

    Raises:
        TypeError: ``options`` is not a dict of str keys.
        ValueError: an option ``cls`` does not take, named with what it takes;
            or ``redis_url`` or ``capabilities``, which settings of their own give.
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"{where} must be a dict of option names to values, not {options!r}")
    if not all(isinstance(key, str) for key in options):
        raise TypeError(f"{where}: option names must be str, not {sorted(map(repr, options))}")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # less self
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    id_param = params[0].name if params and params[0].kind in positional else None
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    taken = {p.name for p in params if p.kind in by_keyword} - {id_param}
    class_name = "mas_sync.Agent" if cls is Agent else f"{cls.__module__}.{cls.__qualname__}"
    for key in options:
        if key == id_param:
            raise ValueError(
                f"{where}: {key!r} is not an option: the id format makes the agent id"
            )
        if key in _SET_ELSEWHERE:
            raise ValueError(f"{where}: {key!r} is not an option here: {_SET_ELSEWHERE[key]}")
        if not open_ended and key not in taken:
            close = difflib.get_close_matches(key, sorted(taken), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{where}: {class_name}() takes no option {key!r}{hint};"
                f" it takes {', '.join(sorted(taken)) or 'none'}"
            )


def check_settings(redis_url: Optional[Any], agent_options: Any) -> None:
    """Check ``MAS_REDIS_URL`` and ``MAS_AGENT_OPTIONS``, as Flask and Django read them.

    The errors name the setting. ``redis_url`` None is not checked (another
    source, such as a command-line option, gives the URL).

    Raises:
        TypeError, ValueError: a value mas_sync cannot use.
    """
    if redis_url is not None:
        if not isinstance(redis_url, str) or not redis_url:
            raise TypeError(f"MAS_REDIS_URL must be a non-empty str, not {redis_url!r}")
        try:
            check_redis_url(redis_url)
        except ValueError as exc:
            raise ValueError(f"MAS_REDIS_URL: {exc}") from None
    check_agent_options(Agent, agent_options, "MAS_AGENT_OPTIONS")


@dataclass(frozen=True)
class AgentSpec:
    """An agent an application declares: what to build in each process.

    Attributes:
        name: The declared name; letters, digits, ``-``, ``_`` and ``.``.
            The agent's id is made from it by the id format.
        cls: The :class:`~mas_sync.Agent` subclass to build.
        capabilities: Its capabilities, for discovery.
        id_format: Overrides the application's id format for this agent
            (``"{name}"`` gives it a fixed id, for an agent that runs in one
            process only).
        options: More keyword arguments for ``cls``, such as
            ``heartbeat_interval`` or ``max_workers``; checked against the
            signature of ``cls``.

    Raises:
        TypeError, ValueError: a bad field, named in the message.
    """

    name: str
    cls: Type[Agent] = Agent
    capabilities: Tuple[str, ...] = ()
    id_format: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not (isinstance(self.cls, type) and issubclass(self.cls, Agent)):
            raise TypeError(f"agent {self.name!r}: {self.cls!r} is not a mas_sync.Agent subclass")
        if isinstance(self.capabilities, str) or not isinstance(
            self.capabilities, (list, tuple, set, frozenset)
        ):
            raise TypeError(
                f"agent {self.name!r}: capabilities must be a list of str, not"
                f" {self.capabilities!r}"
            )
        object.__setattr__(self, "capabilities", tuple(self.capabilities))
        if not isinstance(self.options, Mapping):
            raise TypeError(f"agent {self.name!r}: options must be a dict, not {self.options!r}")
        object.__setattr__(self, "options", dict(self.options))
        check_agent_options(self.cls, self.options, f"agent {self.name!r}: options")
        if self.id_format is not None:
            format_agent_id(self.id_format, self.name)


SpecSource = Union[Sequence[AgentSpec], Callable[[], Iterable[AgentSpec]]]
