"""The agents of a Django project in this process, and when they start."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Type, Union

from django.core.signals import request_started, setting_changed
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

from ..._agent import Agent
from ..._errors import AgentNotRunningError
from ..._futures import GatherResult
from ..._message import AgentMessage
from .._process import ProcessAgents
from .._spec import AgentSpec
from . import _settings

log = logging.getLogger(__name__)


class MAS:
    """The agents of the Django project, as one object: ``mas_sync.contrib.django.mas``.

    Agents come from the ``MAS_AGENTS`` setting and from :meth:`agent`
    declarations in code. They run in a dedicated process
    (``manage.py runagents``) or, with ``MAS_START_IN_PROCESS = True``, in each
    web process, started there once (see the package's documentation). Views
    and commands reach them, wherever they run, through this process's client
    agent: :meth:`find`, :meth:`discover`, :meth:`request`, :meth:`send`.
    Every method is thread-safe and runs in the calling thread.
    """

    def __init__(self) -> None:
        self._declared: Dict[str, AgentSpec] = {}
        self._lock = threading.RLock()
        self._agents: Optional[ProcessAgents] = None

    def agent(
        self,
        name: str,
        cls: Optional[Type[Agent]] = None,
        *,
        capabilities: Optional[List[str]] = None,
        id_format: Optional[str] = None,
        **options: Any,
    ) -> Any:
        """Declare an agent in code: ``mas.agent("echo", Echo)``, or as a class decorator.

        Declare agents in a module that your ``AppConfig.ready()`` imports, so
        that they are declared in every process before any starts.

        Returns:
            The class.

        Raises:
            ValueError: the name is declared in code already, or a bad argument.
        """

        def declare(agent_cls: Type[Agent]) -> Type[Agent]:
            with self._lock:
                if name in self._declared and self._declared[name].cls is not agent_cls:
                    raise ValueError(f"agent {name!r} is declared already")
                self._declared[name] = AgentSpec(
                    name, agent_cls, capabilities or (), id_format, options
                )
            return agent_cls

        return declare if cls is None else declare(cls)

    @property
    def agents(self) -> ProcessAgents:
        """The :class:`~mas_sync.contrib.ProcessAgents` of the project, built from the settings.

        Raises:
            ImproperlyConfigured: a ``MAS_*`` setting with a bad value.
        """
        with self._lock:
            if self._agents is None:
                self._agents = _settings.build_process_agents(self._declared.values())
            return self._agents

    def declared(self) -> Iterable[AgentSpec]:
        """The agents declared in code (those of ``MAS_AGENTS`` are not included)."""
        return self._declared.values()

    def start(self, names: Optional[Iterable[str]] = None) -> Dict[str, Agent]:
        """Start the declared agents (or those named) in this process, unless they run.

        For a server's post-fork hook, or a process of your own. Returns the
        agents by name.
        """
        return self.agents.start(names)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the agents (and the client) this process started."""
        with self._lock:
            agents = self._agents
        if agents is not None:
            agents.stop(timeout)

    def get(self, name: str) -> Agent:
        """The declared agent ``name`` running in this process.

        With ``MAS_START_IN_PROCESS = True`` it is started here if it does not
        run yet. In the default mode the declared agents run under
        ``manage.py runagents``, and ``get()`` starts none: it returns an
        agent only in a process that runs it (``runagents`` itself, or one
        that called :meth:`start`). Elsewhere (a view, ``manage.py shell``),
        use :meth:`find` and :meth:`request`.

        Raises:
            KeyError: no agent of that name is declared.
            AgentNotRunningError: the default mode, and the agent does not
                run in this process.
            ImproperlyConfigured: a ``MAS_*`` setting with a bad value.
            MASConnectionError, StateError: as :meth:`mas_sync.Agent.start`.
        """
        agents = self.agents
        if start_in_process_enabled():
            return agents.get(name)
        agent = agents.running.get(name)
        if agent is not None:
            return agent
        agents.agent_id(name)  # KeyError for a name that is not declared
        raise AgentNotRunningError(
            f"agent {name!r} does not run in this process, and mas.get() starts none here:"
            " with MAS_START_IN_PROCESS = False the declared agents run under"
            f" 'manage.py runagents'. Reach them through this process's client:"
            f" mas.find({name!r}) gives their ids, mas.request(agent_id, payload) asks"
            " one, mas.send(agent_id, payload) tells it."
        )

    @property
    def client(self) -> Agent:
        """This process's client agent, started on first use; it sends for views."""
        return self.agents.client

    def request(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> AgentMessage:
        """Ask ``target_id`` and block until it answers; for views.

        ``timeout`` defaults to ``MAS_REQUEST_TIMEOUT``. Raises what
        :meth:`mas_sync.Agent.request` raises.
        """
        return self.agents.request(target_id, payload, timeout)

    def request_future(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> "concurrent.futures.Future[AgentMessage]":
        """Ask ``target_id``; returns a future of the reply, for views that ask many.

        ``timeout`` defaults to ``MAS_REQUEST_TIMEOUT``. See
        :meth:`mas_sync.Agent.request_future`.
        """
        return self.agents.request_future(target_id, payload, timeout)

    def request_many(
        self,
        targets: Union[str, Iterable[str]],
        payload: Dict[str, Any],
        timeout: Optional[float] = None,
    ) -> GatherResult:
        """Ask several agents (ids, or a capability) and gather their replies; for views.

        ``timeout`` defaults to ``MAS_REQUEST_TIMEOUT``. See
        :meth:`mas_sync.Agent.request_many`.
        """
        return self.agents.request_many(targets, payload, timeout)

    def send(self, target_id: str, payload: Dict[str, Any]) -> str:
        """Send ``payload`` to ``target_id`` from the client agent; returns the message id."""
        return self.agents.send(target_id, payload)

    def discover(
        self, capabilities: Optional[List[str]] = None, *, name: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """The live agents with one of ``capabilities`` (and declared as ``name``), anywhere.

        Asks through the client agent; starts no declared agent. See
        :meth:`mas_sync.contrib.ProcessAgents.discover`.
        """
        return self.agents.discover(capabilities, name=name)

    def find(self, name: str) -> List[str]:
        """The ids of the live agents declared as ``name``, whichever process runs them.

        Asks through the client agent; starts no declared agent. An empty list
        means none runs now (is ``runagents`` running?). See
        :meth:`mas_sync.contrib.ProcessAgents.find`.
        """
        return self.agents.find(name)

    def _run_here(self, agents: ProcessAgents) -> None:
        # For runagents: the agents it builds (with its --redis-url and
        # --id-format) are this process's, for get() in their handlers.
        with self._lock:
            previous, self._agents = self._agents, agents
        if previous is not None and previous is not agents:
            previous.stop()

    def _reset(self) -> None:
        # Settings changed (override_settings in tests): stop what runs here,
        # and build anew from the new settings on next use.
        with self._lock:
            agents, self._agents = self._agents, None
        if agents is not None:
            agents.stop()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()


mas = MAS()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=mas._after_fork_in_child)


def start_in_process_enabled() -> bool:
    """True when ``MAS_START_IN_PROCESS`` asks for agents in web processes."""
    return bool(_settings.get("MAS_START_IN_PROCESS"))


def _on_request_started(sender: Any, **kwargs: Any) -> None:
    # Runs in the thread that handles the request, before the view. Cheap
    # once the agents run in this process: one comparison of process ids.
    if start_in_process_enabled():
        mas.agents.ensure_started()


def _on_setting_changed(sender: Any, setting: str, **kwargs: Any) -> None:
    if setting.startswith("MAS_"):
        mas._reset()


def connect_signals() -> None:
    """Connect the receivers; idempotent (``ready()`` may run more than once)."""
    request_started.connect(_on_request_started, dispatch_uid="mas_sync.start_on_request")
    setting_changed.connect(_on_setting_changed, dispatch_uid="mas_sync.setting_changed")


def start_if_serving_process() -> None:
    """Start the agents now in the development server's serving process.

    Called by ``ready()``. Only with ``MAS_START_IN_PROCESS``, and only in the
    process that the autoreloader of ``runserver`` started to serve
    (``RUN_MAIN=true``): never in the autoreloader's watcher, nor for other
    management commands, nor in a pre-fork server's master. Everywhere else
    agents start on a process's first request. A failure is logged, and the
    first request tries again.
    """
    if not start_in_process_enabled() or os.environ.get(DJANGO_AUTORELOAD_ENV) != "true":
        return
    try:
        mas.agents.ensure_started()
    except Exception:
        log.exception("mas_sync: could not start the agents; the first request will try again")
