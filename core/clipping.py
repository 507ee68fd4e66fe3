"""Gradient clipping as pure transforms that report what they did (after optax).

Both functions return ``(grads, info)`` and never modify their input: when nothing is clipped the input
dict itself is returned; otherwise new arrays.  ``info`` holds ``norm`` (the global L2 norm before
clipping), ``coef`` (the factor applied by norm clipping, 1.0 when none) and ``clipped`` (the number of
elements changed by value clipping).

Norms are exact for every finite gradient: a float32 dot product overflows to ``inf`` once the squared
norm passes about 3.4e38 (values around 1.8e19), so an ``inf`` is recomputed in float64.  A norm is
therefore ``inf`` or ``nan`` only when a gradient value is.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

Grads = Mapping[str, np.ndarray]


def sq_norm_unguarded(arr: np.ndarray) -> float:
    """Squared L2 norm ``Σ arr²`` of an array of any shape: one dot product in the array's dtype, redone
    in float64 when that overflows, so the result is finite whenever every value is.

    For hot loops: the caller runs it under ``np.errstate(over="ignore", invalid="ignore")`` (as
    :func:`global_norm` and ``Trainer.fit`` do), else numpy warns about the float32 overflow that the
    float64 pass then repairs.
    """
    flat = arr.reshape(-1)
    total = float(np.dot(flat, flat))
    if total == math.inf and flat.dtype != np.float64:
        wide = flat.astype(np.float64)
        total = float(np.dot(wide, wide))
    return total


def global_norm(grads: Grads) -> float:
    """L2 norm of all gradients together (see :func:`sq_norm_unguarded`)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return math.sqrt(sum(sq_norm_unguarded(g) for g in grads.values()))


def clip_by_global_norm(grads: Grads, max_norm: float, norm: float | None = None) -> tuple[Grads, dict[str, float]]:
    """Scale all gradients by ``min(1, max_norm / norm)``.

    ``norm``: the global norm of ``grads`` when the caller has already computed it (else it is computed
    here).  A non-finite norm (a NaN or Inf gradient) is not clipped; the caller decides what to do.
    """
    if not max_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {max_norm}")
    if norm is None:
        norm = global_norm(grads)
    if not math.isfinite(norm) or norm <= max_norm:
        return grads, {"norm": norm, "coef": 1.0, "clipped": 0}
    coef = max_norm / norm
    out = {}
    for k, g in grads.items():
        if coef >= np.finfo(g.dtype).tiny:
            out[k] = g * np.asarray(coef, dtype=g.dtype)
        else:  # a factor below the dtype's normal range would lose its precision: scale in float64
            out[k] = (g.astype(np.float64) * coef).astype(g.dtype)
    return out, {"norm": norm, "coef": coef, "clipped": 0}


def clip_by_value(grads: Grads, limit: float) -> tuple[Grads, dict[str, float]]:
    """Clip every element to ``[-limit, limit]``."""
    if not limit > 0:
        raise ValueError(f"clip_value must be positive, got {limit}")
    clipped = sum(int(np.count_nonzero(np.abs(g) > limit)) for g in grads.values())
    if clipped == 0:
        return grads, {"norm": float("nan"), "coef": 1.0, "clipped": 0}
    return {k: np.clip(g, -limit, limit) for k, g in grads.items()}, {"norm": float("nan"), "coef": 1.0,
                                                                      "clipped": clipped}
