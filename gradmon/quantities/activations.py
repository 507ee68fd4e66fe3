"""Activation quantities: saturation, dead units, moments.

``y`` is an activation layer's output of shape ``(batch, units)``.

- Saturation: the fraction of entries pinned near an asymptote, where the derivative has fallen below
  about 2% of its maximum: ``|tanh| > 0.99``; ``sigmoid < 0.01`` or ``> 0.99``.
- Dead units: ReLU units whose output is zero for every example seen (a batch, or several small batches
  accumulated by :class:`DeadUnitTracker`).
"""

from __future__ import annotations

import math

import numpy as np

#: distance from the asymptote below which a unit counts as saturated
SATURATION_MARGIN = 0.01


def saturation_fraction(y: np.ndarray, activation: str) -> float:
    """Fraction of entries of ``y`` within ``SATURATION_MARGIN`` of an asymptote (NaN for other kinds)."""
    if y.size == 0:
        return float("nan")
    if activation == "tanh":
        return float(np.count_nonzero(np.abs(y) > 1.0 - SATURATION_MARGIN)) / y.size
    if activation == "sigmoid":
        return float(np.count_nonzero(np.abs(y - 0.5) > 0.5 - SATURATION_MARGIN)) / y.size
    return float("nan")


def active_units(y: np.ndarray) -> np.ndarray:
    """Boolean ``(units,)``: True where a unit is positive for at least one example of the batch.

    ``y`` may be the outputs or, cheaper, the boolean ``y > 0`` mask kept from the forward pass."""
    return (y if y.dtype == np.bool_ else y > 0).any(axis=0)


def moments(y: np.ndarray, max_rows: int = 16) -> tuple[float, float]:
    """Mean and standard deviation over the entries of ``y`` (its first ``max_rows`` examples: a batch's
    rows are already a random sample, so this bounds the cost without biasing the estimate)."""
    if y.size == 0:
        return float("nan"), float("nan")
    sample = y[:max_rows].reshape(-1)
    mean = float(np.add.reduce(sample, dtype=np.float64)) / sample.size
    centred = sample - np.asarray(mean, dtype=sample.dtype)
    return mean, math.sqrt(float(np.dot(centred, centred)) / sample.size)


class DeadUnitTracker:
    """Accumulates which units fired over at least ``min_examples`` examples, then reports the fraction
    that never did.  With mini-batches of ``min_examples`` or more this is the per-batch dead fraction; with
    stochastic gradient descent (batch 1) it pools consecutive examples so that a unit that is merely off
    for one input doesn't count as dead."""

    def __init__(self, min_examples: int = 64) -> None:
        self.min_examples = int(min_examples)
        self._alive: np.ndarray | None = None
        self._seen = 0

    def add(self, y: np.ndarray) -> float | None:
        """Feed one batch; returns the dead fraction when enough examples were pooled, else None."""
        alive = active_units(y)
        if self._alive is None and y.shape[0] >= self.min_examples:  # one batch is enough: nothing to pool
            return 1.0 - np.count_nonzero(alive) / alive.size
        self._alive = alive if self._alive is None or self._alive.shape != alive.shape else (self._alive | alive)
        self._seen += y.shape[0]
        if self._seen < self.min_examples:
            return None
        fraction = 1.0 - float(np.count_nonzero(self._alive)) / self._alive.size
        self._alive = None
        self._seen = 0
        return fraction
