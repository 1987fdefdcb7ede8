"""MASService: logs registrations and marks agents whose heartbeat is gone."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, List, Optional

import redis

from . import _wire
from ._connection import close_client, is_cluster, make_client, ping, redact_url, retire_connections
from ._listener import ANY_REDIS_ERROR, ChannelListener
from ._sentinel import follow_master, is_sentinel_url

log = logging.getLogger(__name__)

# Marks one agent INACTIVE when it is ACTIVE and registered before the grace
# cutoff (ARGV[1]). Atomic, so a registration deleted by a clean stop in
# between is never brought back as a stub.
_MARK_ONE = """
local f = redis.call('HMGET', KEYS[1], 'status', 'registered_at')
if f[1] ~= ARGV[2] then return 0 end
local at = tonumber(f[2])
if at and at > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
return 1
"""
# The same, when the heartbeat key (KEYS[2]) is gone: one round trip on one
# server. A cluster keeps the two keys on different slots, so there the
# heartbeats are checked first and _MARK_ONE runs for the agents without one.
_MARK_INACTIVE = "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n" + _MARK_ONE


class MASService:
    """The registry service: a health monitor and a log of registrations.

    It is optional: agents register, discover and talk to each other without
    it. What it adds is health: every ``check_interval`` seconds it marks
    INACTIVE each ACTIVE agent whose heartbeat key is gone, so that an agent
    killed without a clean stop drops out of ``discover()`` within about
    ``heartbeat_ttl + check_interval``. An agent registered less than
    ``heartbeat_timeout`` seconds ago is given that long to send its first
    heartbeat (async agents send it just after registering).

    Threads (daemon): ``mas-service-listener`` reads ``mas.system`` and logs
    REGISTER and DEREGISTER; ``mas-service-health`` runs the checks.

    Args:
        redis_url: Where Redis is.
        heartbeat_timeout: Grace period, in seconds, for a new registration.
        check_interval: Seconds between two health checks.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        heartbeat_timeout: float = 60,
        check_interval: float = 30.0,
    ) -> None:
        for name, value in (("heartbeat_timeout", heartbeat_timeout), ("check_interval", check_interval)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")
        if not check_interval > 0:
            raise ValueError("check_interval must be positive")
        self.redis_url = redis_url
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.check_interval = float(check_interval)
        self._lock = threading.Lock()
        self._client: Optional[redis.Redis] = None
        self._listener: Optional[ChannelListener] = None
        self._health: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._unfollow: Callable[[], None] = lambda: None

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
            self._mark_inactive = client.register_script(_MARK_INACTIVE)
            self._listener = listener
            if is_sentinel_url(self.redis_url):
                self._unfollow = follow_master(self.redis_url, self._master_moved)
            self._stop = threading.Event()
            self._health = threading.Thread(
                target=self._health_loop, args=(client,), name="mas-service-health", daemon=True
            )
            self._health.start()
        log.info("MASService: started on %s", redact_url(self.redis_url))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads (joined within ``timeout``) and close the connections.

        Safe to call twice and from any thread.
        """
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
            redis.RedisError: Redis failed during the check.
        """
        client = self._client
        if client is None:
            raise RuntimeError("MASService is not running")
        return self._check(client)

    def _check(self, client: redis.Redis) -> List[str]:
        cutoff = str(time.time() - self.heartbeat_timeout)
        marked: List[str] = []
        batch: List[str] = []

        args = [cutoff, _wire.STATUS_ACTIVE, _wire.STATUS_INACTIVE]
        cluster = is_cluster(client)

        def flush() -> None:
            pipe = client.pipeline(transaction=False)
            if cluster:
                for agent_id in batch:
                    pipe.exists(_wire.heartbeat_key(agent_id))
                silent = [a for a, beating in zip(batch, pipe.execute()) if not beating]
                for agent_id in silent:
                    if client.eval(_MARK_ONE, 1, _wire.agent_key(agent_id), *args):
                        marked.append(agent_id)
            else:
                for agent_id in batch:
                    self._mark_inactive(
                        keys=[_wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)],
                        args=args,
                        client=pipe,
                    )
                for agent_id, changed in zip(batch, pipe.execute()):
                    if changed:
                        marked.append(agent_id)
            batch.clear()

        for key in client.scan_iter(match=_wire.AGENT_KEY_PATTERN, count=1000):
            agent_id = _wire.agent_id_from_key(key)
            if agent_id is not None:
                batch.append(agent_id)
            if len(batch) >= 1000:
                flush()
        if batch:
            flush()
        for agent_id in sorted(marked):
            log.warning("MASService: agent %s missed its heartbeat; marked INACTIVE", agent_id)
        return sorted(marked)

    # -- threads ---------------------------------------------------------------

    def _master_moved(self, address: Any) -> None:
        client, listener = self._client, self._listener
        if client is not None:
            retire_connections(client)
        if listener is not None:
            listener.reset()

    def _health_loop(self, client: redis.Redis) -> None:
        failing = False
        while not self._stop.wait(self.check_interval):
            try:
                self._check(client)
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
            event = json.loads(data)
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
