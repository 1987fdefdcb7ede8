"""One run of an agent, from start() to stop(): its clients, its parts and threads, their order."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import redis

from . import _json, _signing, _wire
from ._admission import Admission
from ._breakers import Breakers
from ._rates import RateLimiter
from ._calls import CallGate
from ._dead_letters import DeadLetters
from ._dedupe import Seen
from ._discovery_cache import DiscoveryCache
from ._errors import AgentNotRunningError, MASConnectionError
from ._futures import RequestFutures
from ._handling import AgentHooks, Handling
from ._heartbeat import Heartbeat
from ._inbox import Inbox
from ._options import AgentOptions
from ._outbox import Outbox
from ._pubsub import PubSubTransport
from ._redis import close_client, deadlines, make_client, ping, retire_connections
from ._redis import follow_master, is_sentinel_url
from ._message import AgentMessage
from ._registry import AgentRegistry
from ._requests import PendingRequests
from ._schedule import Schedule
from ._shared_stats import StatsWriter
from ._state import StateManager
from ._stats import Counters, GapTracker
from ._streams import StreamTransport
from ._timers import Timers
from ._transport import Receipt, Transport
from ._workers import OrderedPool

log = logging.getLogger(__name__)

#: Seconds past a stop's deadline that its own calls to Redis (the wake-ups,
#: the deregistration, a reliable agent's hand-over) may still take: enough
#: for them on a Redis that answers, however late the handlers ended, and a
#: bound on them all when it does not.
STOP_REDIS_GRACE = 2.0


class AgentRun:
    """What one run of an agent owns, and the order in which it starts and stops them.

    Threads (daemon, named ``mas-agent[{id}]-...``): the transport's receiver
    (``-listener``), the workers (``-worker-{n}``), the heartbeat
    (``-heartbeat``), and, once something waits on a clock (a periodic
    method, a request future, a handler's time limit), the timers
    (``-timers``). The lifecycle flags are guarded by the agent's lock (see
    :mod:`._lifecycle`).

    Args:
        agent: Whose run.
        url: The Redis URL.
        capabilities: Registered for discovery.
        options: The agent's settings.
        counters: The agent's counters (they outlive the run).
        gaps: The agent's gap tracker (it outlives the run).
    """

    #: What moves the run's messages: the one place that picks the transport.
    #: Called as ``transport_factory(client, url, agent_id, events,
    #: thread_name, probe_interval, client_name)``; the reliable one also
    #: with ``options=``.
    transport_factory: Callable[..., Transport] = PubSubTransport
    reliable_transport_factory: Callable[..., Transport] = StreamTransport

    def __init__(
        self,
        agent: AgentHooks,
        url: str,
        capabilities: Any,
        options: AgentOptions,
        counters: Counters,
        gaps: GapTracker,
    ) -> None:
        self.agent = agent
        self.agent_id = agent.id
        self.name = f"mas-agent[{agent.id}]"
        self.url = url
        self.capabilities = capabilities
        self.options = options
        self.counters = counters
        # Lifecycle, guarded by the agent's lock: who starts, who stops.
        self.starter = threading.current_thread()
        self.started = threading.Event()  # start() is done, one way or the other
        self.start_done = False
        self.ready = False  # connected: calls may use the clients
        self.stopping = False
        self.stopper: Optional[threading.Thread] = None
        self.stop_timeout = 10.0
        self.stop_by_starter = False
        self.on_start_called = False  # on_stop() is called only after it
        self.stopped = threading.Event()
        self.calls = CallGate(agent.id, url, options.retry_timeout, options.command_timeout)
        self.requests = PendingRequests()
        self.client: Optional[redis.Redis] = None
        self.unfollow: Callable[[], None] = lambda: None
        self.gaps = gaps
        self.lock = threading.Lock()
        self.bytes_client: Optional[redis.Redis] = None  # made for dead_letters() when needed
        # Made by start(), in this order.
        self.transport: Optional[Transport] = None
        self.pool: Optional[OrderedPool] = None
        self.heartbeat: Optional[Heartbeat] = None
        self.discovery_cache: Optional[DiscoveryCache] = None
        self.timers = Timers(f"{self.name}-timers", f"Agent {agent.id}")
        self.schedule: Optional[Schedule] = None

    # -- start and stop --------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe; undone, and raised, on any failure or a stop() meanwhile."""
        options = self.options
        client_name = _client_name(self.agent_id)
        self.client = client = make_client(
            self.url, options.max_workers + 4, timeout=options.command_timeout,
            client_name=client_name,
        )
        self.registry = AgentRegistry(
            client, on_skip=lambda n: self.counters.add("skipped_registrations", n)
        )
        self.state = StateManager(self.agent_id, client, options.state_model)
        args = (client, self.url, self.agent_id, self, f"{self.name}-listener",
                options.probe_interval, client_name)
        reliable = options.delivery == "reliable"
        if reliable:
            transport = self.reliable_transport_factory(*args, options=options)
        else:
            transport = self.transport_factory(*args)
        self.transport = transport
        instance = options.instance if reliable else None
        self.clock = clock = _signing.RedisClock(client)
        breakers = None
        if options.breaker_failures is not None:
            breakers = Breakers(
                self.agent_id, options.breaker_failures, options.breaker_cooldown,
                client if options.breaker_shared else None, self.counters,
                options.command_timeout, lambda: self.stopping,
            )
        self.outbox = Outbox(
            self.agent_id, transport, self.calls, self.requests, instance, self.signer(),
            breakers, options.send_rate, self.counters,
        )
        self.admission = admission = self.make_admission()
        seen = Seen(
            client, self.agent_id, options.dedupe_window, shared_channel=reliable,
            # A replay on the shared channel is a duplicate as long as a nonce is kept.
            claim=2 * options.signature_window + 1 if options.keyring is not None else 0.0,
        )
        self.futures = RequestFutures(self.outbox, self.timers)
        self.handling = Handling(
            self.agent, self.counters, self.outbox, seen, admission, self.timers,
            options.handler_timeout,
        )
        self.pool = pool = OrderedPool(
            self.name, self.work, options.max_workers, options.max_pending
        )
        self.schedule = Schedule(
            self.agent, self.agent._mas_periodic, self.timers,
            lambda key, job: pool.submit(key, job, bounded=False), self.counters,
        )
        self.inbox = Inbox(
            self.agent_id, options.max_message_bytes, options.max_pending, pool,
            self.requests, self.counters, self.gaps, self.outbox.reply, instance, admission,
        )
        try:
            # The listener connects and subscribes meanwhile, in its thread;
            # transport.start() below waits for the confirmation.
            begin = getattr(transport, "begin", None)
            if begin is not None:
                begin()
            ping(client, self.url)
            if options.keyring is not None:
                clock.measure()
            metadata = self.agent.get_metadata()
            _json.dumps_object(metadata, "get_metadata() result")
            self.heartbeat = Heartbeat(
                self.registry, self.agent_id, self.capabilities, metadata,
                options.heartbeat_interval, options.heartbeat_ttl, options.take_over,
                lambda: transport.receiving, self.failed, f"{self.name}-heartbeat",
                delivery=options.delivery, instance=options.instance,
                stats=StatsWriter(
                    client, self.agent_id, instance, self.counters,
                    lambda: pool.pending, lambda: pool.active, options.heartbeat_interval,
                ),
            )
            self.ready = True
            self.abort_if_stopping()
            self.calls.run(self.state.load)
            self.abort_if_stopping()
            transport.start()
            refresh = options.discovery_refresh
            if refresh is not None:
                self.discovery_cache = DiscoveryCache(
                    self.registry, self.url, refresh, self.name, f"Agent {self.agent_id}",
                    options.probe_interval, client_name,
                )
                self.discovery_cache.start()
            if is_sentinel_url(self.url):
                self.unfollow = follow_master(self.url, self.master_moved)
            self.abort_if_stopping()
            self.calls.run(self.heartbeat.register)
            if self.discovery_cache is not None:
                self.discovery_cache.read_now(self.agent_id)  # itself, without its event
            self.heartbeat.start()
        except BaseException:
            self.unfollow()
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self.schedule.stop()
            self.timers.close()
            pool.close()
            deadline = time.monotonic() + 5.0
            transport.stop(client, deadline)
            if self.discovery_cache is not None:
                self.discovery_cache.stop(client, deadline)
            self.join_threads(deadline)
            self.close(deadline)
            raise

    def open(self) -> None:
        """``on_start()`` returned: the workers take messages, the periodic methods start."""
        assert self.pool is not None and self.schedule is not None
        self.pool.open()
        self.schedule.start()

    def work(self, item: Any) -> None:
        """Worker: handle a message, or run scheduled work."""
        if isinstance(item, AgentMessage):
            self.handling.handle(item)
        else:
            item()

    def signer(self) -> Optional[Callable[[str], str]]:
        """What signs the run's messages, with the keyring's signing key of the moment."""
        keyring = self.options.keyring
        if keyring is None:
            return None
        clock = self.clock

        def sign(text: str) -> str:
            key = keyring.signing_key
            return text if key is None else _signing.sign(text, key, clock.now())

        return sign

    def voucher(self) -> Optional[Callable[[bytes], str]]:
        """What vouches for the messages the agent requeues, with its signing key of the moment."""
        keyring = self.options.keyring
        key = keyring.signing_key if keyring is not None else None
        if key is None:
            return None
        agent_id, clock = self.agent_id, self.clock
        return lambda envelope: _signing.vouch(envelope, agent_id, key, clock.now())

    def make_admission(self) -> Optional[Admission]:
        """The run's checks of what it receives; None when the agent asks for none."""
        options = self.options
        if (options.keyring is None and options.accept_from is None
                and options.accept_capabilities is None and options.rate_limit is None):
            return None
        assert self.client is not None
        limiter = None
        if options.rate_limit is not None:
            limiter = RateLimiter(self.client, self.agent_id, options.rate_limit)
        return Admission(
            self.agent_id, self.client, self.registry, options.keyring, options.require_signed,
            options.signature_window, options.accept_from, options.accept_capabilities,
            limiter.allow if limiter is not None else None, self.clock, self.counters,
            shared_channel=options.delivery == "reliable",
        )

    def dead_letters(self) -> DeadLetters:
        """The agent's stored messages and dead letters, read through a client of raw bytes."""
        with self.lock:
            if self.bytes_client is None:
                transport = self.transport
                raw = getattr(transport, "bytes_client", None)
                self.bytes_client = raw if raw is not None else make_client(
                    self.url, 2, decode=False, timeout=self.options.command_timeout
                )
            return DeadLetters(self.bytes_client, self.agent_id)

    def abort_if_stopping(self) -> None:
        """Raise when a stop() came while starting."""
        if self.stopping:
            raise AgentNotRunningError(f"agent {self.agent_id!r} was stopped while starting")

    def stop(self, deadline: float) -> None:
        """Stop in order (see :meth:`mas_sync.Agent.stop`), by ``deadline``.

        Every call to Redis made here ends by ``deadline + STOP_REDIS_GRACE``.
        """
        bound = deadline + STOP_REDIS_GRACE
        with deadlines(bound, bound):
            self._stop(deadline)

    def _stop(self, deadline: float) -> None:
        if self.schedule is not None:
            self.schedule.stop()  # first: no periodic run starts any more
        self.unfollow()
        if self.heartbeat is not None:
            self.heartbeat.stop()
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
            log.warning("Agent %s: stopping without Redis: %s", self.agent_id, exc)
            quick = None
        try:
            self.finish(quick or self.client, deadline)
        finally:
            if quick is not None:
                close_client(quick)
            self.close(max(deadline, time.monotonic() + 0.5))

    def finish(self, quick: Any, deadline: float) -> None:
        """Stop receiving, drain the workers, call on_stop, deregister, join."""
        agent_id = self.agent_id
        pool, transport = self.pool, self.transport
        assert pool is not None and transport is not None
        transport.stop(quick, deadline)
        if self.discovery_cache is not None:
            self.discovery_cache.stop(quick, deadline)
        self.inbox.flush()  # what the transport received last
        # No reply can arrive any more: fail the waiting requests now, so that
        # handlers blocked in request() return before the drain below.
        self.requests.close(f"agent {agent_id!r} stopped")
        self.outbox.close()  # and senders waiting for their turn (send_rate)
        if not pool.drain(max(0.0, deadline - time.monotonic())):
            log.warning(
                "Agent %s: handlers still busy at the stop's deadline; dropping %d queued messages",
                agent_id, pool.pending,
            )
        dropped = pool.close()
        if dropped:
            self.counters.add("dropped_on_stop", dropped)
        self.timers.close()
        self.timers.join(deadline)
        if self.on_start_called:
            try:
                self.agent.on_stop()
            except Exception:
                log.exception("Agent %s: on_stop raised", agent_id)
        if self.heartbeat is not None:
            self.heartbeat.join(deadline)
            self.heartbeat.deregister(quick)
        # A worker still busy at the deadline has a handler that does not
        # return, and the clock's threads, which call the done-callbacks of
        # request futures, may be held by one: not waited for beyond it. The
        # others are ending (their reads are bounded), and get a moment more.
        self.join_threads(deadline, max(deadline, time.monotonic() + 1.0))

    def close(self, deadline: float) -> None:
        """Refuse new calls, let those in flight end (until ``deadline``), close the connections."""
        self.calls.close(deadline)
        if self.client is None:
            return
        try:
            if self.transport is not None:
                self.transport.close()
            raw = getattr(self.transport, "bytes_client", None)
            if self.bytes_client is not None and self.bytes_client is not raw:
                close_client(self.bytes_client)
            close_client(self.client)
        except Exception:  # pragma: no cover - closing is best effort
            log.debug("Agent %s: error closing the client", self.agent_id, exc_info=True)

    def join_threads(self, deadline: float, others_until: Optional[float] = None) -> None:
        """Join the workers until ``deadline``, and the other threads of the run until
        ``others_until`` (the same by default); log those still alive."""
        current = threading.current_thread()
        alive = self.pool.join(deadline) if self.pool is not None else []
        alive.extend(self.timers.join(deadline))
        if others_until is not None:
            deadline = others_until
        others = self.transport.threads() if self.transport is not None else []
        if self.heartbeat is not None:
            others.append(self.heartbeat.thread)
        if self.discovery_cache is not None:
            others.append(self.discovery_cache.thread)
        for thread in others:
            if thread.ident is not None and thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    alive.append(thread)
        if alive:
            log.error(
                "Agent %s: threads still running after stop: %s (daemon threads;"
                " a handler, or a future's done-callback, that never returns keeps its thread)",
                self.agent_id, ", ".join(t.name for t in alive),
            )

    def discover(self, capabilities: Optional[Iterable[str]]) -> List[Dict[str, Any]]:
        """What :meth:`mas_sync.Agent.discover` returns: from the cache when it has one."""
        wanted = _wire.validate_capabilities(capabilities)
        if self.discovery_cache is not None:
            return self.discovery_cache.discover(wanted)
        return self.registry.discover(wanted)

    def owns_current_thread(self) -> bool:
        """True in a thread of this run."""
        current = threading.current_thread()
        if self.heartbeat is not None and current is self.heartbeat.thread:
            return True
        if current in self.timers.threads():
            return True
        if self.transport is not None and current in self.transport.threads():
            return True
        return self.pool is not None and self.pool.in_worker()

    # -- what the transport and the Sentinel watcher report ---------------------

    def received(self, data: bytes, receipt: Optional[Receipt] = None) -> None:
        """Transport thread: one raw message for the agent."""
        self.inbox.receive(data, receipt)

    @property
    def batches(self) -> bool:
        """Whether the inbox holds messages until :meth:`flush`."""
        return self.inbox.holds

    def flush(self) -> None:
        """Transport thread: the messages received so far are a batch."""
        self.inbox.flush()

    def room(self) -> int:
        """Transport thread: how many more messages the workers may queue."""
        pool = self.pool
        return 0 if pool is None else self.options.max_pending - pool.pending

    def reclaimed(self, n: int) -> None:
        """Transport thread: ``n`` entries of another consumer were taken."""
        self.counters.add("reclaimed", n)

    def disconnected(self) -> None:
        """Transport thread: the subscription was lost or found dead.

        The command connections were most likely lost too: new calls get new
        connections; those in use are closed when their call ends.
        """
        self.counters.add("disconnects")
        retire_connections(self.client)

    def reconnected(self) -> None:
        """Transport thread: receiving again after an outage; beat (and re-register) now."""
        self.counters.add("reconnects")
        if self.heartbeat is not None:
            self.heartbeat.beat_now()

    def restarted(self, error: BaseException) -> None:
        """Transport thread: receiving failed (not a lost connection) and starts again."""
        self.counters.add("listener_restarts")

    def failed(self, error: BaseException) -> None:
        """A thread of the run: the agent cannot go on (it cannot receive, or its id
        was taken over); report it and stop."""
        agent = self.agent
        log.error("Agent %s: cannot go on (%s); stopping the agent", agent.id, error)
        try:
            agent.on_error(None, error)
        except Exception:
            log.exception("Agent %s: on_error raised", agent.id)
        agent.stop(timeout=5.0)

    def master_moved(self, address: Tuple[str, int]) -> None:
        """Sentinel watcher thread: a failover happened; move every connection."""
        retire_connections(self.client)
        if self.transport is not None:
            self.transport.moved()
        if self.discovery_cache is not None:
            self.discovery_cache.moved()


def _client_name(agent_id: str) -> str:
    """What ``CLIENT LIST`` shows for the agent's connections."""
    # Redis takes names of printable ASCII without spaces.
    return "mas-agent:" + "".join(c if "!" <= c <= "~" else "?" for c in agent_id)
