"""Flask integration: the ``MAS`` extension (``pip install mas_sync[flask]``).

::

    from flask import Flask
    from mas_sync import Agent
    from mas_sync.contrib.flask import MAS

    mas = MAS()

    @mas.agent("summarizer", capabilities=["nlp"])
    class Summarizer(Agent):
        def on_message(self, message):
            if message.expects_reply:
                message.reply({"summary": message.payload["text"][:20]})

    def create_app():
        app = Flask(__name__)
        app.config["MAS_REDIS_URL"] = "redis://localhost:6379/0"
        mas.init_app(app)

        @app.get("/summarize")
        def summarize():
            reply = mas.request(mas.get("summarizer").id, {"text": "..."})
            return reply.payload

        @app.get("/summarizers")
        def summarizers():
            return {"ids": mas.find("summarizer")}  # every process's

        return app

Configuration keys, read by :meth:`MAS.init_app`:

``MAS_REDIS_URL``
    Where Redis is (default ``redis://localhost:6379``).
``MAS_AGENT_ID_FORMAT``
    How an agent's id is made of its declared name: ``{name}``, ``{host}`` and
    ``{pid}`` (default ``{name}-{host}-{pid}``, so that the copies of an agent
    in several worker processes never share an id).
``MAS_AGENT_OPTIONS``
    Keyword arguments for every agent, the client included
    (``heartbeat_interval``, ...); an option that :class:`~mas_sync.Agent`
    does not take is refused by :meth:`MAS.init_app`.
``MAS_CLIENT_NAME``
    Name of the client agent that sends the requests of views (default ``web``).
``MAS_REQUEST_TIMEOUT``
    Default timeout of :meth:`MAS.request`, in seconds (default 10).
``MAS_STOP_TIMEOUT``
    Seconds each agent gets to stop (default 5).
``MAS_START_ON_FIRST_REQUEST``
    Start the declared agents in a process when it handles its first request
    (default True). Either way :meth:`MAS.start` starts them at once, say
    from a server's post-fork hook.

Agents never start when the application is imported or created: not in the
Werkzeug reloader's watcher process, not in the master of
``gunicorn --preload``, not for ``flask routes``. They start in each process
that serves, and again in any process whose id differs from the one that
started them (see :class:`mas_sync.contrib.ProcessAgents`). They are stopped
when the process exits.

Views reach agents through this process's client agent: :meth:`MAS.find`
gives the ids of the agents declared under a name, wherever they run,
:meth:`MAS.discover` finds agents by capability, and :meth:`MAS.request` and
:meth:`MAS.send` talk to them. :meth:`MAS.get` gives this process's own copy
of a declared agent, started if need be.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Dict, Iterable, List, Optional, Type, Union

from flask import Flask, current_app

from .._agent import Agent
from .._futures import GatherResult
from .._message import AgentMessage
from ._names import DEFAULT_ID_FORMAT
from ._process import ProcessAgents
from ._spec import AgentSpec, check_settings

__all__ = ["EXTENSION_KEY", "MAS"]

#: The key of ``app.extensions`` that holds an app's :class:`ProcessAgents`.
EXTENSION_KEY = "mas"

_DEFAULTS: Dict[str, Any] = {
    "MAS_REDIS_URL": "redis://localhost:6379",
    "MAS_AGENT_ID_FORMAT": DEFAULT_ID_FORMAT,
    "MAS_AGENT_OPTIONS": {},
    "MAS_CLIENT_NAME": "web",
    "MAS_REQUEST_TIMEOUT": 10.0,
    "MAS_STOP_TIMEOUT": 5.0,
    "MAS_START_ON_FIRST_REQUEST": True,
}


class MAS:
    """The mas_sync extension: agents declared for Flask applications.

    Use it as ``MAS(app)``, or create it first and call :meth:`init_app` per
    application (the application factory pattern). Agents declared with
    :meth:`agent` belong to every application the extension is initialised
    with; each application keeps its running agents in
    ``app.extensions["mas"]``, a :class:`~mas_sync.contrib.ProcessAgents`.

    Methods that take no ``app`` act on ``flask.current_app``.

    Args:
        app: The application to initialise, if given.
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        self._specs: List[AgentSpec] = []
        if app is not None:
            self.init_app(app)

    def agent(
        self,
        name: str,
        cls: Optional[Type[Agent]] = None,
        *,
        capabilities: Optional[List[str]] = None,
        id_format: Optional[str] = None,
        **options: Any,
    ) -> Any:
        """Declare an agent: ``mas.agent("nlp", Summarizer)``, or as a class decorator.

        Declare agents before the first request: a process that already
        started its agents starts a later one only on :meth:`start` or
        :meth:`get`.

        Args:
            name: The declared name, from which the id is made.
            cls: The :class:`~mas_sync.Agent` subclass; omitted, the call
                returns a class decorator.
            capabilities: Its capabilities.
            id_format: Overrides ``MAS_AGENT_ID_FORMAT`` for this agent.
            **options: More keyword arguments for ``cls``.

        Returns:
            The class (so that the decorator leaves it in place).

        Raises:
            ValueError: the name is declared already, or a bad argument.
        """

        def declare(agent_cls: Type[Agent]) -> Type[Agent]:
            if any(spec.name == name for spec in self._specs):
                raise ValueError(f"agent {name!r} is declared already")
            self._specs.append(
                AgentSpec(name, agent_cls, capabilities or (), id_format, options)
            )
            return agent_cls

        return declare if cls is None else declare(cls)

    def init_app(self, app: Flask) -> None:
        """Read the ``MAS_*`` configuration and attach the agents to ``app``.

        Starts nothing: see the module's documentation for when agents start.
        ``MAS_REDIS_URL`` must use a scheme mas_sync takes, and
        ``MAS_AGENT_OPTIONS`` only options that :class:`~mas_sync.Agent` and
        the classes of the agents declared so far take.

        Raises:
            RuntimeError: ``app`` is initialised already.
            TypeError, ValueError: a bad configuration value, named.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("the MAS extension is initialised for this app already")
        for key, value in _DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config
        check_settings(config["MAS_REDIS_URL"], config["MAS_AGENT_OPTIONS"])
        agents = ProcessAgents(
            lambda: tuple(self._specs),
            redis_url=config["MAS_REDIS_URL"],
            id_format=config["MAS_AGENT_ID_FORMAT"],
            agent_options=config["MAS_AGENT_OPTIONS"],
            client_name=config["MAS_CLIENT_NAME"],
            request_timeout=config["MAS_REQUEST_TIMEOUT"],
            stop_timeout=config["MAS_STOP_TIMEOUT"],
        )
        agents.specs()  # the agents declared so far take MAS_AGENT_OPTIONS
        agents.extension = self  # type: ignore[attr-defined]
        app.extensions[EXTENSION_KEY] = agents
        if config["MAS_START_ON_FIRST_REQUEST"]:
            app.before_request(_ensure_started)

    # -- per application -------------------------------------------------------

    def agents(self, app: Optional[Flask] = None) -> ProcessAgents:
        """The :class:`~mas_sync.contrib.ProcessAgents` of ``app`` (default: the current app).

        Raises:
            RuntimeError: the extension is not initialised for that app, or
                there is no app context.
        """
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError(
                "the MAS extension is not initialised for this app: call mas.init_app(app)"
            ) from None

    def start(self, app: Optional[Flask] = None) -> Dict[str, Agent]:
        """Start the declared agents in this process now, unless they run already.

        For a server's post-fork hook (gunicorn's ``post_worker_init``, uWSGI's
        ``postfork``), so that each worker runs its agents from the moment it
        boots. Runs in the calling thread.

        Returns:
            The running agents, by name.
        """
        return self.agents(app).start()

    def stop(self, app: Optional[Flask] = None, timeout: Optional[float] = None) -> None:
        """Stop the agents this process started (they are stopped at exit anyway)."""
        self.agents(app).stop(timeout)

    def get(self, name: str, app: Optional[Flask] = None) -> Agent:
        """The declared agent ``name`` running in this process, started if needed."""
        return self.agents(app).get(name)

    @property
    def client(self) -> Agent:
        """The current app's client agent in this process, started on first use."""
        return self.agents().client

    def request(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> AgentMessage:
        """Ask ``target_id`` and block until it answers; for views.

        Runs in the calling thread (the request's). ``timeout`` defaults to
        ``MAS_REQUEST_TIMEOUT``. Raises what :meth:`mas_sync.Agent.request`
        raises: ``RequestTimeout``, ``RequestError``, ...
        """
        return self.agents().request(target_id, payload, timeout)

    def request_future(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> "concurrent.futures.Future[AgentMessage]":
        """Ask ``target_id``; returns a future of the reply, for views that ask many.

        ``timeout`` defaults to ``MAS_REQUEST_TIMEOUT``. See
        :meth:`mas_sync.Agent.request_future`.
        """
        return self.agents().request_future(target_id, payload, timeout)

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
        return self.agents().request_many(targets, payload, timeout)

    def send(self, target_id: str, payload: Dict[str, Any]) -> str:
        """Send ``payload`` to ``target_id`` from the client agent; returns the message id."""
        return self.agents().send(target_id, payload)

    def discover(
        self, capabilities: Optional[List[str]] = None, *, name: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """The live agents with one of ``capabilities`` (and declared as ``name``), anywhere.

        Asks through the client agent; starts no declared agent. See
        :meth:`mas_sync.contrib.ProcessAgents.discover`.
        """
        return self.agents().discover(capabilities, name=name)

    def find(self, name: str) -> List[str]:
        """The ids of the live agents declared as ``name``, whichever process runs them.

        Asks through the client agent; starts no declared agent. An empty list
        means none runs now. See :meth:`mas_sync.contrib.ProcessAgents.find`.
        """
        return self.agents().find(name)


def _ensure_started() -> None:
    # A before_request function: runs in the request's thread, before the view.
    current_app.extensions[EXTENSION_KEY].ensure_started()

