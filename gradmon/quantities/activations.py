"""Activation quantities: saturation, dead units, scale.

Written once over the array API (:mod:`gradmon.quantities.xp`): ``y`` is an activation's output, a numpy
array in core or a tensor on its device in PyTorch, of shape ``(batch, units)``, ``(batch, channels,
*spatial)`` for convolutions or ``(batch, ..., features)`` for sequences.  Statistics come back as 0-d
arrays (or short vectors) on ``y``'s device; the recorder moves them to the host in one transfer.

- Saturation: the fraction of entries pinned near an asymptote, where the derivative has fallen below
  about 2% of its maximum (``margin``): ``|tanh| > 1 - m``; ``sigmoid < m`` or ``> 1 - m``; at or beyond
  the clip points of the hard variants.
- Dead units: rectifier units (channels) whose output is zero for every example (and every position) seen
  (a batch, or a sliding pool of the latest small batches, :class:`DeadUnitTracker`).
- Scale: mean and standard deviation of the outputs (a signal that collapses through depth shrinks).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from gradmon.quantities.xp import Array, namespace
from gradmon.vocabulary import SATURATING


def saturation_fraction(y: Array, activation: str, margin: float = 0.01) -> Array | None:
    """Fraction of entries of ``y`` within ``margin`` of an asymptote, a 0-d float array; None for an
    activation that does not saturate (or an empty ``y``)."""
    if activation not in SATURATING or y.ndim == 0 or y.shape[0] == 0:
        return None
    xp = namespace(y)
    if activation in ("tanh", "softsign"):
        pinned = xp.abs(y) > 1.0 - margin
    elif activation == "sigmoid":
        pinned = xp.abs(y - 0.5) > 0.5 - margin
    elif activation == "hardtanh":
        pinned = xp.abs(y) >= 1.0
    else:  # hardsigmoid: flat at 0 and 1
        pinned = (y <= 0.0) | (y >= 1.0)
    return xp.mean(xp.astype(pinned, xp.float32))


def channel_max(y: Array, channel_axis: int = -1) -> Array:
    """The largest output of each unit (channel) over the batch and every other axis, shape ``(units,)``
    (a boolean ``y`` gives whether any entry is True).  A unit is alive where it is positive."""
    xp = namespace(y)
    axis = channel_axis % y.ndim
    others = tuple(a for a in range(y.ndim) if a != axis)
    if not others:
        return y
    return xp.any(y, axis=others) if y.dtype == xp.bool else xp.max(y, axis=others)


def dead_counts(dead: Array, ends: Array) -> Array:
    """Dead units of several layers at once: ``dead`` is a boolean vector of their units end to end and
    ``ends`` (integer indices, on ``dead``'s device) the last position of each layer; returns the number of
    dead units up to each end, shape ``(len(ends),)`` (two reductions whatever the number of layers; a
    layer's own count is the difference of consecutive values, taken on the host)."""
    xp = namespace(dead)
    return xp.cumulative_sum(dead)[ends]


def alive_units(y: Array, channel_axis: int = -1) -> Array:
    """Boolean ``(units,)``: True where a unit (channel) is positive for at least one example and position.

    ``y`` may be the outputs or, cheaper, a boolean ``y > 0`` mask kept from the forward pass; the units lie
    along ``channel_axis`` (``-1`` for dense and sequence outputs, ``1`` for NCHW convolutions)."""
    top = channel_max(y, channel_axis)  # one reduction, no (batch, units) boolean temporary
    return top if top.dtype == namespace(top).bool else top > 0


def moments(y: Array, max_rows: int = 16) -> tuple[Array, Array]:
    """Mean and standard deviation over the entries of ``y`` (its first ``max_rows`` examples: a batch's
    rows are already a random sample, so this bounds the cost without biasing the estimate), as 0-d float
    arrays."""
    xp = namespace(y)
    sample = xp.reshape(y[:max_rows], (-1,))
    if sample.dtype not in (xp.float32, xp.float64):
        sample = xp.astype(sample, xp.float32)
    if xp is np and sample.size:  # core's path: np.mean and np.std's steps without their dispatch overhead
        mean = np.add.reduce(sample) / sample.dtype.type(sample.size)
        centred = sample - mean
        return mean, np.sqrt(np.add.reduce(centred * centred) / sample.dtype.type(sample.size))
    return xp.mean(sample), xp.std(sample)


class DeadUnitTracker:
    """The fraction of units that did not fire over the last ``min_examples`` examples or more.

    With batches of ``min_examples`` or more this is the per-batch dead fraction.  Smaller batches are
    pooled over a sliding window of the latest batches (a unit merely off for one input of stochastic
    gradient descent does not count as dead), so there is a value at every step once enough examples were
    seen.  The pool lives where the activations do and costs O(units) per batch: each unit keeps the number
    of the last batch it fired in, and a unit is dead when that batch has left the pool.
    """

    def __init__(self, min_examples: int = 64) -> None:
        self.min_examples = int(min_examples)
        self._sizes: deque[int] = deque()   # examples in each batch of the pool, oldest first
        self._seen = 0                      # examples in the pool
        self._batches = 0                   # batches fed so far
        self._fired: Any = None             # per unit: 1 + index of the last batch it fired in (0: never)
        self._xp: Any = None                # the namespace of the arrays fed (one kind per run)

    def add(self, alive: Array, n: int) -> Array | None:
        """Feed one batch's ``alive`` vector (:func:`alive_units`) over ``n`` examples; returns the dead
        fraction over the pool (a 0-d array), or None until ``min_examples`` examples were seen."""
        dead = self.dead(alive, n)
        if dead is None:
            return None
        return self._xp.count_nonzero(dead) / alive.shape[0]

    def clear(self) -> None:
        """Forget the pool (a batch of ``min_examples`` or more is judged on its own)."""
        self._sizes.clear()
        self._seen = 0
        self._fired = None

    def dead(self, alive: Array, n: int) -> Array | None:
        """Feed one batch's ``alive`` vector over ``n`` examples; returns which units are dead over the pool
        (a boolean vector like ``alive``), or None until ``min_examples`` examples were seen.  ``alive`` may
        hold several layers' units end to end (they see the same examples)."""
        xp = self._xp if self._xp is not None else namespace(alive)
        self._xp = xp
        size = alive.shape[0]
        if size == 0:
            return None
        if n >= self.min_examples:  # one batch is enough: nothing to pool
            if self._fired is not None:
                self.clear()
            return xp.logical_not(alive)
        if self._fired is None or tuple(self._fired.shape) != tuple(alive.shape):
            self._sizes.clear()
            self._seen = 0
            self._fired = xp.zeros(alive.shape, dtype=xp.int64, device=_device(alive))
        self._batches += 1
        self._fired = xp.where(alive, self._batches, self._fired)
        self._sizes.append(int(n))
        self._seen += int(n)
        while self._seen - self._sizes[0] >= self.min_examples:  # drop batches the pool no longer needs
            self._seen -= self._sizes.popleft()
        if self._seen < self.min_examples:
            return None
        first = self._batches - len(self._sizes) + 1  # the oldest batch still in the pool
        return self._fired < first


def _device(x: Array) -> Any:
    from array_api_compat import device

    return device(x)


def examples_in(y: Array) -> int:
    """Examples in a batch of outputs (its leading dimension; 1 for a scalar)."""
    return int(y.shape[0]) if getattr(y, "ndim", 0) else 1
