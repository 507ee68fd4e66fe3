"""Argument checks at the boundary of the Python API: each returns the cleaned value or raises
``ValueError`` with one line that names the argument and says what it accepts.

>>> positive("lr", 0.1)
0.1
>>> positive("lr", float("inf"))
Traceback (most recent call last):
...
ValueError: lr must be a positive number (finite), got inf
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (bools and strings are not), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def number(name: str, value: Any) -> float:
    """A finite real number."""
    x = _real(value)
    if x is None or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    x = _real(value)
    if x is None or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive number (finite), got {value!r}")
    return x


def nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    x = _real(value)
    if x is None or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def unit(name: str, value: Any) -> float:
    """A number in [0, 1)."""
    x = _real(value)
    if x is None or not 0.0 <= x < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return x


def optional_positive(name: str, value: Any) -> float | None:
    """None (off) or a finite number > 0."""
    if value is None:
        return None
    x = _real(value)
    if x is None or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive number (finite) or None (off), got {value!r}")
    return x


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (a bool is not an integer here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def seed(name: str, value: Any) -> int | None:
    """None (fresh entropy) or an integer >= 0."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")
    return int(value)


def flag(name: str, value: Any) -> bool:
    """True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
