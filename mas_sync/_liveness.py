"""Liveness of registrations: reading it, and condemning or keeping them, for health checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import redis

from . import _wire
from ._discovery import RAW, SCAN_COUNT, RegistrationReader
from ._scripts import load_script

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Liveness:
    """What one read of a registration says about its agent.

    Attributes:
        agent_id: The id.
        status: The ``status`` field, None if the hash is gone.
        token: The ``token`` field ("" when missing).
        beating: Whether the heartbeat key exists.
        ttl_ms: The hash's own TTL in ms (-1: none; -2: gone).
    """

    agent_id: str
    status: Optional[str]
    token: str
    beating: bool
    ttl_ms: int


class LivenessReader(RegistrationReader):
    """The reads and writes of :class:`~mas_sync.MASService` and ``prune_dead()``.

    Holds no state of its own: :class:`~mas_sync._registry.AgentRegistry`
    sets the attributes.
    """

    _condemn: Any

    def _id_batches(self) -> Iterable[List[str]]:
        """The ids of the registration hashes, in batches of at most SCAN_COUNT.

        Keys whose name is not UTF-8 are logged and skipped.
        """
        batch: List[str] = []
        for raw in self._registration_keys():
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._log_skip(raw, "its name is not UTF-8")
                continue
            agent_id = _wire.agent_id_from_key(key)
            if agent_id is not None:
                batch.append(agent_id)
            if len(batch) >= SCAN_COUNT:
                yield batch
                batch = []
        if batch:
            yield batch

    def _read_liveness(self, agent_ids: List[str]) -> List[Liveness]:
        """Status, token, heartbeat and TTL of each registration, in one pipeline.

        A key that fails (no longer a hash) is skipped; one whose status or
        token is not UTF-8 is logged and skipped.
        """
        pipe = self._redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            agent_key = _wire.agent_key(agent_id)
            pipe.execute_command("HMGET", agent_key, "status", "token", **RAW)
            pipe.exists(_wire.heartbeat_key(agent_id))
            pipe.pttl(agent_key)
        replies = pipe.execute(raise_on_error=False)
        found = []
        for n, agent_id in enumerate(agent_ids):
            fields, beating, ttl = replies[3 * n:3 * n + 3]
            if isinstance(fields, Exception) or isinstance(beating, Exception):
                log.debug("Registry: skipping %s: %s", agent_id, fields or beating)
                continue
            try:
                status, token = (None if v is None else v.decode("utf-8") for v in fields)
            except UnicodeDecodeError:
                self._log_skip(_wire.agent_key(agent_id).encode("utf-8"),
                               "its status or token is not UTF-8")
                continue
            found.append(Liveness(
                agent_id, status, token or "", bool(beating),
                ttl if isinstance(ttl, int) else -1,
            ))
        return found

    def _persist(self, agent_ids: List[str]) -> None:
        """Remove the TTL a prune pass gave these registrations: they beat again."""
        if not agent_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.persist(_wire.agent_key(agent_id))
        pipe.execute(raise_on_error=False)

    def _condemn_all(
        self, dead: Sequence[Liveness], mark: bool, expire_ms: Optional[int]
    ) -> List[Tuple[bool, bool]]:
        """Mark INACTIVE (``mark``) and schedule the removal (``expire_ms``) of ``dead``.

        Each registration only if its heartbeat is still missing (checked in
        the same script on one server) and it still holds the token read.

        Returns:
            ``(marked, scheduled)`` per registration.
        """
        if not dead:
            return []
        args = ["1" if mark else "0", _wire.STATUS_ACTIVE, _wire.STATUS_INACTIVE,
                "" if expire_ms is None else str(expire_ms)]
        replies: List[Any] = []
        if self._cluster:
            # One script per key, each on its own slot: a key that fails
            # does not stop the others.
            for item in dead:
                try:
                    replies.append(self._redis.eval(
                        load_script("condemn"), 1, _wire.agent_key(item.agent_id), item.token,
                        *args,
                    ))
                except redis.ResponseError as exc:
                    replies.append(exc)
        else:
            pipe = self._redis.pipeline(transaction=False)
            for item in dead:
                self._condemn(
                    keys=[_wire.agent_key(item.agent_id), _wire.heartbeat_key(item.agent_id)],
                    args=[item.token, *args],
                    client=pipe,
                )
            replies = pipe.execute(raise_on_error=False)
        outcomes = []
        for item, reply in zip(dead, replies):
            if isinstance(reply, Exception):
                log.debug("Registry: could not judge %s: %s", item.agent_id, reply)
                outcomes.append((False, False))
            else:
                outcomes.append((bool(reply[0]), bool(reply[1])))
        return outcomes


def checked_ttl_ms(seconds: object, what: str) -> int:
    """``seconds`` as whole milliseconds (at least 1), checked."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {seconds!r}")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{what} must be a positive, finite number of seconds, not {seconds!r}")
    return max(1, int(seconds * 1000))
