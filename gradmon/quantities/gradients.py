"""Per-layer parameter quantities: gradient norm, weight norm, update-to-weight ratio, mean bias.

All norms are L2 norms over a layer's weight and bias together, computed with dot products on flat views
(no temporaries).  Inputs are dicts of arrays keyed like ``model.parameters()``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from core.clipping import sq_norm_unguarded
from gradmon.layout import Unit

Arrays = Mapping[str, np.ndarray]


#: Squared L2 norm as a Python float (inf/nan propagate): one dot product in the array's dtype, recounted in
#: float64 when float32 overflows on finite values.  Shared with core; call inside ``np.errstate(over="ignore",
#: invalid="ignore")`` (the monitor does, once per step).
sq_norm = sq_norm_unguarded


def all_finite(a: np.ndarray) -> bool:
    """Whether every entry of ``a`` is finite: a fast dot product, checked entry by entry only when it
    overflows."""
    return math.isfinite(sq_norm(a)) or bool(np.isfinite(a).all())


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


def bias_means(params: Arrays, units: Sequence[Unit]) -> np.ndarray:
    """Mean bias per unit, shape ``(n_units,)`` (NaN for a layer without bias): a strongly negative one
    switches ReLU units off."""
    return np.array([float(np.mean(params[u.bias])) if u.bias is not None else np.nan for u in units])


def update_ratios(updates: Arrays, weight_norms: np.ndarray, units: Sequence[Unit]) -> np.ndarray:
    """``||ΔW|| / ||W||`` per unit (weights only), shape ``(n_units,)``; NaN where ``||W|| = 0``."""
    upd = layer_norms(updates, units, weights_only=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_norms > 0, upd / weight_norms, np.nan)


def first_nonfinite(arrays: Arrays, units: Sequence[Unit], backward: bool = False) -> str | None:
    """Name of the first unit whose arrays hold NaN or Inf, else None: in forward order (input to output),
    or with ``backward`` in the order the backward pass writes gradients (output to input)."""
    for u in (reversed(units) if backward else units):
        if not all(all_finite(arrays[key]) for key in u.params):
            return u.name
    return None
