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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.losses import Loss


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


def xy(X: Any, y: Any, n_inputs: int, loss: Loss, n_outputs: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``X`` of shape ``(n, n_inputs)`` (real, finite) and targets ``y`` with one entry per row that
    ``loss`` accepts for ``n_outputs`` outputs, as arrays (float class labels become int64).  ``what`` names
    the data in the message (``training``, ``validation``...).  Raises ValueError (not a CheckError: the
    message is about arrays, not one argument)."""
    if X is None or y is None:
        raise ValueError(f"{what} {'X' if X is None else 'y'} is missing: pass inputs X of shape (n, features) and "
                         f"targets y with one entry per row of X")
    X = np.asarray(X)
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError(f"{what} y must have one entry per row of X, got a scalar {y!r}")
    if X.ndim != 2:
        raise ValueError(f"{what} X must be 2-D (samples, features), got shape {X.shape}")
    if len(X) == 0:
        raise ValueError(f"{what} data is empty")
    if X.shape[1] != n_inputs:
        raise ValueError(f"{what} X has {X.shape[1]} features but the model expects {n_inputs}")
    if len(y) != len(X):
        raise ValueError(f"{what} X has {len(X)} rows but y has {len(y)}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{what} X holds complex numbers (dtype {X.dtype}); features must be real: pass "
                         f"np.hstack([X.real, X.imag]) or np.abs(X)")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
        raise ValueError(f"{what} X contains NaN, Inf or non-numbers")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{what} y must hold numbers (class labels or real targets), got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise ValueError(f"{what} y contains NaN or Inf")
    if loss.name in ("cross_entropy", "binary_cross_entropy"):
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(y == np.round(y)):
                raise ValueError(f"{what} y must hold integer class labels for {loss.name}")
            y = y.astype(np.int64)
    try:
        loss.check_targets(y, n_outputs)
    except ValueError as exc:
        raise ValueError(f"{what} y: {exc}") from None
    return X, y
