"""The codec of typed state: field encoding, enums by name, read-only snapshot classes."""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import functools
import json
import math
import operator
import pathlib
import types
import typing
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple, Type

from pydantic import BaseModel, TypeAdapter, ValidationError

from ._errors import StateError

# Values that nothing can change; tuples and frozensets of them too.
_IMMUTABLE = (
    str, bytes, int, float, complex, type(None), enum.Enum, datetime.date, datetime.time,
    datetime.timedelta, datetime.tzinfo, decimal.Decimal, uuid.UUID, pathlib.PurePath,
)
READ_ONLY = "agent state is read-only; use update_state()"
_NONE = "None"
# X | Y annotations (Python 3.10+).
_UnionType = getattr(types, "UnionType", None)


class ModelCodec:
    """Encodes a pydantic model field by field, and decodes it back losslessly."""

    def __init__(self, model: Type[BaseModel]) -> None:
        self.model = model
        self.snapshot_class = _snapshot_class(model)
        self.fields: Dict[str, Tuple[str, TypeAdapter, bool]] = {}
        for name, info in model.model_fields.items():
            adapter: TypeAdapter = TypeAdapter(info.annotation)
            try:
                adapter.validate_python(None)
                allows_none = True
            except ValidationError:
                allows_none = False
            self.fields[name] = (info.alias or name, adapter, allows_none)
        # For each enum field: its class, and each member by its stored form.
        self.enums: Dict[str, Tuple[Type[enum.Enum], Dict[str, enum.Enum]]] = {}
        for name, info in model.model_fields.items():
            cls = _enum_class(info.annotation)
            if cls is not None:
                dump = TypeAdapter(cls).dump_python
                codes = {_encode_enum(m, dump(m, mode="json")): m for m in cls}
                self.enums[name] = (cls, codes)

    def encode(self, value: BaseModel) -> Dict[str, str]:
        as_json = value.model_dump(mode="json")
        out = {}
        for name in self.fields:
            py = vars(value)[name]
            js = as_json[name]
            if py is None:
                out[name] = _NONE
            elif isinstance(py, enum.Enum):
                out[name] = _encode_enum(py, js)
            elif isinstance(js, (dict, list)):
                out[name] = json.dumps(js)
            elif isinstance(py, (bool, int, float)) and not isinstance(js, str):
                out[name] = str(py)  # keeps inf and nan, which JSON mode turns to null
            else:
                out[name] = js if isinstance(js, str) else str(js)
        return out

    def decode_field(self, name: str, raw: str) -> Any:
        _, adapter, allows_none = self.fields[name]
        if raw == _NONE and allows_none:
            return None
        enum_cls, codes = self.enums.get(name, (None, {}))
        if raw in codes:
            return codes[raw]
        try:
            return adapter.validate_python(raw)
        except ValidationError:
            pass
        try:
            return adapter.validate_json(raw)
        except ValidationError as exc:
            member = _enum_by_name(enum_cls, raw)
            if member is not None:
                return member
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            raise StateError(
                f"state field {name!r} holds {shown!r}, which does not fit"
                f" {self.model.__name__}.{name}: {exc.errors()[0]['msg']}"
            ) from None

    def build(self, values: Mapping[str, Any]) -> BaseModel:
        """A read-only snapshot of the model made of ``values``.

        The snapshot shares no mutable object with ``values``.

        Raises:
            StateError: ``values`` do not validate.
        """
        by_alias = {self.fields[name][0]: v for name, v in values.items()}
        try:
            value = self.model.model_validate(by_alias)
        except ValidationError as exc:
            raise StateError(f"invalid state for {self.model.__name__}: {exc}") from None
        snapshot = self.snapshot_class.__new__(self.snapshot_class)
        snapshot.__setstate__(copy.deepcopy(value.__getstate__()))
        return snapshot

    def values(self, snapshot: BaseModel) -> Dict[str, Any]:
        """The field values of ``snapshot``, not copied: to build the next one."""
        return {name: vars(snapshot)[name] for name in self.fields}


