"""Dead letters and stored messages of a reliable agent: read, requeue, purge, replay.

A reliable agent's stream ``agent.stream:{id}`` keeps the messages it
received (up to ``stream_maxlen``); its dead-letter stream ``agent.dlq:{id}``
keeps those it gave up on, each with why. Both can be read without the agent
running: :class:`DeadLetters` needs only a client.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import redis
from pydantic import ValidationError

from . import _wire
from ._inbox import parse_message
from ._message import AgentMessage

#: A point in time: a ``datetime`` (naive means local time) or seconds since the epoch.
When = Union[datetime.datetime, float, int]

#: Entries read per round trip.
PAGE = 500


@dataclass(frozen=True)
class DeadLetter:
    """A message that a reliable agent gave up on.

    Attributes:
        id: Its id in ``agent.dlq:{id}`` (for requeue and purge).
        envelope: The message JSON as it was sent (bytes that are not UTF-8
            shown escaped).
        message: The message, or None when the envelope is not one (that was
            the error).
        error: Why it was given up: the handler's last exception, or why it
            could not be read.
        attempts: Its deliveries.
        consumer: The instance that gave it up (``{id}-{instance}``).
        entry_id: Its id in the agent's stream.
        failed_at: When (seconds since the epoch).
    """

    id: str
    envelope: str
    message: Optional[AgentMessage]
    error: str
    attempts: int
    consumer: str
    entry_id: str
    failed_at: float


class DeadLetters:
    """The dead letters and stored messages of one reliable agent.

    Args:
        client: A redis-py client. With ``decode_responses=False`` every
            entry reads (bytes that are not UTF-8 shown escaped); with
            ``True``, such an entry makes the call raise.
        agent_id: Whose streams.
    """

    def __init__(self, client: redis.Redis, agent_id: str) -> None:
        self._client = client
        self.agent_id = _wire.validate_agent_id(agent_id)
        self.dlq = _wire.dlq_key(agent_id)
        self.stream = _wire.stream_key(agent_id)

    def list(self, count: int = 100) -> List[DeadLetter]:
        """The oldest ``count`` dead letters, oldest first."""
        _check_count(count)
        return [_dead_letter(entry_id, fields)
                for entry_id, fields in self._client.xrange(self.dlq, count=count)]

    def requeue(
        self, ids: Optional[Iterable[str]] = None,
        vouch: Optional[Callable[[bytes], str]] = None,
    ) -> int:
        """Put dead letters back in the agent's stream (all of them when ``ids`` is None).

        Each is added as a new entry (its attempts count again from 1), then
        removed from the dead letters: one that fails between the two is in
        both places (never in neither). Returns how many were requeued.

        ``vouch(envelope)``, given by an agent that signs, adds its signed
        word for each (the entry's field ``vouch``): its signed messages are
        then judged by the time and nonce of the requeue, not by those they
        were first sent with (long past, and seen).
        """
        moved = 0
        for entry_id, fields in self._select(ids):
            envelope = _field(fields, _wire.ENVELOPE)
            entry = {_wire.ENVELOPE: envelope}
            if vouch is not None:
                raw = envelope if isinstance(envelope, bytes) else str(envelope).encode()
                entry[_wire.VOUCH] = vouch(raw)
            self._client.xadd(self.stream, entry)
            moved += self._client.xdel(self.dlq, entry_id)
        return moved

    def purge(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete dead letters (all of them when ``ids`` is None); returns how many."""
        if ids is None:
            count = self._client.xlen(self.dlq)
            self._client.delete(self.dlq)
            return int(count)
        wanted = _checked_ids(ids)
        return int(self._client.xdel(self.dlq, *wanted)) if wanted else 0

    def history(self, since: Optional[When] = None,
                until: Optional[When] = None) -> Iterator[AgentMessage]:
        """The messages the stream still holds that arrived from ``since`` to ``until``.

        Oldest first, read a page at a time; entries that are not messages
        are skipped.
        """
        start = "-" if since is None else f"{_ms(since, 'since')}-0"
        end = "+" if until is None else f"{_ms(until, 'until')}-18446744073709551615"
        while True:
            page = self._client.xrange(self.stream, start, end, count=PAGE)
            for entry_id, fields in page:
                try:
                    yield parse_message(_field(fields, _wire.ENVELOPE, b""))
                except (ValidationError, ValueError):
                    continue
            if len(page) < PAGE:
                return
            start = "(" + _text(page[-1][0])

    def _select(self, ids: Optional[Iterable[str]]) -> Iterator[Any]:
        if ids is None:
            # Up to the last dead letter there is now: those that come after
            # (requeued messages failing again, as they are requeued) are not read.
            last = self._client.xrevrange(self.dlq, count=1)
            if not last:
                return
            start, end = "-", _text(last[0][0])
            while True:
                page = self._client.xrange(self.dlq, start, end, count=PAGE)
                yield from page
                if len(page) < PAGE:
                    return
                start = "(" + _text(page[-1][0])
        for entry_id in _checked_ids(ids):
            found = self._client.xrange(self.dlq, entry_id, entry_id)
            yield from found


def _check_count(count: object) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, not {count!r}")


def _checked_ids(ids: Iterable[str]) -> List[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a list of dead-letter ids, not one string")
    wanted = list(ids)
    for entry_id in wanted:
        if not isinstance(entry_id, str) or not _wire.is_stream_id(entry_id):
            raise ValueError(f"not a stream entry id: {entry_id!r}")
    return wanted


def _ms(when: When, what: str) -> int:
    if isinstance(when, datetime.datetime):
        return int(when.timestamp() * 1000)
    if (isinstance(when, (int, float)) and not isinstance(when, bool) and when >= 0
            and math.isfinite(when)):
        return int(when * 1000)
    raise ValueError(f"{what} must be a datetime or seconds since the epoch, not {when!r}")


def _text(value: Union[str, bytes]) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _field(fields: Dict[Any, Any], name: str, default: Any = None) -> Any:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode(), default)
    return value


def _dead_letter(entry_id: Any, fields: Dict[Any, Any]) -> DeadLetter:
    envelope = _field(fields, _wire.ENVELOPE, b"")
    try:
        message: Optional[AgentMessage] = parse_message(envelope)
    except (ValidationError, ValueError):
        message = None
    try:
        failed_at = float(_text(_field(fields, "failed_at", "0")))
        attempts = int(_text(_field(fields, "attempts", "0")))
    except ValueError:
        failed_at, attempts = 0.0, 0
    return DeadLetter(
        id=_text(entry_id),
        envelope=_text(envelope),
        message=message,
        error=_text(_field(fields, "error", "")),
        attempts=attempts,
        consumer=_text(_field(fields, "consumer", "")),
        entry_id=_text(_field(fields, "entry_id", "")),
        failed_at=failed_at,
    )
