"""The pub/sub transport: PUBLISH to ``agent.{id}``, a listener thread on the agent's channel."""

from __future__ import annotations

import threading
from typing import Any, List, Optional

import redis

from . import _wire
from ._listener import ChannelListener
from ._routes import Routes
from ._transport import Batch, Direct, TransportEvents


#: Seconds a listener whose run takes messages in batches (to record the
#: nonces of signed messages in one Redis call) waits for more before it
#: hands over what it has: a sender that waits for each ``PUBLISH`` otherwise
#: makes batches of one, and a Redis call per message.
BATCH_WAIT = 0.001


class PubSubTransport:
    """Moves one run's messages over Redis pub/sub (at most once), as the async framework does.

    Sending publishes each message on its target's channel (SPUBLISH on a
    cluster), or adds it to the target's stream when the target reads one
    (:mod:`._routes`), a batch in one pipeline. Receiving is a
    :class:`~mas_sync._listener.ChannelListener` thread on the agent's
    channel, with a pub/sub connection of its own.

    Args:
        client: The run's command client, for publishing.
        url: The Redis URL, for the listener's connection.
        agent_id: Whose channel to read.
        events: Where the listener's events go.
        thread_name: The listener thread's name.
        probe_interval: Seconds of silence before the listener PINGs Redis.
        client_name: The connection's name in ``CLIENT LIST``.
    """

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        agent_id: str,
        events: TransportEvents,
        thread_name: str,
        probe_interval: float,
        client_name: str,
    ) -> None:
        self._client = client
        self._url = url
        self._agent_id = agent_id
        self._events = events
        self._thread_name = thread_name
        self._probe_interval = probe_interval
        self._client_name = client_name
        self._routes = Routes(client)
        self._listener: Optional[ChannelListener] = None

    def send(self, batch: Batch, direct: Direct = False) -> List[Optional[Exception]]:
        """Send each ``(target_id, data)`` to its target's stream or channel (:mod:`._routes`)."""
        return self._routes.send(batch, direct)

    def begin(self) -> None:
        """Start subscribing to ``agent.{id}`` without waiting: :meth:`start` waits.

        The run calls it first, so that the listener connects and subscribes
        while the run's own connection loads the state.
        """
        if self._listener is not None:
            return
        events = self._events
        self._listener = ChannelListener(
            self._url,
            _wire.agent_channel(self._agent_id),
            events.received,
            name=self._thread_name,
            owner=f"Agent {self._agent_id}",
            on_idle=events.flush if events.batches else None,
            idle_after=BATCH_WAIT if events.batches else 0.0,
            on_disconnect=events.disconnected,
            on_reconnect=events.reconnected,
            on_restart=events.restarted,
            on_fatal=events.failed,
            probe_interval=self._probe_interval,
            probe_timeout=min(2.0, self._probe_interval),
            client_name=self._client_name,
        )
        self._listener.launch()

    def start(self) -> None:
        """Subscribe to ``agent.{id}`` (unless :meth:`begin` did); returns once confirmed."""
        self.begin()
        assert self._listener is not None
        self._listener.start()

    @property
    def receiving(self) -> bool:
        """True while the subscription is confirmed and not known to be lost."""
        listener = self._listener
        return listener is not None and listener.receiving

    def moved(self) -> None:
        """Resubscribe on a new connection (to the new master)."""
        if self._listener is not None:
            self._listener.reset()

    def stop(self, client: Any, deadline: float) -> None:
        """Stop the listener (woken through ``client``) and join it until ``deadline``."""
        if self._listener is not None:
            self._listener.stop(client, deadline)

    def close(self) -> None:
        """Nothing to close: the listener closes its connection as it ends."""

    def threads(self) -> List[threading.Thread]:
        """The listener thread, once started."""
        return [self._listener.thread] if self._listener is not None else []