def _is_immutable(value: Any) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_is_immutable(item) for item in value)
    return isinstance(value, _IMMUTABLE)


class _FieldCopy:
    """A field of a state snapshot: read as is if immutable, else as a deep copy."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        try:
            value = vars(instance)[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        return value if _is_immutable(value) else copy.deepcopy(value)

    def __set__(self, instance: Any, value: Any) -> None:
        raise TypeError(READ_ONLY)

    def __delete__(self, instance: Any) -> None:
        raise TypeError(READ_ONLY)


def _thaw(model: Type[BaseModel], state: Dict[str, Any]) -> BaseModel:
    """An ordinary instance of ``model`` with the pickled ``state``."""
    value = model.__new__(model)
    value.__setstate__(state)
    return value


def _snapshot_class(model: Type[BaseModel]) -> Type[BaseModel]:
    """A read-only subclass of ``model``, of which agent states are instances.

    Its instances compare, print, dump and pickle as ``model`` instances do.
    Assigning or deleting an attribute raises TypeError; reading a field whose
    value could change (a list, a dict, a nested model) gives a deep copy, so
    that a snapshot never changes once made and is safe to share between
    threads. ``model_copy()`` gives an ordinary, mutable ``model``.
    """

    def __setattr__(self: BaseModel, name: str, value: Any) -> None:
        raise TypeError(READ_ONLY)

    def __delattr__(self: BaseModel, name: str) -> None:
        raise TypeError(READ_ONLY)

    def __eq__(self: BaseModel, other: object) -> bool:
        if isinstance(other, snapshot_class):
            other = _thaw(model, other.__getstate__())
        return _thaw(model, self.__getstate__()) == other

    def __reduce__(self: BaseModel) -> Any:
        return _thaw, (model, self.__getstate__())

    def model_copy(
        self: BaseModel, *, update: Optional[Mapping[str, Any]] = None, deep: bool = False
    ) -> BaseModel:
        """An ordinary, mutable instance of the model; always a deep copy."""
        return _thaw(model, copy.deepcopy(self.__getstate__())).model_copy(update=update)

    namespace = {
        "__module__": model.__module__,
        "__qualname__": model.__qualname__,
        "__doc__": model.__doc__,
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
        "__eq__": __eq__,
        "__hash__": model.__hash__,
        "__reduce__": __reduce__,
        "model_copy": model_copy,
    }
    snapshot_class: Type[BaseModel] = type(model)(model.__name__, (model,), namespace)
    for name in model.model_fields:
        type.__setattr__(snapshot_class, name, _FieldCopy(name))
    return snapshot_class


def _encode_enum(member: enum.Enum, js: Any) -> str:
    """How an enum member is stored: by its value, never by ``str(member)``.

    ``str()`` gives ``'Priority.HIGH'`` for int and float mixins (and for
    IntEnum and IntFlag before Python 3.11), which does not read back.
    """
    value = member.value
    if isinstance(js, str):
        return js
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf or nan
    return json.dumps(js)


def _enum_class(annotation: Any) -> Optional[Type[enum.Enum]]:
    """The enum class of a field annotated ``E``, ``Optional[E]`` or ``Annotated[E, ...]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _enum_class(typing.get_args(annotation)[0])
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _enum_class(args[0]) if len(args) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    return None


def _enum_by_name(cls: Optional[Type[enum.Enum]], raw: str) -> Optional[enum.Enum]:
    """The member of ``cls`` that ``raw`` names as ``str(member)`` once did.

    Reads ``'Priority.HIGH'``, and ``'Perm.W|R'`` for a combination of flags
    (Python < 3.11), as earlier releases and the async framework stored them.
    """
    if cls is None or not raw.startswith(cls.__name__ + "."):
        return None
    names = raw[len(cls.__name__) + 1:].split("|")
    if not all(n in cls.__members__ for n in names):
        return None
    members = [cls.__members__[n] for n in names]
    if len(members) == 1:
        return members[0]
    if issubclass(cls, enum.Flag):
        return functools.reduce(operator.or_, members)
    return None
