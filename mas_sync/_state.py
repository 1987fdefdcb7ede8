"""Agent state persisted in the Redis hash ``agent.state:{id}``."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Set, Tuple, Type

import redis
from pydantic import BaseModel

from . import _json, _wire
from ._errors import AgentNotRunningError, StateError
from ._state_codec import READ_ONLY, ModelCodec

log = logging.getLogger(__name__)

# Values a dict (untyped) state may hold; anything else has no faithful str().
_PLAIN_TYPES = (str, int, float, bool, type(None), dict, list, tuple)


class StateManager:
    """Keeps an agent's state in memory and in the hash ``agent.state:{id}``.

    Untyped state is a mapping of strings to strings: exactly what Redis holds
    (``update({"counter": 42})`` reads back ``"42"``, before and after a
    restart). Typed state is an instance of ``state_model``; every field
    round-trips through Redis with its type intact.

    Thread-safe: updates are serialized by a lock and written to Redis before
    they become visible in memory. A write that fails is read back from Redis
    (it may have run), so memory and Redis do not stay apart. Readers get
    read-only snapshots without taking the lock.

    Args:
        agent_id: The agent whose state this is.
        redis: A client created with ``decode_responses=True``.
        state_model: A pydantic model class for typed state, or None.
    """

    def __init__(
        self,
        agent_id: str,
        redis: redis.Redis,
        state_model: Optional[Type[BaseModel]] = None,
    ) -> None:
        if state_model is not None and not (
            isinstance(state_model, type) and issubclass(state_model, BaseModel)
        ):
            raise TypeError(f"state_model must be a pydantic BaseModel class, not {state_model!r}")
        self.agent_id = agent_id
        self._redis = redis
        self._key = _wire.state_key(agent_id)
        self._codec = ModelCodec(state_model) if state_model is not None else None
        self._lock = threading.Lock()
        # The published snapshot: never mutated once assigned.
        self._value: Any = None
        # What Redis holds for each field, as strings.
        self._encoded: Dict[str, str] = {}
        # Fields (or, with _unsure_all, the whole hash) that a failed write may
        # or may not have changed: read back before the next write.
        self._unsure: Set[str] = set()
        self._unsure_all = False

    @property
    def state(self) -> Any:
        """The current state, read-only, or None before :meth:`load`.

        Typed state is an instance of ``state_model`` (of a read-only subclass
        of it); untyped state a read-only mapping of str to str. Either is a
        snapshot: later updates replace it, and never change it. Fields that
        hold lists, dicts or models read as deep copies of their own.
        """
        value = self._value
        if value is None or self._codec is not None:
            return value
        return DictStateView(value, self.agent_id)

    def snapshot(self) -> Any:
        """A private, mutable copy of the current state: a dict or a model instance."""
        value = self._value
        if isinstance(value, BaseModel):
            return value.model_copy(deep=True)
        return None if value is None else dict(value)

    def load(self) -> None:
        """Read the state from Redis; fields missing there take their defaults.

        Raises:
            StateError: a stored field does not fit ``state_model``. The state
                in Redis is left as it is.
        """
        data = self._redis.hgetall(self._key)
        with self._lock:
            self._value, self._encoded = self._decode_all(data)
            self._unsure = set()
            self._unsure_all = False

    def update(self, updates: Mapping[str, Any]) -> None:
        """Apply ``updates`` and persist them, all or nothing.

        If the write fails, the fields it touched are read back from Redis, so
        that memory shows what Redis holds; when the reply to a write that ran
        was lost, that is the new value, although this call raised. If Redis
        cannot be read either, the next call reads them first.

        Raises:
            TypeError: ``updates`` is not a mapping with string keys, or holds
                a value that cannot be stored.
            StateError: a key is not a field of ``state_model``, or a value
                does not validate. Nothing is written.
            ValueError: a key or a string value is not valid UTF-8 text (a
                lone surrogate). Nothing is written.
            AgentNotRunningError: the state was never loaded.
            redis.RedisError: the write failed (its outcome may be unknown).
        """
        if not isinstance(updates, Mapping):
            raise TypeError(f"state updates must be a dict, not {type(updates).__name__}")
        for key in updates:
            if not isinstance(key, str) or not key:
                raise TypeError(f"state keys must be non-empty strings, got {key!r}")
        encoded_updates = {}
        if self._codec is None:
            for key, value in updates.items():
                if not isinstance(value, _PLAIN_TYPES):
                    raise TypeError(
                        f"state value for {key!r} is a {type(value).__name__};"
                        " untyped state holds str, int, float, bool, None, dict"
                        " and list (use a state_model for other types)"
                    )
                encoded_updates[key] = _wire.encode_state_value(value)
        else:
            unknown = sorted(set(updates) - set(self._codec.fields))
            if unknown:
                raise StateError(
                    f"{self._codec.model.__name__} has no field(s) {', '.join(map(repr, unknown))}"
                )
        with self._lock:
            if self._value is None:
                raise AgentNotRunningError("state is not loaded; start the agent first")
            self._resync()
            current = self._value
            if self._codec is None:
                new_value: Any = {**current, **encoded_updates}
                new_encoded = new_value
            else:
                merged = self._codec.values(current)
                merged.update(updates)
                new_value = self._codec.build(merged)
                new_encoded = self._codec.encode(new_value)
            changed = {k: v for k, v in new_encoded.items() if self._encoded.get(k) != v}
            for key, text in changed.items():  # before anything is written
                _json.check_text(key, f"state key {key!r}")
                _json.check_text(text, f"state value for {key!r}")
            if changed:
                self._write(lambda: self._redis.hset(self._key, mapping=changed), changed)
            self._value = new_value
            self._encoded = dict(new_encoded)

    def reset(self) -> None:
        """Replace the state in Redis by the defaults, atomically.

        Untyped state is deleted; typed state becomes the model's defaults,
        built first, and written in one transaction with the deletion (fields
        unknown to the model go too). If the transaction fails, the state is
        read back from Redis, as after a failed :meth:`update`.

        Raises:
            StateError: ``state_model`` has a field without a default. Nothing
                is changed.
            AgentNotRunningError: the state was never loaded.
            redis.RedisError: the write failed (its outcome may be unknown).
        """
        defaults: Any = {} if self._codec is None else self._codec.build({})
        encoded = {} if self._codec is None else self._codec.encode(defaults)

        def replace() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._key)
            if encoded:
                pipe.hset(self._key, mapping=encoded)
            pipe.execute()

        with self._lock:
            if self._value is None:
                raise AgentNotRunningError("state is not loaded; start the agent first")
            self._write(replace, None)
            self._value = defaults
            self._encoded = dict(encoded)
            self._unsure = set()
            self._unsure_all = False

    # -- keeping memory and Redis equal ----------------------------------------

    def _decode_all(self, data: Mapping[str, str]) -> Tuple[Any, Dict[str, str]]:
        """The value and the encoding that the hash ``data`` stands for."""
        if self._codec is None:
            return dict(data), dict(data)
        values = {
            name: self._codec.decode_field(name, raw)
            for name, raw in data.items()
            if name in self._codec.fields
        }
        return self._codec.build(values), {name: data[name] for name in values}

    def _write(self, operation: Callable[[], Any], fields: Optional[Iterable[str]]) -> None:
        """Run ``operation``; if it fails, re-read what it may have changed.

        ``fields`` are the fields it writes, None for the whole hash. A failed
        write may have run (a reply lost on the way back): its fields are
        marked unknown and read back at once, or by the next call if Redis
        cannot be read now. Called with the lock held.
        """
        try:
            operation()
        except BaseException as exc:
            if fields is None:
                self._unsure_all = True
            else:
                self._unsure.update(fields)
            if isinstance(exc, Exception):
                try:
                    self._resync()
                except Exception as again:
                    log.warning(
                        "State of %s: a write failed (%s) and reading it back failed"
                        " too (%s); the next update reads it first",
                        self.agent_id, exc, again,
                    )
            raise

    def _resync(self) -> None:
        """Read back from Redis the fields a failed write left unknown.

        Called with the lock held. Raises what the read raises, and StateError
        if Redis holds a value that does not fit the model.
        """
        if self._unsure_all:
            data = self._redis.hgetall(self._key)
            self._value, self._encoded = self._decode_all(data)
        elif self._unsure:
            fields = sorted(self._unsure)
            raws = self._redis.hmget(self._key, fields)
            encoded = dict(self._encoded)
            if self._codec is None:
                value = dict(self._value)
                for name, raw in zip(fields, raws):
                    if raw is None:
                        value.pop(name, None)
                    else:
                        value[name] = raw
                self._value = value
                self._encoded = dict(value)
            else:
                merged = self._codec.values(self._value)
                for name, raw in zip(fields, raws):
                    if raw is None:  # not stored: the default, as load() would
                        merged.pop(name)
                        encoded.pop(name, None)
                    else:
                        merged[name] = self._codec.decode_field(name, raw)
                        encoded[name] = raw
                self._value = self._codec.build(merged)
                self._encoded = encoded
        else:
            return
        self._unsure = set()
        self._unsure_all = False


class DictStateView(Mapping):
    """Untyped state: a read-only snapshot, a mapping of str to str.

    Later updates replace the snapshot and never change it; read
    ``Agent.state`` again for the latest, and change the state with
    ``Agent.update_state()``.
    """

    __slots__ = ("_data", "_agent_id")

    def __init__(self, data: Mapping[str, str], agent_id: str) -> None:
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_agent_id", agent_id)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(READ_ONLY)

    def __delitem__(self, key: str) -> None:
        raise TypeError("agent state is read-only; use update_state() or reset_state()")

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(READ_ONLY)

    def __repr__(self) -> str:
        return f"<state of {self._agent_id!r}: {self._data!r}>"
