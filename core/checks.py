"""Argument checks at the boundary: each returns the cleaned value or raises :class:`CheckError` (a
``ValueError``) with one line that names the argument and says what it accepts.

Each rule is written here once.  The run spec (:mod:`core.spec`) calls the same checks and rewords the
error for its keys (``train.lr: expected a positive number (finite), got 0``).

>>> positive("lr", 0.1)
0.1
>>> try:
...     positive("lr", float("inf"))
... except ValueError as exc:
...     print(exc)
lr must be a positive number (finite), got inf
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class CheckError(ValueError):
    """A failed check: ``name must be <accepts>, got <value>``.  ``accepts`` is the phrase that says what
    the check takes (``"a positive number (finite)"``), so a caller can reword the message."""

    def __init__(self, name: str, value: Any, accepts: str) -> None:
        super().__init__(f"{name} must be {accepts}, got {value!r}")
        self.name, self.value, self.accepts = name, value, accepts

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.name, self.value, self.accepts)


def _real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (bools and strings are not), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf if value > 0 else -math.inf


def number(name: str, value: Any) -> float:
    """A finite real number."""
    x = _real(value)
    if x is None or not math.isfinite(x):
        raise CheckError(name, value, "a number (finite)")
    return x


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    x = _real(value)
    if x is None or not math.isfinite(x) or x <= 0:
        raise CheckError(name, value, "a positive number (finite)")
    return x


def nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    x = _real(value)
    if x is None or not math.isfinite(x) or x < 0:
        raise CheckError(name, value, "a finite number >= 0")
    return x


def unit(name: str, value: Any) -> float:
    """A number in [0, 1)."""
    x = _real(value)
    if x is None or not 0.0 <= x < 1.0:
        raise CheckError(name, value, "a number in [0, 1)")
    return x


def optional_positive(name: str, value: Any) -> float | None:
    """None (off) or a finite number > 0."""
    if value is None:
        return None
    x = _real(value)
    if x is None or not math.isfinite(x) or x <= 0:
        raise CheckError(name, value, "a positive number (finite) or None (off)")
    return x


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (a bool is not an integer here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CheckError(name, value, "a positive integer")
    return int(value)


def seed(name: str, value: Any) -> int | None:
    """None (fresh entropy) or an integer >= 0."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise CheckError(name, value, "an integer >= 0 or None")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise CheckError(name, value, "true or false")
    return bool(value)
