"""The agents an application runs, started at most once per process.

Web servers start and copy processes in ways that break background threads:
an autoreloader imports the application in a watcher process that never
serves, and a pre-fork server (gunicorn ``--preload``, uWSGI without
``lazy-apps``) imports it in a master whose threads do not survive the fork
into its workers. :class:`ProcessAgents` therefore never starts anything when
it is created: agents start when a serving process first needs them, and they
belong to the process id that started them. In a process whose id differs (a
forked worker), the parent's agents count as not running, and that process
starts agents of its own, under ids of its own.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from .. import Agent, AgentMessage, GatherResult
from .._redis import check_redis_url
from ._lifecycle import track
from ._names import DEFAULT_ID_FORMAT, NAME_KEY, check_name, format_agent_id, publish_name
from ._spec import AgentSpec, SpecSource, check_agent_options

log = logging.getLogger(__name__)


class ProcessAgents:
    """The declared agents of one application, and a client agent, in this process.

    Nothing starts when it is created. :meth:`start` (or :meth:`ensure_started`,
    :meth:`get`, :attr:`client`) starts agents in the calling process and tags
    them with its process id; calling it again in that process does nothing
    more. In a process whose id differs, such as a worker forked after the
    parent started its agents, the parent's agents count as not running (their
    threads did not survive the fork), and the same calls build and start new
    agents, whose ids carry the new process id. Agents of this process are
    stopped at interpreter exit.

    All methods are thread-safe; each runs in the thread that calls it.

    Args:
        specs: The declared agents, or a callable that returns them (read
            each time agents are started, so that declarations made later
            count).
        redis_url: Where Redis is.
        id_format: How ids are made of names (see :func:`format_agent_id`).
        agent_options: Keyword arguments for every agent built, the client
            included (a spec's ``options`` win); checked against the
            signatures of :class:`~mas_sync.Agent` and of each declared class.
        client_name: Name of the client agent, whose id is made by
            ``id_format`` too; it sends the requests of :meth:`request`.
        request_timeout: Default timeout of :meth:`request`, in seconds.
        stop_timeout: Seconds each agent gets to stop.

    Raises:
        TypeError, ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        specs: SpecSource,
        *,
        redis_url: str,
        id_format: str = DEFAULT_ID_FORMAT,
        agent_options: Optional[Mapping[str, Any]] = None,
        client_name: str = "web",
        request_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if not isinstance(redis_url, str) or not redis_url:
            raise TypeError("redis_url must be a non-empty str")
        check_redis_url(redis_url)
        check_name(client_name, "client name")
        format_agent_id(id_format, client_name)
        for what, value in (("request_timeout", request_timeout), ("stop_timeout", stop_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
        if agent_options is not None:
            # The client is a plain Agent: every option must suit Agent.
            check_agent_options(Agent, agent_options, "agent_options")
        self._specs: Callable[[], Iterable[AgentSpec]] = (
            specs if callable(specs) else (lambda fixed=tuple(specs): fixed)
        )
        self.redis_url = redis_url
        self.id_format = id_format
        self.agent_options: Dict[str, Any] = dict(agent_options or {})
        self.client_name = client_name
        self.request_timeout = float(request_timeout)
        self.stop_timeout = float(stop_timeout)
        self._lock = threading.RLock()
        self._pid: Optional[int] = None  # the process that owns _agents and _client
        self._complete_pid: Optional[int] = None  # every declared agent started there
        self._agents: Dict[str, Agent] = {}
        self._client: Optional[Agent] = None
        track(self)

    def __repr__(self) -> str:
        running = sorted(a.id for a in self.running.values())
        return f"<ProcessAgents pid={os.getpid()} running={running}>"

    # -- declarations ----------------------------------------------------------

    def specs(self) -> List[AgentSpec]:
        """The declared agents.

        Raises:
            TypeError: a declaration that is no :class:`AgentSpec`.
            ValueError: two declarations share a name, or a declared class
                does not take an option of ``agent_options``.
        """
        specs = list(self._specs())
        seen = set()
        for spec in specs:
            if not isinstance(spec, AgentSpec):
                raise TypeError(f"not an AgentSpec: {spec!r}")
            if spec.name in seen:
                raise ValueError(f"agent {spec.name!r} is declared twice")
            if spec.name == self.client_name:
                raise ValueError(
                    f"agent {spec.name!r}: the name of the client agent (client_name,"
                    " MAS_CLIENT_NAME); give the agent another name"
                )
            seen.add(spec.name)
            if spec.cls is not Agent:
                check_agent_options(
                    spec.cls, self.agent_options, f"agent {spec.name!r}: agent_options"
                )
        return specs

    def agent_id(self, name: str) -> str:
        """The id the declared agent ``name`` (or the client) has in this process.

        The client's is always ``{client_name}-{host}-{pid}``, whatever
        ``id_format``: there is one client per process.
        """
        if name == self.client_name:
            return format_agent_id(DEFAULT_ID_FORMAT, name)
        return format_agent_id(self._spec(name).id_format or self.id_format, name)

    # -- start and stop --------------------------------------------------------

    def start(self, names: Optional[Iterable[str]] = None) -> Dict[str, Agent]:
        """Start the declared agents (or those named) that do not run in this process.

        Runs in the calling thread; returns once they all receive messages.
        Idempotent: agents already running in this process are left alone. If
        one fails to start, those this call started are stopped again.

        Returns:
            The agents asked for, by name.

        Raises:
            KeyError: a name that is not declared.
            MASConnectionError, StateError, Exception: as :meth:`Agent.start`.
        """
        with self._lock:
            self._adopt_process()
            specs = self.specs()
            if names is None:
                chosen = specs
            else:
                by_name = {spec.name: spec for spec in specs}
                wanted = list(names)
                unknown = [n for n in wanted if n not in by_name]
                if unknown:
                    raise KeyError(
                        f"no agent named {', '.join(map(repr, unknown))} is declared"
                        f" (declared: {', '.join(sorted(by_name)) or 'none'})"
                    )
                chosen = [by_name[n] for n in wanted]
            started: List[Agent] = []
            try:
                for spec in chosen:
                    agent = self._agents.get(spec.name)
                    if agent is not None and agent.is_running:
                        continue
                    agent = self._build(spec)
                    agent.start()
                    self._agents[spec.name] = agent
                    started.append(agent)
            except BaseException:
                for agent in reversed(started):
                    self._stop_one(agent, self.stop_timeout)
                    self._agents = {n: a for n, a in self._agents.items() if a is not agent}
                raise
            if all(s.name in self._agents and self._agents[s.name].is_running for s in specs):
                self._complete_pid = os.getpid()
            if started:
                log.info(
                    "Process %d: started agents %s",
                    os.getpid(), ", ".join(agent.id for agent in started),
                )
            return {spec.name: self._agents[spec.name] for spec in chosen}

    def ensure_started(self) -> None:
        """Start the declared agents unless they already run in this process.

        Cheap once they do (one comparison of process ids), so that it can run
        before every request. Runs in the calling thread.
        """
        if self._complete_pid != os.getpid():
            self.start()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the agents (and the client) that this process started.

        Each gets ``timeout`` seconds (default ``stop_timeout``). Agents that
        a parent process started are not this process's to stop: nothing
        happens in a process that started none. Runs in the calling thread.
        """
        with self._lock:
            if self._pid != os.getpid():
                return
            agents = list(self._agents.values())[::-1]
            if self._client is not None:
                agents.append(self._client)
            self._agents = {}
            self._client = None
            self._complete_pid = None
        # Outside the lock: a handler that calls get() while we wait for it
        # to finish must not wait for us in turn.
        for agent in agents:
            self._stop_one(agent, self.stop_timeout if timeout is None else timeout)

    # -- access ----------------------------------------------------------------

    @property
    def running(self) -> Dict[str, Agent]:
        """The declared agents running in this process, by name; starts nothing."""
        with self._lock:
            if self._pid != os.getpid():
                return {}
            return {name: a for name, a in self._agents.items() if a.is_running}

    def get(self, name: str) -> Agent:
        """The declared agent ``name`` of this process, started if it was not.

        Raises:
            KeyError: no agent of that name is declared.
            MASConnectionError, StateError: as :meth:`Agent.start`.
        """
        agent = self._agents.get(name)
        if agent is not None and self._pid == os.getpid() and agent.is_running:
            return agent
        return self.start([name])[name]

    @property
    def client(self) -> Agent:
        """This process's client agent, started on first use.

        A plain :class:`~mas_sync.Agent` with no capabilities, named
        ``client_name`` (its id made by ``id_format``), that a view uses to send
        and to ask. Independent of the declared agents: it starts even where
        they run in another process.
        """
        agent = self._client
        if agent is not None and self._pid == os.getpid() and agent.is_running:
            return agent
        with self._lock:
            self._adopt_process()
            if self._client is None or not self._client.is_running:
                client = Agent(
                    self.agent_id(self.client_name), redis_url=self.redis_url,
                    **self.agent_options,
                )
                client.start()
                self._client = client
            return self._client

    def request(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> AgentMessage:
        """Ask ``target_id`` through the client agent and block for the reply.

        Runs in the calling thread (a request thread of the web server, say).
        ``timeout`` defaults to ``request_timeout``. Raises what
        :meth:`Agent.request` raises.
        """
        return self.client.request(
            target_id, payload, self.request_timeout if timeout is None else timeout
        )

    def request_future(
        self, target_id: str, payload: Dict[str, Any], timeout: Optional[float] = None
    ) -> "concurrent.futures.Future[AgentMessage]":
        """Ask ``target_id`` through the client agent; returns a future of the reply.

        ``timeout`` defaults to ``request_timeout``. See
        :meth:`mas_sync.Agent.request_future`.
        """
        return self.client.request_future(
            target_id, payload, self.request_timeout if timeout is None else timeout
        )

    def request_many(
        self,
        targets: Union[str, Iterable[str]],
        payload: Dict[str, Any],
        timeout: Optional[float] = None,
    ) -> GatherResult:
        """Ask several agents (ids, or a capability) through the client agent, and gather.

        ``timeout`` defaults to ``request_timeout``. See
        :meth:`mas_sync.Agent.request_many`.
        """
        return self.client.request_many(
            targets, payload, self.request_timeout if timeout is None else timeout
        )

    def send(self, target_id: str, payload: Dict[str, Any]) -> str:
        """Send ``payload`` to ``target_id`` through the client agent; returns the message id."""
        return self.client.send(target_id, payload)

    def discover(
        self, capabilities: Optional[List[str]] = None, *, name: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """The live agents on this Redis, whichever process runs them, through the client.

        Runs in the calling thread; starts the client agent if needed, and no
        declared agent.

        Args:
            capabilities: Keep agents having at least one of them (None or
                empty: every agent), as :meth:`mas_sync.Agent.discover`.
            name: Keep only agents declared under this name (whose
                registration metadata holds it under :data:`NAME_KEY`).

        Returns:
            ``{"id", "capabilities", "metadata", "delivery", "instances"}`` per
            agent, sorted by id.

        Raises:
            TypeError, ValueError: bad ``capabilities`` or ``name``.
            MASConnectionError: Redis could not be reached.
        """
        if name is not None:
            check_name(name)
        found = self.client.discover(capabilities)
        if name is None:
            return found
        return [agent for agent in found if agent["metadata"].get(NAME_KEY) == name]

    def find(self, name: str) -> List[str]:
        """The ids of the live agents declared under ``name``, wherever they run.

        Each process that runs the declared agent ``name`` (a ``runagents``
        process, a web worker) adds one id. Runs in the calling thread;
        starts the client agent if needed, and no declared agent. An empty
        list means none runs now.

        Raises:
            ValueError: ``name`` is not a valid name.
            MASConnectionError: Redis could not be reached.
        """
        return [agent["id"] for agent in self.discover(name=name)]

    # -- internals -------------------------------------------------------------

    def _spec(self, name: str) -> AgentSpec:
        specs = self.specs()
        for spec in specs:
            if spec.name == name:
                return spec
        raise KeyError(
            f"no agent named {name!r} is declared"
            f" (declared: {', '.join(sorted(s.name for s in specs)) or 'none'})"
        )

    def _build(self, spec: AgentSpec) -> Agent:
        kwargs: Dict[str, Any] = {
            **self.agent_options,
            **spec.options,
            "capabilities": list(spec.capabilities),
            "redis_url": self.redis_url,
        }
        agent = spec.cls(format_agent_id(spec.id_format or self.id_format, spec.name), **kwargs)
        publish_name(agent, spec.name)
        return agent

    def _adopt_process(self) -> None:
        # Called with the lock held. Agents tagged with another process id
        # were started by a parent: their threads did not survive the fork.
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None and (self._agents or self._client is not None):
            log.info(
                "Process %d (forked from %d): the parent's agents do not run here;"
                " this process starts its own", pid, self._pid,
            )
        self._agents = {}
        self._client = None
        self._complete_pid = None
        self._pid = pid

    @staticmethod
    def _stop_one(agent: Agent, timeout: float) -> None:
        try:
            agent.stop(timeout=timeout)
        except Exception:  # pragma: no cover - stop() logs its own troubles
            log.exception("Agent %s: stop failed", agent.id)
