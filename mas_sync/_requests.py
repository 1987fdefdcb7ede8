"""Requests waiting for their replies, matched by correlation id and sender."""

from __future__ import annotations

import threading
from typing import Callable, Dict, Optional

from ._errors import AgentNotRunningError
from ._message import AgentMessage


class _Pending:
    """One request waiting: woken through ``event``, or through ``on_done`` when it has one."""

    __slots__ = ("target_id", "event", "reply", "error", "on_done")

    def __init__(
        self, target_id: str, on_done: Optional[Callable[["_Pending"], None]] = None
    ) -> None:
        self.target_id = target_id
        self.event: Optional[threading.Event] = threading.Event() if on_done is None else None
        self.reply: Optional[AgentMessage] = None
        self.error: Optional[BaseException] = None
        self.on_done = on_done

    def done(self) -> None:
        """The reply (or the error) is in: wake whoever waits."""
        if self.on_done is not None:
            self.on_done(self)
        else:
            assert self.event is not None
            self.event.set()


class PendingRequests:
    """The table of an agent's requests that wait for a reply.

    Thread-safe. A reply resolves a request only when its correlation id is
    known *and* it comes from the agent the request was sent to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: Dict[str, _Pending] = {}
        self._closed: Optional[str] = None

    def add(
        self,
        correlation_id: str,
        target_id: str,
        on_done: Optional[Callable[[_Pending], None]] = None,
    ) -> _Pending:
        """Register a request before it is sent.

        Args:
            on_done: Called (in the listener's thread, or the stopping one)
                with the entry once its reply or its error is in; None wakes
                its ``event`` instead.

        Raises:
            AgentNotRunningError: the table was closed by a stop.
        """
        pending = _Pending(target_id, on_done)
        with self._lock:
            if self._closed is not None:
                raise AgentNotRunningError(self._closed)
            self._table[correlation_id] = pending
        return pending

    def discard(self, correlation_id: str) -> None:
        """Forget a request (answered, timed out or failed)."""
        with self._lock:
            self._table.pop(correlation_id, None)

    def take(self, correlation_id: str) -> Optional[_Pending]:
        """Forget a request and return it; None when a reply (or a stop) took it first."""
        with self._lock:
            return self._table.pop(correlation_id, None)

    def resolve(self, correlation_id: str, reply: AgentMessage) -> bool:
        """Hand ``reply`` to the waiting caller.

        Returns:
            False when no request waits for it from that sender: a late reply,
            or one from an agent that was not asked.
        """
        with self._lock:
            pending = self._table.get(correlation_id)
            if pending is None or pending.target_id != reply.sender_id:
                return False
            del self._table[correlation_id]
        pending.reply = reply
        pending.done()
        return True

    def close(self, reason: str) -> int:
        """Fail every waiting request at once with ``reason``, and refuse new ones.

        Returns:
            How many requests were failed.
        """
        with self._lock:
            self._closed = reason
            waiting = list(self._table.values())
            self._table.clear()
        for pending in waiting:
            pending.error = AgentNotRunningError(
                f"{reason} while waiting for a reply from {pending.target_id!r}"
            )
            pending.done()
        return len(waiting)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)
