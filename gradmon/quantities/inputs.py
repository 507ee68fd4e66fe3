"""The scale of a network's inputs: per-feature moments of the first layer's inputs, over the first examples.

Inputs whose features differ in scale by orders of magnitude, or sit far from 1, make the first layer's
gradient (and so the largest stable step) depend on the units the data happens to be written in.  The data
does not change during training, so its scale is measured once, over the first ``limit`` examples, and then
no more: it costs nothing on later steps.

A feature's *scale* is the root mean square of its non-zero values: the size of its values when it has one.
A sparse feature (an image's border pixel, a rare category's one-hot column) is then as large as its values,
not as small as its rarity.

``x`` is the first layer's input, ``(batch, features)`` for dense layers (``(batch, ..., features)`` for
sequences) or ``(batch, channels, *spatial)`` for convolutions (a channel is a feature).  Sums are computed
where ``x`` lives (numpy or a tensor's device) and summed on the host in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradmon.quantities.xp import Array, namespace


def feature_sums(x: Array, channel_axis: int = -1) -> tuple[Array, Array, Array, int] | None:
    """``(sum, sum of squares, non-zero count, count)`` of ``x`` per feature along ``channel_axis``, on
    ``x``'s device; the count is the number of values per feature (examples times positions).  None for an
    input that is not floating point (token ids, say: their scale means nothing) or has no feature axis."""
    xp = namespace(x)
    if getattr(x, "ndim", 0) < 2 or x.shape[0] == 0 or not xp.isdtype(x.dtype, "real floating"):
        return None
    axis = channel_axis % x.ndim
    others = tuple(a for a in range(x.ndim) if a != axis)
    wide = xp.astype(x, xp.float64) if x.dtype != xp.float64 else x
    count = 1
    for a in others:
        count *= int(x.shape[a])
    nonzero = xp.sum(xp.astype(wide != 0, xp.float64), axis=others)
    return xp.sum(wide, axis=others), xp.sum(wide * wide, axis=others), nonzero, count


@dataclass
class InputScale:
    """Per-feature moments of the inputs seen so far (host, float64), until ``limit`` examples.

    ``mean``, ``rms`` (root mean square), ``std`` and ``scale`` (root mean square of the non-zero values,
    the feature's typical magnitude; 0 for a feature never non-zero) are ``(features,)``; all are empty before
    the first batch."""

    limit: int = 1024
    examples: int = 0
    _sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _sq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _nonzero: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _count: int = 0

    @property
    def full(self) -> bool:
        """Enough examples were seen: no more batches are needed."""
        return self.examples >= self.limit

    def add(self, total: np.ndarray, total_sq: np.ndarray, nonzero: np.ndarray, count: int, examples: int) -> None:
        """Add one batch's per-feature sums (host arrays) over ``count`` values per feature and ``examples``
        examples.  A batch whose feature count differs from the first is ignored."""
        total, total_sq = np.asarray(total, dtype=float).ravel(), np.asarray(total_sq, dtype=float).ravel()
        if self._sum.size and total.size != self._sum.size:
            return
        if not self._sum.size:
            self._sum, self._sq, self._nonzero = np.zeros(total.size), np.zeros(total.size), np.zeros(total.size)
        self._sum += total
        self._sq += total_sq
        self._nonzero += np.asarray(nonzero, dtype=float).ravel()
        self._count += int(count)
        self.examples += int(examples)

    @property
    def features(self) -> int:
        return int(self._sum.size)

    @property
    def mean(self) -> np.ndarray:
        return self._sum / self._count if self._count else np.zeros(0)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(np.maximum(self._sq / self._count, 0.0)) if self._count else np.zeros(0)

    @property
    def scale(self) -> np.ndarray:
        if not self._count:
            return np.zeros(0)
        return np.sqrt(np.divide(self._sq, self._nonzero, out=np.zeros_like(self._sq), where=self._nonzero > 0))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self._sq / self._count - self.mean ** 2, 0.0)) if self._count else np.zeros(0)

    def reset(self) -> None:
        self.examples = self._count = 0
        self._sum, self._sq, self._nonzero = np.zeros(0), np.zeros(0), np.zeros(0)
