"""Strict JSON, both ways: what mas_sync writes, and what it accepts from others.

What it writes is standard JSON (no NaN or Infinity) of text that UTF-8 can
encode; what it reads from foreign writers is refused when a lenient parser
would take it (``NaN``, ``Infinity``, ``1e999``) or when it is not UTF-8.
"""

from __future__ import annotations

import json
import math
from typing import AbstractSet, Any, Mapping, Optional, Union


def check_text(text: str, what: str) -> None:
    """Refuse a string that cannot be encoded as UTF-8 (it holds a lone surrogate).

    Raises:
        ValueError: it does, naming ``what``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (lone surrogate)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text[:40]} is beyond the range of a float")
    return value


# Strict JSON: NaN, Infinity and numbers that overflow a float are refused.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads_strict(data: Union[bytes, str]) -> Any:
    """Parse ``data`` as strict JSON (UTF-8 when bytes).

    Refuses what Python's own parser accepts beyond the standard (``NaN``,
    ``Infinity``) and numbers that overflow a float (``1e999``).

    Raises:
        ValueError: ``data`` is not UTF-8, not strict JSON, or nested too deeply
            to parse.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _STRICT_DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_STRICT = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def dumps_object(
    value: object, what: str = "payload", reserved: AbstractSet[str] = frozenset()
) -> str:
    """Serialize a JSON object strictly.

    Args:
        value: The object.
        what: What it is, for the errors (``payload``, ``reply``, ...).
        reserved: Keys it may not hold at its top level.

    Raises:
        TypeError: ``value`` is not a dict with string keys, or holds a value
            JSON cannot carry.
        ValueError: it holds NaN or infinity (not valid JSON), a circular
            reference, a string that is not valid UTF-8 text (a lone
            surrogate: no receiver could decode it), or a key of
            ``reserved``; or it is nested too deeply to encode.
    """
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict (a JSON object), not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be strings, got {key!r}")
    if reserved:
        check_reserved(value, what, reserved)
    try:
        text = _STRICT.encode(value)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to encode") from None
    # The text is ASCII, every character beyond it escaped as \uXXXX: a lone
    # surrogate can only be there if some surrogate is (a character beyond
    # the BMP is a pair of them), which few payloads hold.
    if "\\ud" in text:
        try:
            where = _lone_surrogate(value, what)
        except RecursionError:
            raise ValueError(f"{what} is nested too deeply to encode") from None
        if where is not None:
            raise ValueError(f"{where} is not valid UTF-8 text (lone surrogate)")
    return text


def check_reserved(payload: Mapping[str, Any], what: str, reserved: AbstractSet[str]) -> None:
    """Refuse a payload that holds one of the ``reserved`` keys at its top level.

    Raises:
        ValueError: it does, naming the keys.
    """
    if not reserved.isdisjoint(payload):
        keys = ", ".join(repr(k) for k in sorted(reserved.intersection(payload)))
        raise ValueError(
            f"{what} holds the reserved key(s) {keys}: the library sets them on requests"
            " and replies (use request() and message.reply()); choose another key"
        )


def _lone_surrogate(value: object, where: str) -> Optional[str]:
    """Where in ``value`` a string that UTF-8 cannot encode is, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _lone_surrogate(key, where) is not None:
                return f"a key of {where} ({key!r})"
            found = _lone_surrogate(item, f"{where}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{n}]")
            if found is not None:
                return found
    return None
