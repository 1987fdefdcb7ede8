"""The public face of an agent: its settings, its calls and the hooks a subclass overrides."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

from pydantic import BaseModel

from . import _json, _lifecycle, _process, _wire
from ._checks import check_seconds
from ._dead_letters import DeadLetter, When
from ._errors import AgentNotRunningError
from ._futures import GatherResult
from ._handlers import HandlerSpec, collect_handlers
from ._message import AgentMessage
from ._options import AgentOptions
from ._rates import RateLimit
from ._redis import check_redis_url
from ._run import AgentRun
from ._schedule import PeriodicSpec, ScheduledCall, collect_periodic
from ._signing import Keyring
from ._state import StateManager
from ._stats import AgentStats, Counters, GapTracker


class Agent:
    """An agent that talks to its peers over Redis pub/sub (or streams), with blocking calls.

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
      ``heartbeat_interval`` seconds;
    - for a reliable agent (``delivery="reliable"``), a reader of its stream
      ``agent.stream:{id}``;
    - once something waits on a clock (a :func:`~mas_sync.periodic` method,
      :meth:`call_later`, :meth:`request_future`, a handler's time limit),
      the timers, which hand what is due to the workers.

    At most ``max_pending`` messages wait for a worker; a message arriving
    beyond that is dropped, logged and counted in :attr:`stats`, so that a slow
    handler never stops the listener from reading Redis.

    Methods decorated with :func:`~mas_sync.handler` receive the messages whose
    ``payload["action"]`` names them, validated into a pydantic model; other
    messages go to :meth:`on_message`. Methods decorated with
    :func:`~mas_sync.periodic` run on the workers every so many seconds while
    the agent runs.

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
        delivery: ``"pubsub"`` (the default: at most once, as the async
            framework) or ``"reliable"``: the agent's inbox is the Redis
            stream ``agent.stream:{id}``, read through the consumer group
            ``agents``; a message is acknowledged once handled, retried when
            its handler raises, and kept while the agent is stopped (see
            README, Reliable delivery). A reliable agent also listens on
            ``agent.{id}`` for peers that publish.
        instance: The name of this process among the instances of a reliable
            agent (its consumer is ``{id}-{instance}``); same rules as an
            id. Default ``{hostname}-{pid}``. A process that restarts with
            the same name takes up at once the messages it had not
            acknowledged.
        max_attempts: Reliable delivery: deliveries of one message (counted
            by Redis, so crashes count) before it goes to the dead-letter
            stream ``agent.dlq:{id}``.
        visibility_timeout: Reliable delivery: seconds after which a message
            that an instance received but did not acknowledge (it crashed,
            or hangs) is taken by another instance.
        retry_delay: Reliable delivery: seconds before a failed message is
            tried again; doubled at each further attempt, up to
            ``visibility_timeout``.
        dedupe_window: Seconds for which a handled message is remembered by
            its ``message_id`` (in Redis, for every instance): the same id
            arriving again within them (a redelivery after a crash, a sender
            that sent it twice) is not handled again. None (the default)
            checks nothing.
        stream_maxlen: Reliable delivery: about how many entries the
            agent's stream keeps (for :meth:`replay`), and its dead-letter
            stream; an entry not yet acknowledged is never removed.
        keyring: Signing keys (see :class:`~mas_sync.Keyring` and README,
            Security): every message the agent sends is signed with its
            signing key, and a signed message it receives is refused unless
            its signature verifies under a key it holds, was made within
            ``signature_window`` of Redis' clock, by a key that may sign for
            its ``sender_id``, with a nonce not seen before. None (the
            default) signs and checks nothing.
        require_signed: Refuse unsigned messages too (replies included).
            Needs a ``keyring``.
        signature_window: Seconds by which a signature's time may differ
            from Redis' clock; nonces are remembered twice as long.
        accept_from: Sender ids whose messages the agent accepts; others
            are refused (``not_allowed``). Replies are not concerned: only
            the agent asked can answer a request. None accepts any sender.
        accept_capabilities: Senders registered with any of these
            capabilities are accepted too (registrations are read once per
            sender every 5 seconds).
        breaker_failures: Failed requests in a row to one target (timeouts,
            and error replies but for the caller's own faults such as
            ``validation_error``) after which its circuit breaker opens:
            :meth:`request` to it raises :class:`~mas_sync.CircuitOpenError`
            at once, sending nothing, for ``breaker_cooldown`` seconds; then
            one trial request is let through, whose success closes the
            breaker and whose failure opens it again (see README, Circuit
            breakers). None (the default): no breaker.
        breaker_cooldown: Seconds a breaker stays open before its trial.
        breaker_shared: Keep the breakers in Redis (``mas_sync:breaker:{target}``),
            shared by every agent that sets it: what one learns protects the
            others. False (the default): this run's own breakers. Where Redis
            cannot be asked, the run decides alone, with a warning.
        send_rate: The most this agent sends to any one target: a rate such
            as ``"100/s"`` (``/s``, ``/min``, ``/h``, ``/day``; a burst of one
            second's worth) or a :class:`~mas_sync.RateLimit`. :meth:`send`,
            :meth:`send_many` and :meth:`request` wait for their turn instead
            of exceeding it (a batch goes out in pieces, in order, as turns
            come); each target has its own pace, so a busy one holds up no
            other. A request whose turn would come after its ``timeout``
            raises :class:`~mas_sync.RequestTimeout` at once. :meth:`stop`
            wakes a waiting sender, which raises
            :class:`~mas_sync.AgentNotRunningError`. Replies are not paced.
            None (the default) sends at once.
        rate_limit: The most this agent takes from any one sender, the same
            way (``"100/s"`` or a :class:`~mas_sync.RateLimit`): messages
            from one sender beyond it are refused as ``rate_limited``. The
            count is kept in Redis (``mas_sync:rate:{id}:{sender}``), so it
            holds across the instances of an agent; if Redis cannot answer,
            messages are let through (see README, Rate limits). None (the
            default) takes everything.
        discovery_cache: Keep a copy of the registry, so that :meth:`discover`
            answers without reading Redis (see README, Discovery): ``True``,
            or the seconds between two full reads (``True``: 5). The copy is
            filled by one full read, then follows the REGISTER and DEREGISTER
            events of ``mas.system``, each naming a registration the cache
            reads again; a full read every interval catches what no event
            announces (a heartbeat that expired, a status changed, the live
            instances of a reliable agent). While its
            subscription is lost, :meth:`discover` reads Redis. It costs a
            thread (``-discovery``) and a pub/sub connection. False (the
            default): every :meth:`discover` reads Redis.
        handler_timeout: Seconds a call of :meth:`on_message` or of a typed
            handler (unless it has its own ``timeout``) may take: one still
            running past it is logged with its stack and counted
            (``stats.handler_timeouts``), and a requester gets an error reply
            at once (``RequestError``, ``kind == "handler_timeout"``) instead
            of waiting for its own timeout. Python cannot stop a thread: the
            call goes on, and keeps its worker, until it returns (see README,
            Behaviours). None (the default): no limit.

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
        delivery: str = "pubsub",
        instance: Optional[str] = None,
        max_attempts: int = 5,
        visibility_timeout: float = 30.0,
        retry_delay: float = 1.0,
        dedupe_window: Optional[float] = None,
        stream_maxlen: int = 10_000,
        keyring: Optional[Keyring] = None,
        require_signed: bool = False,
        signature_window: float = 300.0,
        accept_from: Optional[Iterable[str]] = None,
        accept_capabilities: Optional[Iterable[str]] = None,
        breaker_failures: Optional[int] = None,
        breaker_cooldown: float = 30.0,
        breaker_shared: bool = False,
        send_rate: Union[str, RateLimit, None] = None,
        rate_limit: Union[str, RateLimit, None] = None,
        discovery_cache: Union[bool, float] = False,
        handler_timeout: Optional[float] = None,
    ) -> None:
        self.id: str = _wire.validate_agent_id(agent_id)
        self.capabilities: List[str] = _wire.validate_capabilities(capabilities)
        if not isinstance(redis_url, str) or not redis_url:
            raise TypeError("redis_url must be a non-empty str")
        check_redis_url(redis_url)
        self.redis_url: str = redis_url
        self._mas_options = AgentOptions(
            state_model, heartbeat_interval, heartbeat_ttl, max_workers, max_pending,
            max_message_bytes, retry_timeout, command_timeout, probe_interval, take_over,
            delivery, instance, max_attempts, visibility_timeout, retry_delay, dedupe_window,
            stream_maxlen, keyring, require_signed, signature_window, accept_from,
            accept_capabilities, breaker_failures, breaker_cooldown, breaker_shared,
            send_rate, rate_limit, discovery_cache=discovery_cache,
            handler_timeout=handler_timeout,
        )
        signing_key = keyring.signing_key if keyring is not None else None
        if signing_key is not None and not signing_key.may_sign_for(self.id):
            raise ValueError(
                f"the signing key {signing_key.key_id!r} of the keyring may not sign for"
                f" {self.id!r} (its senders are {sorted(signing_key.senders or ())})"
            )
        self._mas_lock = threading.RLock()
        self._mas_run: Optional[AgentRun] = None
        self._mas_state: Optional[StateManager] = None
        self._mas_counters = Counters()
        self._mas_gaps = GapTracker()
        _process.track(self)

    _mas_handlers: Dict[str, HandlerSpec] = {}
    _mas_periodic: Tuple[PeriodicSpec, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._mas_handlers = collect_handlers(cls)
        cls._mas_periodic = collect_periodic(cls)

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
            RedisCommandError: Redis refused a command the start needs (an
                ACL, ``maxmemory``): say the consumer group of a reliable
                agent's stream.
            AgentNotRunningError: the agent is already running or stopping,
                or :meth:`stop` was called before ``start()`` returned (the
                agent is then stopped).
            Exception: whatever :meth:`on_start` raised, after the agent was
                stopped again.
        """
        _lifecycle.start(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent; safe to call twice, from any thread, even from a handler.

        In order: stop reading the channel; stop the :func:`~mas_sync.periodic`
        schedules and cancel the :meth:`call_later` calls not yet made; let
        queued messages (and a periodic run under way) be handled (for at
        most ``timeout`` seconds in all, for this and the joins);
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
        _lifecycle.stop(self, timeout)

    def __enter__(self) -> "Agent":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def is_running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        run = self._mas_run
        return run is not None and not run.stopping

    @property
    def stats(self) -> AgentStats:
        """A snapshot of the agent's counters."""
        return dataclasses.replace(self._mas_counters.snapshot(), missed=self._mas_gaps.missed)

    # -- messaging -------------------------------------------------------------

    def send(self, target_id: str, payload: Dict[str, Any]) -> str:
        """Send ``payload`` to the agent ``target_id``.

        A reliable target (see ``delivery``) gets it in its stream, where it
        waits until handled, also while the target is stopped. Any other
        target gets it by pub/sub, at most once: an agent that is not
        listening does not get the message. With a ``send_rate``, it first
        waits for its turn to ``target_id``.

        Returns:
            The message id.

        Raises:
            AgentNotRunningError: the agent is not started, or was stopped
                while waiting for its turn (``send_rate``).
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
        run = self._mas_require_run()
        _wire.validate_agent_id(target_id, "target id")
        body = _json.dumps_object(payload, reserved=_wire.RESERVED_KEYS)
        return run.outbox.send(target_id, body)

    def send_many(self, messages: Iterable[Tuple[str, Dict[str, Any]]]) -> List[str]:
        """Publish a batch of ``(target_id, payload)`` messages in one round trip.

        Every message is checked before any is published: one bad target or
        payload raises and nothing is sent. With a ``send_rate``, the batch
        goes out in order, in as many round trips as its turns take; a stop
        meanwhile raises ``AgentNotRunningError`` with the rest unsent.

        Returns:
            The message ids, in order.

        Raises:
            AgentNotRunningError, TypeError, ValueError, MASConnectionError: as
                :meth:`send`.
        """
        run = self._mas_require_run()
        checked = []
        for n, item in enumerate(messages):
            try:
                target_id, payload = item
            except (TypeError, ValueError):
                raise TypeError(
                    f"send_many() takes (target_id, payload) pairs; item {n} is {item!r}"
                ) from None
            _wire.validate_agent_id(target_id, f"target id of item {n}")
            body = _json.dumps_object(payload, f"payload of item {n}", _wire.RESERVED_KEYS)
            checked.append((target_id, body))
        return run.outbox.send_many(checked)

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
                ``TimeoutError``); a reply that comes later is dropped. With
                a ``send_rate``, the wait for its turn counts against
                ``timeout``: a turn that would come too late raises at once.
            RequestError: the other agent replied with an error: its handler
                raised, or refused the payload (``kind == "validation_error"``).
            CircuitOpenError: the circuit breaker of ``target_id`` is open
                (see ``breaker_failures``): nothing was sent.
            AgentNotRunningError: this agent is not started, or was stopped
                while waiting.
            TypeError, ValueError, MASConnectionError: as :meth:`send` (the
                payload may not hold the markers this call adds).
        """
        run = self._mas_require_run()
        _wire.validate_agent_id(target_id, "target id")
        check_seconds("timeout", timeout)
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict (a JSON object), not {type(payload).__name__}")
        return run.outbox.request(target_id, payload, timeout)

    def request_future(
        self, target_id: str, payload: Dict[str, Any], timeout: float = 30.0
    ) -> "concurrent.futures.Future[AgentMessage]":
        """Send a request to ``target_id`` and return a future of its reply, without waiting.

        It returns once Redis accepted the request (as :meth:`send` does). The
        listener thread resolves the future when the reply arrives, and
        the agent's timers fail it at ``timeout``; no thread waits meanwhile,
        so one caller may start many requests and wait for them with
        ``concurrent.futures.wait()`` or ``as_completed()``. ``future.cancel()``
        gives the request up: its reply, if it comes, is dropped. Callbacks
        added with ``add_done_callback()`` run in the agent's listener (or
        timers) thread: keep them short, and never wait in them for another
        reply.

        Returns:
            A ``concurrent.futures.Future`` whose ``result()`` is the reply
            (as :meth:`request` returns it) or raises what :meth:`request`
            would: ``RequestTimeout``, ``RequestError``, ``CircuitOpenError``,
            ``AgentNotRunningError`` (the agent stopped), or the error of
            sending the request (``MASConnectionError``, ``RedisCommandError``).

        Raises:
            AgentNotRunningError: this agent is not started.
            TypeError, ValueError: as :meth:`request`; nothing is sent.
        """
        run = self._mas_require_run()
        _wire.validate_agent_id(target_id, "target id")
        check_seconds("timeout", timeout)
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict (a JSON object), not {type(payload).__name__}")
        return run.futures.start([target_id], payload, timeout)[0]

    def request_many(
        self,
        targets: Union[str, Iterable[str]],
        payload: Dict[str, Any],
        timeout: float = 30.0,
    ) -> GatherResult:
        """Send one request to each of ``targets`` and gather the replies, within ``timeout``.

        Args:
            targets: Agent ids (each asked once, in order), or one string: a
                capability, whose ACTIVE agents (this one left out) are asked,
                as :meth:`discover` finds them.
            payload: The same for every request.
            timeout: Seconds, for the whole call (finding the agents of a
                capability included): it returns with what came by then, or
                as soon as every agent answered.

        Returns:
            A :class:`~mas_sync.GatherResult`: the replies by agent, and for
            each agent without one, why (``RequestTimeout``, ``RequestError``,
            ``CircuitOpenError``, a failed send). Requests are sent together,
            in one round trip (in their turns, with a ``send_rate``).

        Raises:
            AgentNotRunningError: this agent is not started.
            TypeError, ValueError: a bad target or payload; nothing is sent.
            MASConnectionError: Redis could not be reached to find the
                agents of a capability.
        """
        run = self._mas_require_run()
        check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict (a JSON object), not {type(payload).__name__}")
        if isinstance(targets, str):
            found = run.calls.run(run.discover, [targets], deadline=deadline)
            ids = [agent["id"] for agent in found if agent["id"] != self.id]
        else:
            if isinstance(targets, bytes):
                raise TypeError("targets must be agent ids or a capability (str), not bytes")
            ids = []
            for n, target_id in enumerate(targets):
                ids.append(_wire.validate_agent_id(target_id, f"target id {n}"))
            ids = list(dict.fromkeys(ids))
        return run.futures.gather(ids, payload, timeout, deadline)

    def discover(self, capabilities: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        """The ACTIVE agents having at least one of ``capabilities``.

        Args:
            capabilities: None (or empty) for every ACTIVE agent.

        Returns:
            ``{"id", "capabilities", "metadata", "delivery", "instances"}``
            per agent, sorted by id; this agent included when it matches (see
            :meth:`AgentRegistry.discover`). With ``discovery_cache``, from
            the agent's copy of the registry: an agent that starts or stops
            shows there once its event arrives, one whose heartbeat expired
            at the next full read; ``capabilities`` and ``metadata`` are
            shared by the answers (do not change them in place).

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError: ``capabilities`` is a bare string or holds non-strings.
            ValueError: a capability is empty or not valid UTF-8 text.
            MASConnectionError: Redis could not be reached.
        """
        run = self._mas_require_run()
        return run.calls.run(run.discover, capabilities)

    # -- work on a clock ------------------------------------------------------

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> ScheduledCall:
        """Call ``fn(*args, **kwargs)`` once, in ``seconds``, on one of the agent's workers.

        :meth:`stop` cancels the calls not yet made (and waits, within its
        ``timeout``, for one under way). An exception is logged, counted in
        ``stats.scheduled_errors`` and passed to ``on_error(None, error)``.
        Called before :meth:`on_start` returned, the call waits for it.

        Returns:
            A :class:`~mas_sync.ScheduledCall`, whose ``cancel()`` takes it
            back if it has not started.

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError: ``fn`` is not callable.
            ValueError: ``seconds`` is not 0 or more.
        """
        run = self._mas_require_run()
        check_seconds("seconds", seconds, zero=True)
        if not callable(fn):
            raise TypeError(f"call_later() takes a callable, not {fn!r}")
        assert run.schedule is not None
        return run.schedule.call_later(seconds, fn, args, kwargs)

    # -- reliable delivery: stored messages and dead letters --------------------

    def dead_letters(self, count: int = 100) -> List[DeadLetter]:
        """The oldest ``count`` messages this agent gave up on (``agent.dlq:{id}``).

        Raises:
            AgentNotRunningError: the agent is not started.
            ValueError: ``count`` is not a positive int.
            MASConnectionError: Redis could not be reached.
        """
        run = self._mas_require_run()
        return run.calls.run(run.dead_letters().list, count)

    def requeue_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Put dead letters back in this agent's stream, to be handled again.

        Args:
            ids: :attr:`DeadLetter.id` of those to requeue; None for all.

        An agent that signs (``keyring``) vouches for each message it puts
        back, so that a signed one is not refused as stale or replayed (its
        own signature must still hold: see README, Security).

        Returns:
            How many were requeued (each is removed from the dead letters
            once it is back in the stream).

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError, ValueError: ``ids`` is not a list of entry ids.
            MASConnectionError: Redis could not be reached.
        """
        run = self._mas_require_run()
        return run.calls.run(run.dead_letters().requeue, ids, run.voucher())

    def purge_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete dead letters (``ids``, or all of them when None); returns how many.

        Raises:
            AgentNotRunningError: the agent is not started.
            TypeError, ValueError: ``ids`` is not a list of entry ids.
            MASConnectionError: Redis could not be reached.
        """
        run = self._mas_require_run()
        return run.calls.run(run.dead_letters().purge, ids)

    def history(
        self, since: Optional[When] = None, until: Optional[When] = None
    ) -> List[AgentMessage]:
        """The messages this agent's stream still holds, received from ``since`` to ``until``.

        Oldest first; the stream keeps about ``stream_maxlen`` of them, handled
        or not. The messages cannot be replied to.

        Args:
            since: A ``datetime`` or seconds since the epoch; None from the oldest.
            until: The same; None up to the newest.

        Raises:
            AgentNotRunningError: the agent is not started.
            ValueError: ``since`` or ``until`` is not a time.
            MASConnectionError: Redis could not be reached.
        """
        run = self._mas_require_run()
        return run.calls.run(lambda: list(run.dead_letters().history(since, until)))

    def replay(self, since: Optional[When] = None, until: Optional[When] = None) -> int:
        """Hand the stored messages from ``since`` to ``until`` to the handlers again.

        For debugging and recovery: each message of :meth:`history` goes, in
        the calling thread and in order, to its typed handler or
        :meth:`on_message`, as when it arrived, but nothing is replied or
        acknowledged (a handler's failure is logged and passed to
        :meth:`on_error`).

        Returns:
            How many messages were handled without an error.

        Raises: as :meth:`history`.
        """
        run = self._mas_require_run()
        return sum(run.handling.replay(message) for message in self.history(since, until))

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
        run = self._mas_require_run()
        run.calls.run(run.state.update, updates)

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
        run = self._mas_require_run()
        run.calls.run(run.state.reset)

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
        goes on. Only a run whose :meth:`on_start` was called calls it: a
        stop that comes while :meth:`start` connects calls neither.
        """

    def on_message(self, message: AgentMessage) -> None:
        """Called for each message, in one of the agent's worker threads.

        Messages from one sender arrive one at a time, in order; messages from
        different senders may arrive in parallel in other threads. An
        exception is logged with the agent and message ids, passed to
        :meth:`on_error`, and the agent goes on.
        """

    def on_error(self, message: Optional[AgentMessage], error: Exception) -> None:
        """Called in the worker thread after a handler raised ``error``.

        ``message`` is the message being handled; None when a
        :func:`~mas_sync.periodic` method or a :meth:`call_later` call raised.
        The error is already logged; override to count it, alert, or reply.
        """

    # -- internals -------------------------------------------------------------

    def _mas_require_run(self) -> AgentRun:
        run = self._mas_run
        if run is None or run.calls.closed or not run.ready:
            raise AgentNotRunningError(f"agent {self.id!r} is not started")
        return run
