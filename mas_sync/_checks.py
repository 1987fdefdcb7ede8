"""Checks of the arguments that public calls share."""

from __future__ import annotations

import threading


def check_seconds(name: str, value: object, zero: bool = False) -> None:
    """Refuse what is not a duration that threads can wait for.

    Raises:
        ValueError: ``value`` is not a number (bools refused), is negative
            (or zero, unless ``zero``), NaN, or over ``threading.TIMEOUT_MAX``.
    """
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (value >= 0 if zero else value > 0)
        or not value <= threading.TIMEOUT_MAX
    ):
        least = "0 or more" if zero else "more than 0"
        raise ValueError(
            f"{name} must be a number of seconds, {least} and at most"
            f" {threading.TIMEOUT_MAX:.0f}, not {value!r}"
        )
