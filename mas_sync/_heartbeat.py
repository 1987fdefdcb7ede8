"""The registration of one run, and the thread that keeps its heartbeat alive."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import redis

from ._errors import AgentIdInUseError
from ._redis import ANY_REDIS_ERROR
from ._shared_stats import StatsWriter
from ._wire import DELIVERY_RELIABLE
from ._registry import REFRESH_GONE, REFRESH_REACTIVATED, REFRESH_TAKEN, AgentRegistry

log = logging.getLogger(__name__)


class Heartbeat:
    """Registers the agent, then refreshes ``agent:{id}:heartbeat`` from a thread of its own.

    The registration carries a token of this run: a beat refreshes this
    run's registration only, registers again when it was removed (by
    ``prune_dead()``, a flush), and reports the id taken over by another run
    through ``on_taken``. No beat is sent while ``receiving()`` is false: an
    agent never claims to be alive while deaf.

    A reliable agent's run is one instance among those sharing its id: it
    joins a live registration, beats its own entry in it, and its
    deregistration removes the registration only when it is the last live
    instance (see :meth:`AgentRegistry.register`).

    Args:
        registry: The run's registry.
        agent_id: Whose registration.
        capabilities: Registered for discovery.
        metadata: Registered for discovery.
        interval: Seconds between beats.
        ttl: Seconds the heartbeat key lives.
        take_over: Replace a live registration of another run at the first
            registration.
        receiving: Whether the agent receives messages now.
        on_taken: Called in the heartbeat thread when another run took the
            id over; the thread ends after it.
        thread_name: The thread's name.
        delivery: ``"pubsub"`` or ``"reliable"``.
        instance: The name of this instance of a reliable agent (ignored for
            pub/sub).
        stats: Writes the run's counters into Redis after each beat; None
            writes none.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        agent_id: str,
        capabilities: List[str],
        metadata: Dict[str, Any],
        interval: float,
        ttl: float,
        take_over: bool,
        receiving: Callable[[], bool],
        on_taken: Callable[[BaseException], None],
        thread_name: str,
        delivery: str = "pubsub",
        instance: Optional[str] = None,
        stats: Optional[StatsWriter] = None,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.agent_id = agent_id
        self.capabilities = capabilities
        self.metadata = metadata
        self.interval = interval
        self.ttl = ttl
        self.take_over = take_over
        self.delivery = delivery
        # Only a reliable agent's run is one instance among others.
        self.instance = instance if delivery == DELIVERY_RELIABLE else None
        self._receiving = receiving
        self._on_taken = on_taken
        # One event wakes the thread, for a beat now or for a stop (then
        # _stopped is set first): an Event costs a Condition and its deque,
        # which count with a thousand agents in a process.
        self._stopped = False
        self._now = threading.Event()
        self.token: Optional[str] = None  # of this run's registration
        self.thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def register(self, renew: bool = False) -> None:
        """Register (refused if the id is live elsewhere), or register again with our token.

        Raises:
            AgentIdInUseError: another run holds a live registration of the id.
        """
        self.token = self.registry.register(
            self.agent_id,
            self.capabilities,
            self.metadata,
            heartbeat_ttl=self.ttl,
            take_over=self.take_over and not renew,
            token=self.token if renew else None,
            delivery=self.delivery,
            instance=self.instance,
        )

    def start(self) -> None:
        """Start beating (after :meth:`register`)."""
        self.thread.start()

    def beat_now(self) -> None:
        """Beat at once (any thread): the agent receives again after an outage."""
        self._now.set()

    def stop(self) -> None:
        """Ask the thread to end; it beats no more (any thread)."""
        self._stopped = True
        self._now.set()

    def join(self, deadline: float) -> None:
        """Wait for the thread to end, until ``deadline``."""
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(max(0.0, deadline - time.monotonic()))

    def deregister(self, client: redis.Redis) -> None:
        """Remove this run's registration through ``client``; a failure is logged."""
        if self.token is None:
            return
        if self.stats is not None:
            self.stats.remove(client)
        try:
            if not AgentRegistry(client).deregister(
                self.agent_id, token=self.token, instance=self.instance
            ):
                log.warning(
                    "Agent %s: the registration belongs to another run; left in place",
                    self.agent_id,
                )
        except ANY_REDIS_ERROR as exc:
            log.warning("Agent %s: could not deregister: %s", self.agent_id, exc)

    def _loop(self) -> None:
        failing = False
        while True:
            self._now.wait(self.interval)
            self._now.clear()
            if self._stopped:
                return
            if not self._receiving():
                continue  # never claim to be alive while deaf
            try:
                if not self.beat():
                    self._on_taken(
                        AgentIdInUseError(
                            f"agent id {self.agent_id!r} was taken over by another run",
                            agent_id=self.agent_id,
                            expires_in=None,
                        )
                    )
                    return
            except ANY_REDIS_ERROR as exc:
                if not failing:
                    log.warning("Agent %s: heartbeat failed: %s", self.agent_id, exc)
                failing = True
            except Exception:
                log.exception("Agent %s: heartbeat failed", self.agent_id)
                failing = True
            else:
                if failing:
                    log.info("Agent %s: heartbeat resumed", self.agent_id)
                failing = False
                self._write_stats()

    def _write_stats(self) -> None:
        if self.stats is None:
            return
        try:
            self.stats.write()
        except ANY_REDIS_ERROR as exc:
            log.debug("Agent %s: could not write its counters: %s", self.agent_id, exc)

    def beat(self) -> bool:
        """One heartbeat, on this run's registration only; False: stop beating."""
        assert self.token is not None
        outcome = self.registry.refresh(
            self.agent_id, self.token, self.ttl, instance=self.instance
        )
        if outcome == REFRESH_GONE and not self._stopped:
            log.warning("Agent %s: registration was gone; registering again", self.agent_id)
            try:
                self.register(renew=True)
            except AgentIdInUseError:
                outcome = REFRESH_TAKEN
        elif outcome == REFRESH_REACTIVATED:
            log.info("Agent %s: was marked INACTIVE; marked ACTIVE again", self.agent_id)
        return outcome != REFRESH_TAKEN
