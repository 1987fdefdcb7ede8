"""The blocking agent: a listener thread, a worker pool and a heartbeat thread."""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import threading
import time
import uuid
import weakref
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type

import redis
from pydantic import BaseModel, ValidationError

from . import _wire
from ._connection import (
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
from ._checks import check_seconds
from ._dispatch import OrderedPool
from ._errors import (
    AgentIdInUseError,
    AgentNotRunningError,
    MASConnectionError,
    MASError,
    RedisCommandError,
    RequestError,
    RequestTimeout,
)
from ._handlers import HandlerSpec, action_of, body_of, collect_handlers
from ._listener import ANY_REDIS_ERROR, REDIS_ERRORS, ChannelListener
from ._message import AgentMessage, weak_reply_sender
from ._registry import REFRESH_GONE, REFRESH_REACTIVATED, REFRESH_TAKEN, AgentRegistry
from ._requests import PendingRequests
from ._sentinel import follow_master, is_sentinel_url
from ._sequence import GapTracker, Numbering
from ._state import StateManager

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class AgentStats:
    """Counters of one agent since it was created.

    Attributes:
        received: Messages read from the agent's channel.
        handled: Messages whose ``on_message`` returned.
        handler_errors: Messages whose ``on_message`` raised.
        invalid: Messages dropped because they were not valid agent messages
            (not JSON, wrong shape or types, or larger than
            ``max_message_bytes``).
        dropped_overflow: Messages dropped because ``max_pending`` messages
            were already waiting for a worker.
        dropped_on_stop: Messages still queued when ``stop()`` gave up waiting.
        rejected: Messages a typed handler refused: the payload did not
            validate into its model.
        replies_dropped: Replies that matched no waiting request: late (after
            the request timed out), or not from the agent that was asked.
        missed: Messages from mas_sync senders that never arrived, told by
            gaps in their sequence numbers (pub/sub drops what is published
            while a subscriber is disconnected).
        disconnects: Times the listener lost its connection (or found it
            dead: no answer to PING).
        reconnects: Times the listener resubscribed after losing Redis.
        listener_restarts: Times the listener failed for another reason
            (Redis refused to subscribe, an unexpected error) and was
            started again.
        skipped_registrations: Registrations that ``discover()`` skipped,
            summed over calls, because they could not be read (fields that
            are not strict JSON of the right shape or not UTF-8, an ``id``
            that does not name its key); each such key is also logged once
            per run.
    """

    received: int = 0
    handled: int = 0
    handler_errors: int = 0
    invalid: int = 0
    dropped_overflow: int = 0
    dropped_on_stop: int = 0
    rejected: int = 0
    replies_dropped: int = 0
    missed: int = 0
    disconnects: int = 0
    reconnects: int = 0
    listener_restarts: int = 0
    skipped_registrations: int = 0


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(AgentStats.__dataclass_fields__, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> AgentStats:
        with self._lock:
            return AgentStats(**self._values)


_running_agents: "weakref.WeakSet[Agent]" = weakref.WeakSet()
_agents: "weakref.WeakSet[Agent]" = weakref.WeakSet()  # every agent, for fork()


def running_agents() -> List["Agent"]:
    """The agents started, and not yet stopped, in this process."""
    return list(_running_agents)


def _forget_agents_after_fork() -> None:
    # Threads do not survive fork(): in the child, an agent that was running in
    # the parent is stopped, and may be started again, with counters from
    # zero. Its connections belong to the parent and are left alone. Any
    # agent's locks may have been held by a parent thread, so they are made
    # anew. (The GapTracker renews its own lock; Sentinel watchers are
    # forgotten by their module.)
    for agent in list(_agents):
        agent._mas_lock = threading.RLock()
        if agent._mas_runtime is not None:
            agent._mas_runtime = None
            agent._mas_counters = _Counters()
            agent._mas_gaps = GapTracker()
        else:
            agent._mas_counters._lock = threading.Lock()
    _running_agents.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_agents_after_fork)


@atexit.register
def _stop_running_agents() -> None:
    # Deregister cleanly when the interpreter exits with agents still running.
    for agent in list(_running_agents):
        try:
            agent.stop(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("Agent %s: stop at exit failed", agent.id)


class Agent:
    """An agent that talks to its peers over Redis pub/sub, with blocking calls.

    Subclass it and override :meth:`on_message` (and, if needed,
    :meth:`on_start`, :meth:`on_stop`, :meth:`on_error`, :meth:`get_metadata`).

    Threads, while the agent runs (all daemon threads, named
    ``mas-agent[{id}]-...``):

    - a listener that reads the agent's channel ``agent.{id}`` on its own
      pub/sub connection and queues each message;
    - up to ``max_workers`` workers that call :meth:`on_message`. Messages from
      one sender are handled one at a time, in the order they were sent;
      messages from different senders are handled in parallel;
    - a heartbeat that refreshes ``agent:{id}:heartbeat`` every
      ``heartbeat_interval`` seconds.

    At most ``max_pending`` messages wait for a worker; a message arriving
    beyond that is dropped, logged and counted in :attr:`stats`, so that a slow
    handler never stops the listener from reading Redis.

    Methods decorated with :func:`~mas_sync.handler` receive the messages whose
    ``payload["action"]`` names them, validated into a pydantic model; other
    messages go to :meth:`on_message`.

    Attributes whose names start with ``_mas_`` are reserved for the library.

    Args:
        agent_id: Unique id; may not contain ``:``, ``*``, ``?``, ``[``, ``]``,
            ``\\``, white space, control characters or lone surrogates.
        capabilities: What the agent can do, for :meth:`discover`: non-empty
            strings that are valid UTF-8 text.
        redis_url: Where Redis is, as redis-py's ``from_url`` reads it; a scheme
            mas_sync does not take (see README, Production) is a ValueError.
        state_model: A pydantic model class for typed state; None for a
            mapping of strings.
        heartbeat_interval: Seconds between heartbeats.
        heartbeat_ttl: Seconds the heartbeat key lives; must exceed
            ``heartbeat_interval``.
        max_workers: Threads that run :meth:`on_message`.
        max_pending: Messages that may wait for a worker.
        max_message_bytes: Larger messages are dropped unread.
        retry_timeout: Seconds for which a call that cannot connect to Redis
            (``send()``, ``request()``, ``update_state()``, ...) keeps
            trying before it raises ``MASConnectionError``. Only connecting
            is tried again: a command that was sent is never sent twice.
        command_timeout: Seconds to wait for Redis to answer one command (and
            for a connection's handshake); without an answer the call raises
            ``MASConnectionError``: the command may have run.
        probe_interval: Seconds of silence on the agent's channel after which
            the listener PINGs Redis on its connection; with no answer within
            ``min(2, probe_interval)`` seconds, it reconnects.
        take_over: Start even if another run holds a live registration of
            ``agent_id``, replacing it: for an operator who knows that run is
            dead (its heartbeat not yet expired). Without it, :meth:`start`
            raises :class:`~mas_sync.AgentIdInUseError`.

    Raises:
        TypeError, ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        agent_id: str,
        capabilities: Optional[List[str]] = None,
        redis_url: str = "redis://localhost:6379",
        state_model: Optional[Type[BaseModel]] = None,
        *,
        heartbeat_interval: float = 30.0,
        heartbeat_ttl: float = 60,
        max_workers: int = 8,
        max_pending: int = 1000,
        max_message_bytes: int = 1024 * 1024,
        retry_timeout: float = 5.0,
        command_timeout: float = 5.0,
        probe_interval: float = 5.0,
        take_over: bool = False,
    ) -> None:
        self.id: str = _wire.validate_agent_id(agent_id)
        self.capabilities: List[str] = _wire.validate_capabilities(capabilities)
        if not isinstance(redis_url, str) or not redis_url:
            raise TypeError("redis_url must be a non-empty str")
        check_redis_url(redis_url)
        self.redis_url: str = redis_url
        if state_model is not None and not (
            isinstance(state_model, type) and issubclass(state_model, BaseModel)
        ):
            raise TypeError(f"state_model must be a pydantic BaseModel class, not {state_model!r}")
        check_seconds("heartbeat_interval", heartbeat_interval)
        check_seconds("probe_interval", probe_interval)
        check_seconds("retry_timeout", retry_timeout, zero=True)
        check_seconds("command_timeout", command_timeout)
        check_seconds("heartbeat_ttl", heartbeat_ttl)
        if heartbeat_ttl <= heartbeat_interval:
            raise ValueError(
                f"heartbeat_ttl ({heartbeat_ttl}) must be longer than heartbeat_interval"
                f" ({heartbeat_interval}), or the agent would flicker out of discovery"
            )
        for name, value, most in (
            ("max_workers", max_workers, _MAX_WORKERS),
            ("max_pending", max_pending, _MAX_COUNT),
            ("max_message_bytes", max_message_bytes, _MAX_MESSAGE_BYTES),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"{name} must be an int from 1 to {most}, not {value!r}")
        if not isinstance(take_over, bool):
            raise TypeError(f"take_over must be a bool, not {take_over!r}")
        self._mas_take_over = take_over
        self._mas_state_model = state_model
        self._mas_heartbeat_interval = float(heartbeat_interval)
        self._mas_heartbeat_ttl = float(heartbeat_ttl)
        self._mas_max_workers = max_workers
        self._mas_max_pending = max_pending
        self._mas_max_message_bytes = max_message_bytes
        self._mas_retry_timeout = float(retry_timeout)
        self._mas_command_timeout = float(command_timeout)
        self._mas_probe_interval = float(probe_interval)
        self._mas_lock = threading.RLock()
        self._mas_runtime: Optional[_Runtime] = None
        self._mas_state: Optional[StateManager] = None
        self._mas_counters = _Counters()
        self._mas_gaps = GapTracker()
        _agents.add(self)

    _mas_handlers: Dict[str, HandlerSpec] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._mas_handlers = collect_handlers(cls)

    def __repr__(self) -> str:
        status = "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.id!r} {status}>"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect, load state, subscribe, register, then call :meth:`on_start`.

        Runs in the calling thread and returns once the agent receives
        messages. Messages that arrive before :meth:`on_start` returns wait,
        and are handled after it. An agent that was stopped may be started
        again.

        Raises:
            MASConnectionError: Redis cannot be reached (the URL, password
                hidden, is in the message). No thread is left behind.
            AgentIdInUseError: another run (in this process or another)
                holds a live registration of this id: its heartbeat key
                exists. Nothing of it is touched and no thread is left behind;
                see ``take_over``.
            StateError: the state stored in Redis does not fit ``state_model``.
            AgentNotRunningError: the agent is already running or stopping,
                or :meth:`stop` was called before ``start()`` returned (the
                agent is then stopped).
            Exception: whatever :meth:`on_start` raised, after the agent was
                stopped again.
        """
        with self._mas_lock:
            if self._mas_runtime is not None:
                raise AgentNotRunningError(f"agent {self.id!r} is already started")
            runtime = self._mas_runtime = _Runtime(self)
        try:
            runtime.start()
        except BaseException as exc:
            with self._mas_lock:
                self._mas_runtime = None
                runtime.start_done = True
            runtime.started.set()
            runtime.stopped.set()
            if runtime.stopping and not isinstance(exc, MASError):
                raise AgentNotRunningError(f"agent {self.id!r} was stopped while starting") from None
            raise
        self._mas_state = runtime.state
        _running_agents.add(self)
        try:
            if not runtime.stopping:
                self.on_start()
        except BaseException:
            log.error("Agent %s: on_start raised; stopping", self.id)
            self.stop()
            raise
        finally:
            with self._mas_lock:
                runtime.start_done = True
                if not runtime.stopping:
                    runtime.pool.open()
                hand_over = runtime.stop_by_starter
            runtime.started.set()
        if hand_over:
            self._mas_finish_stop(runtime, time.monotonic() + runtime.stop_timeout)
        if runtime.stopping:
            raise AgentNotRunningError(f"agent {self.id!r} was stopped while starting")
        log.info("Agent %s: started", self.id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent; safe to call twice, from any thread, even from a handler.

        In order: stop reading the channel; let queued messages be handled
        (for at most ``timeout`` seconds in all, for this and the joins);
        call :meth:`on_stop`; stop the heartbeat; delete the registration and
        heartbeat keys and publish DEREGISTER (the state is kept); close the
        connections; join every thread.

        Called from :meth:`on_message`, it does not wait for that handler,
        whose worker thread exits when the handler returns; called from
        :meth:`on_stop` (or from any thread of the agent) while a stop is
        under way, it returns at once. Another thread's second call waits
        for the first stop, at most ``timeout``. Called while :meth:`start`
        runs in another thread, it waits for ``start()`` at most ``timeout``
        (``start()`` then raises :class:`AgentNotRunningError`); if
        ``start()`` is still busy by then (a slow :meth:`on_start`), it
        returns, and ``start()`` stops the agent as soon as it can.

        Raises:
            ValueError: ``timeout`` is not a number of seconds.
        """
        check_seconds("timeout", timeout, zero=True)
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        with self._mas_lock:
            runtime = self._mas_runtime
            if runtime is None:
                return
            second = runtime.stopping
            if second:
                nested = (
                    runtime.stopper is current
                    or runtime.starter is current
                    or runtime.owns_current_thread()
                )
            else:
                runtime.stopping = True
                runtime.stopper = current
                runtime.stop_timeout = float(timeout)
                wait_for_start = not runtime.start_done and runtime.starter is not current
        if second:
            if not nested:
                runtime.stopped.wait(timeout)
            return
        if wait_for_start:
            runtime.started.wait(timeout)
            with self._mas_lock:
                if not runtime.start_done:
                    runtime.stop_by_starter = True
                    log.warning(
                        "Agent %s: start() still busy after %.1f s; it stops the agent when done",
                        self.id, timeout,
                    )
                    return
        self._mas_finish_stop(runtime, deadline)

    def _mas_finish_stop(self, runtime: "_Runtime", deadline: float) -> None:
        if runtime.stopped.is_set():
            return  # start() failed, and cleaned up after itself
        try:
            runtime.stop(deadline)
        finally:
            with self._mas_lock:
                if self._mas_runtime is runtime:
                    self._mas_runtime = None
                _running_agents.discard(self)
            runtime.stopped.set()
        log.info("Agent %s: stopped", self.id)

    def __enter__(self) -> "Agent":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def is_running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        runtime = self._mas_runtime
        return runtime is not None and not runtime.stopping

    @property
    def stats(self) -> AgentStats:
        """A snapshot of the agent's counters."""
        return dataclasses.replace(self._mas_counters.snapshot(), missed=self._mas_gaps.missed)

    # -- messaging -------------------------------------------------------------

    def send(self, target_id: str, payload: Dict[str, Any]) -> str:
        """Publish ``payload`` to the agent ``target_id``.

        Delivery is at most once, as with any Redis pub/sub: an agent that is
        not listening does not get the message.

        Returns:
            The message id.

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError: ``payload`` is not a dict with string keys, or holds a
                value JSON cannot carry.
            ValueError: a bad ``target_id``, or a payload holding NaN,
                infinity, a circular reference, a string that is not valid
                UTF-8 text (a lone surrogate such as ``"\\ud800"``), or a
                reserved key: ``_correlation_id``, ``_expects_reply`` or
                ``_is_reply``, which the library sets on requests and replies;
                or one nested too deeply to encode. Nothing is published.
            MASConnectionError: Redis could not be reached.
        """
        runtime = self._mas_require_runtime()
        _wire.validate_agent_id(target_id, "target id")
        body = _wire.dumps_object(payload, reserved=_wire.RESERVED_KEYS)
        message_id, data = runtime.frame(target_id, body)
        runtime.command(runtime.publish, _wire.agent_channel(target_id), data)
        return message_id

    def send_many(self, messages: Iterable[Tuple[str, Dict[str, Any]]]) -> List[str]:
        """Publish a batch of ``(target_id, payload)`` messages in one round trip.

        Every message is checked before any is published: one bad target or
        payload raises and nothing is sent.

        Returns:
            The message ids, in order.

        Raises:
            AgentNotRunningError, TypeError, ValueError, MASConnectionError: as
                :meth:`send`.
        """
        runtime = self._mas_require_runtime()
        checked = []
        for n, item in enumerate(messages):
            try:
                target_id, payload = item
            except (TypeError, ValueError):
                raise TypeError(
                    f"send_many() takes (target_id, payload) pairs; item {n} is {item!r}"
                ) from None
            _wire.validate_agent_id(target_id, f"target id of item {n}")
            body = _wire.dumps_object(payload, f"payload of item {n}", _wire.RESERVED_KEYS)
            checked.append((target_id, body))
        ids = []
        batch = []
        for target_id, body in checked:
            message_id, data = runtime.frame(target_id, body)
            ids.append(message_id)
            batch.append((_wire.agent_channel(target_id), data))
        if batch:
            runtime.command(runtime.publish_many, batch)
        return ids

    def request(
        self, target_id: str, payload: Dict[str, Any], timeout: float = 30.0
    ) -> AgentMessage:
        """Send a request to ``target_id`` and block until its reply arrives.

        Callable from any thread, including from :meth:`on_message` and typed
        handlers: replies are taken off the channel by the listener thread,
        so a waiting handler does not need a free worker to get its answer.
        Only a reply from ``target_id`` itself resolves the request.

        Returns:
            The reply. Its ``payload`` holds what the other agent replied,
            without the request/reply markers.

        Raises:
            RequestTimeout: no reply within ``timeout`` seconds (a
                ``TimeoutError``); a reply that comes later is dropped.
            RequestError: the other agent replied with an error: its handler
                raised, or refused the payload (``kind == "validation_error"``).
            AgentNotRunningError: this agent is not started, or was stopped
                while waiting.
            TypeError, ValueError, MASConnectionError: as :meth:`send` (the
                payload may not hold the markers this call adds).
        """
        runtime = self._mas_require_runtime()
        _wire.validate_agent_id(target_id, "target id")
        check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict (a JSON object), not {type(payload).__name__}")
        correlation_id = str(uuid.uuid4())
        body = _wire.dumps_object(_wire.request_payload(payload, correlation_id))
        _, data = runtime.frame(target_id, body)
        pending = runtime.requests.add(correlation_id, target_id)
        try:
            runtime.command(
                runtime.publish, _wire.agent_channel(target_id), data, deadline=deadline
            )
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                raise RequestTimeout(
                    f"agent {self.id!r}: no reply from {target_id!r} within {timeout} s"
                    f" (request {correlation_id})"
                )
        finally:
            runtime.requests.discard(correlation_id)
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        assert reply is not None
        error = reply.payload.get(_wire.ERROR)
        if isinstance(error, dict):
            raise RequestError(
                f"{target_id!r} answered request {correlation_id} with an error:"
                f" {error.get('type')}: {error.get('message')}",
                reply=reply,
                kind=str(error.get("type")),
                details=error.get("details") or [],
            )
        return reply

    def discover(self, capabilities: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """The ACTIVE agents having at least one of ``capabilities``.

        Args:
            capabilities: None (or empty) for every ACTIVE agent.

        Returns:
            ``{"id", "capabilities", "metadata"}`` per agent, sorted by id;
            this agent included when it matches.

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError: ``capabilities`` is a bare string or holds non-strings.
            ValueError: a capability is empty or not valid UTF-8 text.
            MASConnectionError: Redis could not be reached.
        """
        runtime = self._mas_require_runtime()
        return runtime.command(runtime.registry.discover, capabilities)

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The agent's state: a read-only snapshot, safe to read from any thread.

        Typed state is an instance of ``state_model`` (``isinstance(agent.state,
        MyState)`` holds; its class is a read-only subclass of the model), so
        it can be passed wherever a ``MyState`` is expected; ``state.counter``
        is ``42``. Untyped state is a read-only mapping of str to str
        (``state["counter"]`` is ``"42"`` after ``update_state({"counter": 42})``,
        exactly what Redis holds).

        Each update replaces the snapshot and never changes one already handed
        out: hold on to it for a consistent view, read ``agent.state`` again
        for the latest. Assigning or deleting a field raises ``TypeError``
        (change the state with :meth:`update_state`). A field holding a list,
        a dict or a nested model reads as a deep copy of its own, which the
        caller may change without effect on the state, on other readers or on
        Redis. ``state.model_copy()`` gives an ordinary, mutable ``MyState``.

        None before the first :meth:`start`; the last state after :meth:`stop`.
        """
        manager = self._mas_state
        return None if manager is None else manager.state

    def update_state(self, updates: Dict[str, Any]) -> None:
        """Apply ``updates`` to the state and persist them, atomically.

        Safe to call from many threads at once: every update lands, in memory
        and in Redis. An invalid update changes nothing; after a failed write
        (whose reply may have been lost after it ran), the fields it touched
        are read back from Redis, so that memory and Redis agree.

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError: keys that are not strings, or values that untyped
                state cannot hold.
            StateError: a field unknown to ``state_model`` or a value that
                does not validate.
            ValueError: a key or a string value that is not valid UTF-8
                text (a lone surrogate).
            MASConnectionError: Redis could not be reached.
        """
        runtime = self._mas_require_runtime()
        runtime.command(runtime.state.update, updates)

    def reset_state(self) -> None:
        """Replace the persisted state by the defaults, atomically.

        Untyped state is deleted; typed state becomes the model's defaults,
        built before anything is written.

        Raises:
            AgentNotRunningError: the agent is not started.
            StateError: ``state_model`` has a field without a default; nothing
                is changed.
            MASConnectionError: Redis could not be reached.
        """
        runtime = self._mas_require_runtime()
        runtime.command(runtime.state.reset)

    # -- hooks -----------------------------------------------------------------

    def get_metadata(self) -> Dict[str, Any]:
        """Metadata published with the registration, for discovery.

        Called in the thread that calls :meth:`start`. Must return a
        JSON-serializable dict whose strings are valid UTF-8 text; otherwise
        :meth:`start` raises ``TypeError`` or ``ValueError`` before anything
        is written.
        """
        return {}

    def on_start(self) -> None:
        """Called at the end of :meth:`start`, in the thread that called it.

        The agent is registered and subscribed; messages wait until this
        returns. If it raises, the agent is stopped and :meth:`start` re-raises.
        """

    def on_stop(self) -> None:
        """Called during :meth:`stop`, in the thread that called it.

        Handlers have finished (or ``timeout`` passed); the agent is still
        registered and may still send. An exception is logged, and the stop
        goes on.
        """

    def on_message(self, message: AgentMessage) -> None:
        """Called for each message, in one of the agent's worker threads.

        Messages from one sender arrive one at a time, in order; messages from
        different senders may arrive in parallel in other threads. An
        exception is logged with the agent and message ids, passed to
        :meth:`on_error`, and the agent goes on.
        """

    def on_error(self, message: AgentMessage, error: Exception) -> None:
        """Called in the worker thread after :meth:`on_message` raised ``error``.

        The error is already logged; override to count it, alert, or reply.
        """

    # -- internals -------------------------------------------------------------

    def _mas_reply(
        self, message: AgentMessage, payload: Dict[str, Any], error: bool = False
    ) -> str:
        runtime = self._mas_require_runtime()
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        if not isinstance(payload, dict):
            raise TypeError(f"a reply must be a dict (a JSON object), not {type(payload).__name__}")
        assert message.correlation_id is not None
        body = _wire.dumps_object(
            _wire.reply_payload(payload, message.correlation_id, error=error), "reply"
        )
        message_id, data = runtime.frame(message.sender_id, body)
        runtime.command(runtime.publish, _wire.agent_channel(message.sender_id), data)
        message._replied = True
        return message_id

    def _mas_require_runtime(self) -> "_Runtime":
        runtime = self._mas_runtime
        if runtime is None or runtime.closed or not runtime.ready:
            raise AgentNotRunningError(f"agent {self.id!r} is not started")
        return runtime


#: Bounds of the constructor's counts: beyond them, a typo rather than a plan.
_MAX_WORKERS = 10_000
_MAX_COUNT = 100_000_000
_MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # Redis's own limit for one string


class _Runtime:
    """What one run of an agent owns: clients, threads and their stop signal."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.name = f"mas-agent[{agent.id}]"
        self.url = agent.redis_url
        self.counters = agent._mas_counters
        self.stop_event = threading.Event()
        self.beat_now = threading.Event()
        # Lifecycle, guarded by the agent's lock: who starts, who stops.
        self.starter = threading.current_thread()
        self.started = threading.Event()  # start() is done, one way or the other
        self.start_done = False
        self.ready = False  # connected: calls may use the clients
        self.stopping = False
        self.stopper: Optional[threading.Thread] = None
        self.stop_timeout = 10.0
        self.stop_by_starter = False
        self.stopped = threading.Event()
        # Calls in flight, so that stop() closes no connection under them.
        self.calls = threading.Condition(threading.Lock())
        self.in_flight = 0
        self.closed = False
        self.closing = threading.Event()
        self.pool = OrderedPool(
            self.name, self.handle, agent._mas_max_workers, agent._mas_max_pending
        )
        self.requests = PendingRequests()
        self.run_id = uuid.uuid4().hex[:16]
        self.message_numbers = itertools.count(1)  # next() is atomic in CPython
        self.numbering = Numbering()
        self.gaps = agent._mas_gaps
        self.listener: Optional[ChannelListener] = None
        self.unfollow: Callable[[], None] = lambda: None
        self.heartbeat: Optional[threading.Thread] = None
        self.token: Optional[str] = None  # of this run's registration
        self.overflowing = 0

    # -- start and stop --------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe; undone, and raised, on any failure or a stop() meanwhile."""
        agent = self.agent
        self.client: redis.Redis = make_client(
            self.url,
            agent._mas_max_workers + 4,
            timeout=agent._mas_command_timeout,
            client_name=_client_name(agent.id),
        )
        # PUBLISH, or SPUBLISH on a cluster: chosen once, not on every send.
        self.publish = self.client.spublish if is_cluster(self.client) else self.client.publish
        self.registry = AgentRegistry(
            self.client, on_skip=lambda n: self.counters.add("skipped_registrations", n)
        )
        self.state = StateManager(agent.id, self.client, agent._mas_state_model)
        try:
            ping(self.client, self.url)
            metadata = agent.get_metadata()
            _wire.dumps_object(metadata, "get_metadata() result")
            self.metadata = metadata
            self.ready = True
            self.abort_if_stopping()
            self.command(self.state.load)
            self.abort_if_stopping()
            self.listener = ChannelListener(
                self.url,
                _wire.agent_channel(agent.id),
                self.receive,
                name=f"{self.name}-listener",
                owner=f"Agent {agent.id}",
                on_disconnect=self.disconnected,
                on_reconnect=self.reconnected,
                on_restart=self.listener_restarted,
                on_fatal=self.fail,
                probe_interval=agent._mas_probe_interval,
                probe_timeout=min(2.0, agent._mas_probe_interval),
                client_name=_client_name(agent.id),
            )
            self.listener.start()
            if is_sentinel_url(self.url):
                self.unfollow = follow_master(self.url, self.master_moved)
            self.abort_if_stopping()
            self.command(self.register)
            self.heartbeat = threading.Thread(
                target=self.beat_loop, name=f"{self.name}-heartbeat", daemon=True
            )
            self.heartbeat.start()
        except BaseException:
            self.unfollow()
            self.stop_event.set()
            self.beat_now.set()
            self.pool.close()
            deadline = time.monotonic() + 5.0
            if self.listener is not None:
                self.listener.stop(self.client, deadline)
            self.join_threads(deadline)
            self.close(deadline)
            raise

    def abort_if_stopping(self) -> None:
        if self.stopping:
            raise AgentNotRunningError(f"agent {self.agent.id!r} was stopped while starting")

    def stop(self, deadline: float) -> None:
        self.unfollow()
        self.stop_event.set()
        self.beat_now.set()
        # A fresh connection whose timeout fits the stop's: the pooled ones may
        # hang on a dead network for a whole command timeout. (A cluster
        # client asks a node for the slot map as it is made; with none
        # answering, the pooled client has to do.)
        left = deadline - time.monotonic()
        try:
            quick: Optional[redis.Redis] = make_client(
                self.url, 1, timeout=max(0.5, min(left, 2.0))
            )
        except (MASConnectionError, redis.RedisError, OSError) as exc:
            log.warning("Agent %s: stopping without Redis: %s", self.agent.id, exc)
            quick = None
        try:
            self.finish(quick or self.client, deadline)
        finally:
            if quick is not None:
                close_client(quick)
            self.close(max(deadline, time.monotonic() + 0.5))

    def finish(self, quick: redis.Redis, deadline: float) -> None:
        agent = self.agent
        if self.listener is not None:
            self.listener.stop(quick, deadline)
        # No reply can arrive any more: fail the waiting requests now, so that
        # handlers blocked in request() return before the drain below.
        self.requests.close(f"agent {agent.id!r} stopped")
        if not self.pool.drain(max(0.0, deadline - time.monotonic())):
            log.warning(
                "Agent %s: handlers still busy at the stop's deadline; dropping %d queued messages",
                agent.id, self.pool.pending,
            )
        dropped = self.pool.close()
        if dropped:
            self.counters.add("dropped_on_stop", dropped)
        try:
            agent.on_stop()
        except Exception:
            log.exception("Agent %s: on_stop raised", agent.id)
        if self.heartbeat is not None and self.heartbeat is not threading.current_thread():
            self.heartbeat.join(max(0.0, deadline - time.monotonic()))
        try:
            if self.token is not None and not AgentRegistry(quick).deregister(
                agent.id, token=self.token
            ):
                log.warning(
                    "Agent %s: the registration belongs to another run; left in place", agent.id
                )
        except ANY_REDIS_ERROR as exc:
            log.warning("Agent %s: could not deregister: %s", agent.id, exc)
        self.join_threads(max(deadline, time.monotonic() + 1.0))

    def close(self, deadline: float) -> None:
        """Refuse new calls, let those in flight end (until ``deadline``), close every connection."""
        with self.calls:
            self.closed = True
            self.closing.set()
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "Agent %s: closing the connections under %d call(s) still running",
                        self.agent.id, self.in_flight,
                    )
                    break
                self.calls.wait(left)
        client = getattr(self, "client", None)
        if client is None:
            return
        try:
            close_client(client)
        except Exception:  # pragma: no cover - closing is best effort
            log.debug("Agent %s: error closing the client", self.agent.id, exc_info=True)

    def join_threads(self, deadline: float) -> None:
        current = threading.current_thread()
        alive = self.pool.join(deadline)
        listener = self.listener.thread if self.listener is not None else None
        for thread in (listener, self.heartbeat):
            if thread is not None and thread.ident is not None and thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    alive.append(thread)
        if alive:
            log.error(
                "Agent %s: threads still running after stop: %s (daemon threads;"
                " a handler that never returns keeps its worker)",
                self.agent.id, ", ".join(t.name for t in alive),
            )

    def owns_current_thread(self) -> bool:
        current = threading.current_thread()
        listener = self.listener.thread if self.listener is not None else None
        return current is listener or current is self.heartbeat or self.pool.in_worker()

    # -- Redis -----------------------------------------------------------------

    def command(self, func: Any, *args: Any, deadline: Optional[float] = None) -> Any:
        """Run a Redis operation for a public call; every failure comes out as a MASError.

        Only a connection that could not be made (nothing was sent) is tried
        again, with capped exponential backoff, for ``retry_timeout`` seconds
        (or until ``deadline``); the first attempt may take
        ``command_timeout`` to connect, however short that window. A command
        that may have run is never sent twice. The answer is waited for at
        most ``command_timeout`` (or until ``deadline``).

        Raises:
            AgentNotRunningError: the agent stopped (before or during the call).
            MASConnectionError: no connection in the retry window; or the
                connection failed or timed out once the command was sent (it
                may have run).
            RedisCommandError: Redis refused the command.
        """
        with self.calls:
            if self.closed:
                raise self.not_running()
            self.in_flight += 1
        try:
            began = time.monotonic()
            connect_by = began + self.agent._mas_retry_timeout
            # The first attempt may take a whole command timeout to connect,
            # however short the retry window (retry_timeout=0: one attempt).
            first_by = max(connect_by, began + self.agent._mas_command_timeout)
            if deadline is not None:
                connect_by = min(connect_by, deadline)
                first_by = min(first_by, deadline)
            delay = 0.05
            attempt_by = first_by
            while True:
                try:
                    with deadlines(attempt_by, deadline):
                        return func(*args)
                except NotConnected as exc:
                    if self.closed:
                        raise self.not_running() from exc
                    attempt_by = connect_by
                    left = connect_by - time.monotonic()
                    if left <= 0:
                        raise MASConnectionError(
                            f"agent {self.agent.id!r}: cannot reach Redis at"
                            f" {redact_url(self.url)}: {redact_text(str(exc), self.url)}"
                        ) from exc
                    self.closing.wait(min(delay, left))
                    delay = min(delay * 2, 1.0)
                except MASError:
                    raise
                except REDIS_ERRORS as exc:
                    if self.closed:
                        raise self.not_running() from exc
                    raise MASConnectionError(
                        f"agent {self.agent.id!r}: Redis at {redact_url(self.url)} failed"
                        f" after the command was sent (it may have run, and is not sent"
                        f" again): {redact_text(str(exc), self.url)}"
                    ) from exc
                except ANY_REDIS_ERROR as exc:
                    raise RedisCommandError(
                        f"agent {self.agent.id!r}: Redis at {redact_url(self.url)} refused"
                        f" the command: {redact_text(str(exc), self.url)}"
                    ) from exc
                except Exception as exc:
                    if self.closed:  # a connection closed under the call by stop()
                        raise self.not_running() from exc
                    raise
        finally:
            with self.calls:
                self.in_flight -= 1
                if not self.in_flight:
                    self.calls.notify_all()

    def not_running(self) -> AgentNotRunningError:
        return AgentNotRunningError(f"agent {self.agent.id!r} is not started")

    def frame(self, target_id: str, body: str) -> Tuple[str, str]:
        """A new message id, and the message to publish, numbered for ``target_id``."""
        message_id = f"{self.run_id}-{next(self.message_numbers)}"
        data = _wire.frame_message(
            self.agent.id,
            target_id,
            body,
            message_id,
            seq=self.numbering.next(target_id),
            sender_run=self.run_id,
        )
        return message_id, data

    def publish_many(self, batch: List[Tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for channel, data in batch:
            publish(pipe, channel, data)
        pipe.execute()

    def register(self, renew: bool = False) -> None:
        """Register (refused if the id is live elsewhere), or register again with our token."""
        agent = self.agent
        self.token = self.registry.register(
            agent.id,
            agent.capabilities,
            self.metadata,
            heartbeat_ttl=agent._mas_heartbeat_ttl,
            take_over=agent._mas_take_over and not renew,
            token=self.token if renew else None,
        )

    # -- heartbeat thread ------------------------------------------------------

    def master_moved(self, address: Tuple[str, int]) -> None:
        """Sentinel watcher thread: a failover happened; move every connection."""
        retire_connections(self.client)
        if self.listener is not None:
            self.listener.reset()

    def disconnected(self) -> None:
        """Listener thread: the subscription was lost or found dead.

        The command connections were most likely lost too: new calls get new
        connections; those in use are closed when their call ends.
        """
        self.counters.add("disconnects")
        retire_connections(self.client)

    def listener_restarted(self, error: BaseException) -> None:
        """Listener thread: it failed (not a lost connection) and starts again."""
        self.counters.add("listener_restarts")

    def fail(self, error: BaseException) -> None:
        """An agent thread: the agent cannot go on (it cannot receive, or its id
        was taken over); report it and stop."""
        agent = self.agent
        log.error("Agent %s: cannot go on (%s); stopping the agent", agent.id, error)
        try:
            agent.on_error(None, error)
        except Exception:
            log.exception("Agent %s: on_error raised", agent.id)
        agent.stop(timeout=5.0)

    def reconnected(self) -> None:
        """Listener thread: resubscribed after an outage; beat (and re-register) now."""
        self.counters.add("reconnects")
        self.beat_now.set()

    def beat_loop(self) -> None:
        failing = False
        while True:
            self.beat_now.wait(self.agent._mas_heartbeat_interval)
            self.beat_now.clear()
            if self.stop_event.is_set():
                return
            listener = self.listener
            if listener is None or not listener.receiving:
                continue  # never claim to be alive while deaf
            try:
                if not self.beat():
                    self.fail(
                        AgentIdInUseError(
                            f"agent id {self.agent.id!r} was taken over by another run",
                            agent_id=self.agent.id,
                            expires_in=None,
                        )
                    )
                    return
            except ANY_REDIS_ERROR as exc:
                if not failing:
                    log.warning("Agent %s: heartbeat failed: %s", self.agent.id, exc)
                failing = True
            except Exception:
                log.exception("Agent %s: heartbeat failed", self.agent.id)
                failing = True
            else:
                if failing:
                    log.info("Agent %s: heartbeat resumed", self.agent.id)
                failing = False

    def beat(self) -> bool:
        """One heartbeat, on this run's registration only; False: stop beating."""
        agent = self.agent
        assert self.token is not None
        outcome = self.registry.refresh(agent.id, self.token, agent._mas_heartbeat_ttl)
        if outcome == REFRESH_GONE and not self.stop_event.is_set():
            log.warning("Agent %s: registration was gone; registering again", agent.id)
            try:
                self.register(renew=True)
            except AgentIdInUseError:
                outcome = REFRESH_TAKEN
        elif outcome == REFRESH_REACTIVATED:
            log.info("Agent %s: was marked INACTIVE; marked ACTIVE again", agent.id)
        if outcome == REFRESH_TAKEN:
            return False
        return True

    # -- listener thread -------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Parse one raw message and queue it; runs in the listener thread."""
        agent = self.agent
        self.counters.add("received")
        if len(data) > agent._mas_max_message_bytes:
            self.counters.add("invalid")
            log.warning(
                "Agent %s: dropped a message of %d bytes (max_message_bytes is %d)",
                agent.id, len(data), agent._mas_max_message_bytes,
            )
            return
        try:
            message = AgentMessage.model_validate_json(data)
            message._take_markers()
        except (ValidationError, ValueError) as exc:
            self.counters.add("invalid")
            log.warning(
                "Agent %s: dropped an invalid message %.200r: %s",
                agent.id, data, _first_error(exc),
            )
            return
        message._reply = weak_reply_sender(agent._mas_reply)
        if message.seq is not None and message.sender_run is not None:
            self.gaps.observe(message.sender_id, message.sender_run, message.seq)
        if message.is_reply:
            # Replies go to the thread waiting in request(), never to on_message.
            assert message.correlation_id is not None
            if not self.requests.resolve(message.correlation_id, message):
                self.counters.add("replies_dropped")
                log.warning(
                    "Agent %s: dropped reply %s from %s: no request %s waits for it"
                    " from that agent (late, or not from the agent asked)",
                    agent.id, message.message_id, message.sender_id, message.correlation_id,
                )
            return
        if self.pool.submit(message.sender_id, message):
            if self.overflowing:
                log.warning(
                    "Agent %s: queue has room again; %d messages were dropped",
                    agent.id, self.overflowing,
                )
                self.overflowing = 0
            return
        self.counters.add("dropped_overflow")
        if not self.overflowing:
            log.warning(
                "Agent %s: %d messages wait for a worker (max_pending); dropping"
                " message %s from %s and those that follow until there is room",
                agent.id, agent._mas_max_pending, message.message_id, message.sender_id,
            )
        self.overflowing += 1

    # -- worker threads --------------------------------------------------------

    def handle(self, message: AgentMessage) -> None:
        agent = self.agent
        spec = agent._mas_handlers.get(action_of(message) or "")
        try:
            if spec is None:
                result = agent.on_message(message)
            elif spec.model is None:
                result = getattr(agent, spec.method)(message)
            else:
                try:
                    body = spec.model.model_validate(body_of(message))
                except ValidationError as exc:
                    self.reject(message, spec, exc)
                    return
                result = getattr(agent, spec.method)(message, body)
            if result is not None and message.expects_reply and not message._replied:
                message.reply(result)
        except Exception as exc:
            self.counters.add("handler_errors")
            where = f"{spec.method}()" if spec is not None else "on_message"
            log.exception(
                "Agent %s: %s failed for message %s from %s",
                agent.id, where, message.message_id, message.sender_id,
            )
            self.reply_error(message, "handler_error", f"{type(exc).__name__}: {exc}")
            try:
                agent.on_error(message, exc)
            except Exception:
                log.exception("Agent %s: on_error raised", agent.id)
        else:
            self.counters.add("handled")

    def reject(self, message: AgentMessage, spec: HandlerSpec, exc: ValidationError) -> None:
        agent = self.agent
        self.counters.add("rejected")
        log.warning(
            "Agent %s: rejected message %s from %s: payload does not fit %s for action %r: %s",
            agent.id, message.message_id, message.sender_id,
            spec.model.__name__ if spec.model else "?", spec.action, _first_error(exc),
        )
        details = json.loads(exc.json(include_url=False, include_input=False))
        self.reply_error(
            message,
            "validation_error",
            f"payload does not fit {spec.model.__name__ if spec.model else '?'}"
            f" for action {spec.action!r}",
            details,
        )

    def reply_error(
        self, message: AgentMessage, kind: str, text: str, details: Optional[List[Any]] = None
    ) -> None:
        """Tell a requester that its request failed, instead of letting it time out."""
        if not message.expects_reply or message._replied:
            return
        try:
            self.agent._mas_reply(message, _wire.error_payload(kind, text, details), error=True)
        except Exception as exc:
            log.warning(
                "Agent %s: could not send the error reply to %s: %s",
                self.agent.id, message.sender_id, exc,
            )


def _client_name(agent_id: str) -> str:
    """What ``CLIENT LIST`` shows for the agent's connections."""
    # Redis takes names of printable ASCII without spaces.
    return "mas-agent:" + "".join(c if "!" <= c <= "~" else "?" for c in agent_id)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "message"
        return f"{where}: {err.get('msg')}"
    return str(exc)
