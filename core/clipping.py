"""Gradient clipping as pure transforms that report what they did (after optax).

Both functions return ``(grads, info)`` and never modify their input: when nothing is clipped the input
dict itself is returned; otherwise new arrays.  ``info`` holds ``norm`` (the global L2 norm before
clipping), ``coef`` (the factor applied by norm clipping, 1.0 when none) and ``clipped`` (the number of
elements changed by value clipping).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

Grads = Mapping[str, np.ndarray]


def global_norm(grads: Grads) -> float:
    """L2 norm of all gradients together (dot products, no temporaries)."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for g in grads.values():
            flat = g.reshape(-1)
            total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_by_global_norm(grads: Grads, max_norm: float) -> tuple[Grads, dict[str, float]]:
    """Scale all gradients by ``min(1, max_norm / norm)``."""
    if not max_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {max_norm}")
    norm = global_norm(grads)
    if not math.isfinite(norm) or norm <= max_norm:
        return grads, {"norm": norm, "coef": 1.0, "clipped": 0}
    coef = max_norm / norm
    return {k: g * np.asarray(coef, dtype=g.dtype) for k, g in grads.items()}, {"norm": norm, "coef": coef,
                                                                                "clipped": 0}


def clip_by_value(grads: Grads, limit: float) -> tuple[Grads, dict[str, float]]:
    """Clip every element to ``[-limit, limit]``."""
    if not limit > 0:
        raise ValueError(f"clip_value must be positive, got {limit}")
    clipped = sum(int(np.count_nonzero(np.abs(g) > limit)) for g in grads.values())
    if clipped == 0:
        return grads, {"norm": float("nan"), "coef": 1.0, "clipped": 0}
    return {k: np.clip(g, -limit, limit) for k, g in grads.items()}, {"norm": float("nan"), "coef": 1.0,
                                                                      "clipped": clipped}
