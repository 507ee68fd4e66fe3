"""Activation quantities: saturation, dead units, moments.

``y`` is an activation layer's output of shape ``(batch, units)``.

- Saturation: the fraction of entries pinned near an asymptote, where the derivative has fallen below
  about 2% of its maximum: ``|tanh| > 0.99``; ``sigmoid < 0.01`` or ``> 0.99``.
- Dead units: ReLU units whose output is zero for every example seen (a batch, or a sliding pool of the
  latest small batches, :class:`DeadUnitTracker`).
"""

from __future__ import annotations

import math
from collections import deque

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
    """The fraction of units that did not fire over the last ``min_examples`` examples or more.

    With mini-batches of ``min_examples`` or more this is the per-batch dead fraction.  Smaller batches are
    pooled over a sliding window of the latest batches (a unit merely off for one input of stochastic
    gradient descent does not count as dead), so there is a value at every step once enough examples were
    seen."""

    def __init__(self, min_examples: int = 64) -> None:
        self.min_examples = int(min_examples)
        self._pool: deque[tuple[np.ndarray, int]] = deque()
        self._seen = 0

    def add(self, y: np.ndarray) -> float | None:
        """Feed one batch ``(batch, units)`` (outputs or the ``> 0`` mask); returns the dead fraction over the
        pool, or None until ``min_examples`` examples were seen."""
        alive = active_units(y)
        n = int(y.shape[0])
        if n >= self.min_examples:  # one batch is enough: nothing to pool
            self._pool.clear()
            self._seen = 0
            return 1.0 - np.count_nonzero(alive) / alive.size
        if self._pool and self._pool[0][0].shape != alive.shape:
            self._pool.clear()
            self._seen = 0
        self._pool.append((alive, n))
        self._seen += n
        while self._seen - self._pool[0][1] >= self.min_examples:  # drop batches the pool no longer needs
            self._seen -= self._pool.popleft()[1]
        if self._seen < self.min_examples:
            return None
        pooled = np.logical_or.reduce([a for a, _ in self._pool])
        return 1.0 - np.count_nonzero(pooled) / pooled.size
