"""MASService: logs registrations and marks agents whose heartbeat is gone."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import redis

from . import _json, _wire
from ._checks import check_seconds
from ._errors import MASConnectionError, RedisCommandError
from ._listener import ChannelListener
from ._liveness import Liveness, checked_ttl_ms
from ._redis import ANY_REDIS_ERROR, REDIS_ERRORS, check_redis_url, close_client, follow_master
from ._redis import is_cluster, is_sentinel_url, make_client, ping, redact_text, redact_url
from ._redis import retire_connections
from ._registry import AgentRegistry

log = logging.getLogger(__name__)


def _server_time(client: redis.Redis) -> float:
    """Redis's clock, in seconds: the one clock every judgement of liveness uses."""
    if is_cluster(client):
        # One node's clock, the same node every time (nodes' clocks differ).
        reply = client.time(target_nodes=client.get_default_node())
    else:
        reply = client.time()
    if isinstance(reply, dict):  # a cluster's reply, by node
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) + int(micros) / 1e6


class MASService:
    """The registry service: a health monitor and a log of registrations.

    It is optional: agents register, discover and talk to each other without
    it, and ``discover()`` already leaves out every agent whose heartbeat key
    is gone. What it adds is health: every ``check_interval`` seconds it marks
    INACTIVE each ACTIVE agent whose heartbeat key is gone (so that async
    agents, whose discovery reads the status alone, stop finding it), and,
    with ``prune_after``, has Redis remove such registrations.

    Liveness is judged on Redis alone: the heartbeat key's TTL, and Redis's
    ``TIME`` for the grace below; ``registered_at``, written with the agent's
    clock, is not read. A registration this service has seen beating is
    marked at the first check that finds its heartbeat gone. One it has never
    seen beating (a new one, or one found at the service's start) is given
    ``heartbeat_timeout`` seconds, from the check that first found it
    silent, to send a heartbeat (async agents write theirs just after
    registering). A new registration of the id (a new token) starts afresh.

    Threads (daemon): ``mas-service-listener`` reads ``mas.system`` and logs
    REGISTER and DEREGISTER; ``mas-service-health`` runs the checks.

    Args:
        redis_url: Where Redis is.
        heartbeat_timeout: Grace period, in seconds, for a registration never
            seen beating.
        check_interval: Seconds between two health checks.
        prune_after: Seconds after which a registration judged dead is
            removed from Redis (its state is kept), unless it beats again
            first: at that check, its hash gets a TTL of ``prune_after``
            (see :meth:`AgentRegistry.prune_dead`). None (the default) keeps
            dead registrations, marked INACTIVE.

    Raises:
        TypeError, ValueError: a bad argument.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        heartbeat_timeout: float = 60,
        check_interval: float = 30.0,
        *,
        prune_after: Optional[float] = None,
    ) -> None:
        check_seconds("heartbeat_timeout", heartbeat_timeout, zero=True)
        check_seconds("check_interval", check_interval)
        if prune_after is not None:
            checked_ttl_ms(prune_after, "prune_after")
        check_redis_url(redis_url)
        self.redis_url = redis_url
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.check_interval = float(check_interval)
        self.prune_after: Optional[float] = None if prune_after is None else float(prune_after)
        self._lock = threading.Lock()
        self._client: Optional[redis.Redis] = None
        self._registry: Optional[AgentRegistry] = None
        self._listener: Optional[ChannelListener] = None
        self._health: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._unfollow: Callable[[], None] = lambda: None
        # What the checks remember, by id, in Redis server time: the token
        # last seen beating, and (token, when) first seen silent.
        self._judging = threading.Lock()
        self._seen_beating: Dict[str, str] = {}
        self._silent_since: Dict[str, Tuple[str, float]] = {}

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._client is not None

    def start(self) -> None:
        """Connect, subscribe to ``mas.system`` and start the health checks.

        Raises:
            MASConnectionError: Redis cannot be reached; no thread is left.
            RuntimeError: the service is already running.
        """
        with self._lock:
            if self._client is not None:
                raise RuntimeError("MASService is already running")
            client = make_client(self.redis_url, 4)
            try:
                ping(client, self.redis_url)
                listener = ChannelListener(
                    self.redis_url,
                    _wire.SYSTEM_CHANNEL,
                    self._on_system_message,
                    name="mas-service-listener",
                    owner="MASService",
                )
                listener.start()
            except BaseException:
                close_client(client)
                raise
            self._client = client
            # One registry a run: it logs each unreadable key once, not every check.
            self._registry = AgentRegistry(client)
            self._listener = listener
            if is_sentinel_url(self.redis_url):
                self._unfollow = follow_master(self.redis_url, self._master_moved)
            self._stop = threading.Event()
            self._health = threading.Thread(
                target=self._health_loop, args=(client, self._registry), name="mas-service-health",
                daemon=True,
            )
            self._health.start()
        log.info("MASService: started on %s", redact_url(self.redis_url))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads (joined within ``timeout``) and close the connections.

        Safe to call twice and from any thread.

        Raises:
            ValueError: ``timeout`` is not a number of seconds.
        """
        check_seconds("timeout", timeout, zero=True)
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            deadline = time.monotonic() + timeout
            self._unfollow()
            self._unfollow = lambda: None
            self._stop.set()
            assert self._listener is not None and self._health is not None
            self._listener.stop(client, deadline)
            if self._health is not threading.current_thread():
                self._health.join(max(0.0, deadline - time.monotonic()))
            for thread in (self._listener.thread, self._health):
                if thread.is_alive():
                    log.error("MASService: thread %s still running after stop", thread.name)
            close_client(client)
        log.info("MASService: stopped")

    def __enter__(self) -> "MASService":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def check_health(self) -> List[str]:
        """Run one health check now, in the calling thread.

        Returns:
            The ids of the agents it marked INACTIVE, sorted.

        Raises:
            RuntimeError: the service is not running.
            MASConnectionError: Redis could not be reached, or failed during
                the check.
            RedisCommandError: Redis refused a command of the check.
        """
        client, registry = self._client, self._registry
        if client is None or registry is None:
            raise RuntimeError("MASService is not running")
        try:
            return self._check(client, registry)
        except REDIS_ERRORS as exc:
            raise MASConnectionError(
                f"MASService: Redis at {redact_url(self.redis_url)} failed:"
                f" {redact_text(str(exc), self.redis_url)}"
            ) from exc
        except ANY_REDIS_ERROR as exc:
            raise RedisCommandError(
                f"MASService: Redis at {redact_url(self.redis_url)} refused a command:"
                f" {redact_text(str(exc), self.redis_url)}"
            ) from exc

    def _check(self, client: redis.Redis, registry: AgentRegistry) -> List[str]:
        expire_ms = (
            None if self.prune_after is None else checked_ttl_ms(self.prune_after, "prune_after")
        )
        marked: List[str] = []
        scheduled: List[str] = []
        with self._judging:
            now = _server_time(client)
            present: Set[str] = set()
            for batch in registry._id_batches():
                found = registry._read_liveness(batch)
                present.update(item.agent_id for item in found)
                registry._persist(
                    [item.agent_id for item in found if item.beating and item.ttl_ms >= 0]
                )
                dead = [item for item in found if self._is_dead(item, now)]
                to_judge = [
                    item for item in dead
                    if item.status == _wire.STATUS_ACTIVE
                    or (expire_ms is not None and item.ttl_ms == -1)
                ]
                for item, (was_marked, was_scheduled) in zip(
                    to_judge, registry._condemn_all(to_judge, True, expire_ms)
                ):
                    if was_marked:
                        marked.append(item.agent_id)
                    if was_scheduled:
                        scheduled.append(item.agent_id)
            for memory in (self._seen_beating, self._silent_since):
                for agent_id in [a for a in memory if a not in present]:
                    del memory[agent_id]
        for agent_id in sorted(marked):
            log.warning("MASService: agent %s missed its heartbeat; marked INACTIVE", agent_id)
        for agent_id in sorted(scheduled):
            log.info(
                "MASService: agent %s is dead; its registration goes in %g s unless it beats",
                agent_id, self.prune_after,
            )
        return sorted(marked)

    def _is_dead(self, item: Liveness, now: float) -> bool:
        """Judge one registration, with ``_judging`` held; ``now`` is Redis's time."""
        agent_id = item.agent_id
        if item.status is None:  # deleted since the scan
            return False
        if item.beating:
            self._seen_beating[agent_id] = item.token
            self._silent_since.pop(agent_id, None)
            return False
        if self._seen_beating.get(agent_id) == item.token:
            return True  # it beat, and stopped: no grace
        token, since = self._silent_since.get(agent_id, ("", None))
        if since is None or token != item.token:
            since = now
            self._silent_since[agent_id] = (item.token, now)
        return now - since >= self.heartbeat_timeout

    # -- threads ---------------------------------------------------------------

    def _master_moved(self, address: Any) -> None:
        client, listener = self._client, self._listener
        if client is not None:
            retire_connections(client)
        if listener is not None:
            listener.reset()

    def _health_loop(self, client: redis.Redis, registry: AgentRegistry) -> None:
        failing = False
        while not self._stop.wait(self.check_interval):
            try:
                self._check(client, registry)
            except ANY_REDIS_ERROR as exc:
                if not failing:
                    log.warning("MASService: health check failed: %s", exc)
                failing = True
            except Exception:
                log.exception("MASService: health check failed")
                failing = True
            else:
                failing = False

    def _on_system_message(self, data: bytes) -> None:
        try:
            event = _json.loads_strict(data)
            kind = event["type"]
            agent_id = event["agent_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("MASService: ignored an invalid system message %.200r", data)
            return
        if kind == "REGISTER":
            log.info(
                "MASService: agent %s registered with capabilities %s",
                agent_id, event.get("capabilities", []),
            )
        elif kind == "DEREGISTER":
            log.info("MASService: agent %s deregistered", agent_id)
        else:
            log.warning("MASService: unknown system message type %r", kind)
