"""Per-layer gradient quantities: gradient norm, weight norm, update-to-weight ratio.

All norms are L2 norms over a layer's weight and bias together, computed with dot products on flat views
(no temporaries).  Inputs are dicts of arrays keyed like ``model.parameters()``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from gradmon.layout import Unit

Arrays = Mapping[str, np.ndarray]


def sq_norm(a: np.ndarray) -> float:
    """Squared L2 norm as a Python float (inf/nan propagate).  Call inside ``np.errstate(over="ignore",
    invalid="ignore")`` when the values may overflow (the monitor does, once per step)."""
    flat = a.reshape(-1)
    return float(np.dot(flat, flat))


def layer_sq_norms(arrays: Arrays, units: Sequence[Unit], weights_only: bool = False) -> np.ndarray:
    """Squared L2 norm per unit, shape ``(n_units,)``: over weight and bias, or the weight alone."""
    out = np.empty(len(units))
    for j, u in enumerate(units):
        total = sq_norm(arrays[u.weight])
        if not weights_only and u.bias is not None:
            total += sq_norm(arrays[u.bias])
        out[j] = total
    return out


def layer_norms(arrays: Arrays, units: Sequence[Unit], weights_only: bool = False) -> np.ndarray:
    """L2 norm per unit, shape ``(n_units,)``: over weight and bias, or the weight alone."""
    return np.sqrt(layer_sq_norms(arrays, units, weights_only))


def global_norm(arrays: Arrays) -> float:
    """L2 norm of every array together."""
    return math.sqrt(sum(sq_norm(a) for a in arrays.values()))


def update_ratios(updates: Arrays, weight_norms: np.ndarray, units: Sequence[Unit]) -> np.ndarray:
    """``||ΔW|| / ||W||`` per unit (weights only), shape ``(n_units,)``; NaN where ``||W|| = 0``."""
    upd = layer_norms(updates, units, weights_only=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_norms > 0, upd / weight_norms, np.nan)


def first_nonfinite(arrays: Arrays, units: Sequence[Unit]) -> str | None:
    """Name of the first unit (input to output) whose parameters hold NaN or Inf, else None."""
    for u in units:
        for key in u.params:
            if not math.isfinite(sq_norm(arrays[key])):
                return u.name
    return None
