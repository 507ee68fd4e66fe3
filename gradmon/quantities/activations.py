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
    seen.  The pool costs O(units) per batch: each unit keeps the number of the last batch it fired in, and
    a unit is dead when that batch has left the pool.
    """

    def __init__(self, min_examples: int = 64) -> None:
        self.min_examples = int(min_examples)
        self._sizes: deque[int] = deque()   # examples in each batch of the pool, oldest first
        self._seen = 0                      # examples in the pool
        self._batches = 0                   # batches fed so far
        self._fired: np.ndarray | None = None  # per unit: 1 + index of the last batch it fired in (0: never)

    def add(self, y: np.ndarray) -> float | None:
        """Feed one batch ``(batch, units)`` (outputs or the ``> 0`` mask); returns the dead fraction over the
        pool, or None until ``min_examples`` examples were seen."""
        alive = active_units(y)
        n = int(y.shape[0])
        if n >= self.min_examples:  # one batch is enough: nothing to pool
            self._sizes.clear()
            self._seen = 0
            self._fired = None
            return 1.0 - np.count_nonzero(alive) / alive.size
        if self._fired is None or self._fired.shape != alive.shape:
            self._sizes.clear()
            self._seen = 0
            self._fired = np.zeros(alive.shape, dtype=np.int64)
        self._batches += 1
        self._fired[alive] = self._batches
        self._sizes.append(n)
        self._seen += n
        while self._seen - self._sizes[0] >= self.min_examples:  # drop batches the pool no longer needs
            self._seen -= self._sizes.popleft()
        if self._seen < self.min_examples:
            return None
        first = self._batches - len(self._sizes) + 1  # the oldest batch still in the pool
        return 1.0 - np.count_nonzero(self._fired >= first) / self._fired.size
