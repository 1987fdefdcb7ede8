"""Where a message to one agent goes: its stream (a reliable agent) or its channel.

Senders need not know how a target receives. A target reads a stream when
its registration says ``delivery: reliable``, or, with no registration, when
its stream ``agent.stream:{id}`` exists (it ran before, reliably, and will
read what waits there when it starts again). Every other target, async
peers included, gets pub/sub. The answer is kept for :data:`ROUTE_TTL`
seconds, so that a send costs one round trip.
"""

from __future__ import annotations

import threading
import time
from typing import AbstractSet, Any, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import redis

from . import _wire
from ._redis import HeldConnection, is_cluster, publish
from ._transport import Batch, Direct

_NONE: FrozenSet[str] = frozenset()

#: Seconds a target's route is trusted before it is looked up again. A
#: target that becomes reliable gets messages by pub/sub for up to this long
#: (at most once, as before: it still listens on its channel).
ROUTE_TTL = 5.0


class Routes:
    """Looks up, caches, and follows the route of each target. Thread-safe.

    Args:
        client: The run's command client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._reliable: Dict[str, Tuple[bool, float]] = {}  # target -> (reliable, expires)
        self._cluster = is_cluster(client)
        self._held = None if self._cluster else HeldConnection(client)

    def reliable(self, targets: Iterable[str]) -> Set[str]:
        """Those of ``targets`` that read a stream; unknown ones looked up in one round trip."""
        now = time.monotonic()
        found: Set[str] = set()
        unknown: List[str] = []
        cache = self._reliable
        for target in targets:
            known = cache.get(target)
            if known is None or known[1] < now:
                if target not in unknown:
                    unknown.append(target)
            elif known[0]:
                found.add(target)
        if unknown:
            pipe = self._client.pipeline(transaction=False)
            for target in unknown:
                pipe.hmget(_wire.agent_key(target), "id", _wire.DELIVERY_FIELD)
                pipe.type(_wire.stream_key(target))
            # A key of another type (not a registration, not a stream) answers
            # with an error: it reads as absent.
            answers = pipe.execute(raise_on_error=False)
            expires = time.monotonic() + ROUTE_TTL
            with self._lock:
                for i, target in enumerate(unknown):
                    fields, stream = answers[2 * i], answers[2 * i + 1]
                    registered, delivery = (None, None) if _failed(fields) else fields
                    if registered is not None:
                        is_reliable = delivery == _wire.DELIVERY_RELIABLE
                    else:
                        is_reliable = stream in ("stream", b"stream")
                    cache[target] = (is_reliable, expires)
                    if is_reliable:
                        found.add(target)
        return found

    def forget(self, target: str) -> None:
        """Look ``target`` up again at its next message."""
        with self._lock:
            self._reliable.pop(target, None)

    def send(self, batch: Batch, direct: Direct = False) -> List[Optional[Exception]]:
        """Add each ``(target_id, data)`` to its target's stream, or publish it.

        ``direct`` (one flag for the batch, or one per message) publishes
        whatever the target: for replies, which only the run waiting for
        them can use. A stream that vanished since its route was looked up is
        not made again: that message is published instead.

        Returns:
            Per message, None, or the error Redis refused it with (an ACL
            that does not allow its channel, say): the others were sent.

        Raises:
            redis-py's errors for a failure of the whole batch (a lost
            connection: some may have been sent).
        """
        if len(batch) == 1 and not self._cluster and isinstance(direct, bool):
            return self._send_one(batch[0], direct)
        flags = [direct] * len(batch) if isinstance(direct, bool) else direct
        routed = {target for (target, _), flag in zip(batch, flags) if not flag}
        streams: AbstractSet[str] = self.reliable(routed) if routed else _NONE
        to_stream = [not flag and target_id in streams
                     for (target_id, _), flag in zip(batch, flags)]
        if self._cluster:
            results = self._send_cluster(batch, to_stream)
        else:
            assert self._held is not None
            results = self._held.run([
                _command(target_id, data, stream)
                for (target_id, data), stream in zip(batch, to_stream)
            ])
        errors: List[Optional[Exception]] = [
            result if isinstance(result, Exception) else None for result in results
        ]
        if not streams:
            return errors
        lost = [n for n, result in enumerate(results) if to_stream[n] and result is None]
        if lost:
            for target_id in {batch[n][0] for n in lost}:
                self.forget(target_id)
            again = self.send([batch[n] for n in lost], direct=True)
            for n, error in zip(lost, again):
                errors[n] = error
        return errors

    def _send_one(self, message: Tuple[str, str], direct: bool) -> List[Optional[Exception]]:
        """:meth:`send` of one message, on a single node or Sentinel: the common case, made short."""
        target_id, data = message
        assert self._held is not None
        stream = not direct and target_id in self.reliable((target_id,))
        result = self._held.run([_command(target_id, data, stream)])[0]
        if stream and result is None:  # the stream is gone: published instead
            self.forget(target_id)
            return self._send_one(message, True)
        return [result if isinstance(result, Exception) else None]

    def _send_cluster(self, batch: Batch, to_stream: List[bool]) -> List[Any]:
        """What :meth:`send` does on a cluster: a pipeline, which sends each command to its node."""
        if len(batch) == 1:  # one command, without a pipeline's cost
            (target_id, data), stream = batch[0], to_stream[0]
            try:
                if stream:
                    return [self._client.xadd(
                        _wire.stream_key(target_id), {_wire.ENVELOPE: data}, nomkstream=True
                    )]
                return [self._client.spublish(_wire.agent_channel(target_id), data)]
            except redis.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for (target_id, data), stream in zip(batch, to_stream):
            if stream:
                pipe.xadd(
                    _wire.stream_key(target_id), {_wire.ENVELOPE: data}, nomkstream=True
                )
            else:
                publish(pipe, _wire.agent_channel(target_id), data)
        return pipe.execute(raise_on_error=False)


def _command(target_id: str, data: str, stream: bool) -> Tuple[str, ...]:
    """The command that hands ``data`` to ``target_id``: into its stream (never made), or published."""
    if stream:
        return ("XADD", _wire.stream_key(target_id), "NOMKSTREAM", "*", _wire.ENVELOPE, data)
    return ("PUBLISH", _wire.agent_channel(target_id), data)


def _failed(answer: object) -> bool:
    """Whether a pipelined command's answer is an error (the key holds another type)."""
    return isinstance(answer, redis.ResponseError)
