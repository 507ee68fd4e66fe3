"""Per-unit parameter quantities: gradient norm, weight norm, update-to-weight ratio, mean bias.

Written once over the array API (:mod:`gradmon.quantities.xp`): the reductions run where the arrays live
(numpy in core, a tensor's device in PyTorch) and return one value per tensor or per unit, which the
recorder brings to the host in a single small transfer.  Norms are L2 norms; a unit's norm combines its
tensors' (``sqrt(Σ ||t||²)``), computed on the host from the per-tensor norms.

Inputs are dicts of arrays keyed like the loop's parameters (``model.parameters()`` in core,
``model.named_parameters()`` in PyTorch).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from gradmon.layout import Unit
from gradmon.quantities.xp import Array, all_finite, namespace, norms

Arrays = Mapping[str, Array]


def tensor_norms(arrays: Arrays, keys: Sequence[str]) -> Array:
    """The L2 norm of ``arrays[k]`` for each key, shape ``(len(keys),)``, on the arrays' device."""
    return norms([arrays[k] for k in keys])


def groups(units: Sequence[Unit], keys: Sequence[str], weights_only: bool = False) -> np.ndarray:
    """Which tensors make each unit: a matrix ``(n_units, len(keys))``, row ``j`` holding 1 at the positions
    in ``keys`` of unit ``j``'s parameters (or of its weights alone), 0 elsewhere; a unit with none of them
    has a row of NaN, so that its combined norm is NaN."""
    where = {k: i for i, k in enumerate(keys)}
    out = np.zeros((len(units), len(keys)))
    for j, u in enumerate(units):
        cols = [where[k] for k in (u.weights if weights_only else u.params) if k in where]
        if cols:
            out[j, cols] = 1.0
        else:
            out[j] = np.nan
    return out


def combine(norms_host: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Host: the norm of each group of tensors from their norms, ``sqrt(Σ n_i²)``, shape ``(n_groups,)``, with
    ``parts`` from :func:`groups` (NaN for an empty group; Inf/NaN propagate)."""
    sq = np.square(norms_host)
    if math.isfinite(sq.sum()):
        return np.sqrt(parts @ sq)
    with np.errstate(invalid="ignore", over="ignore"):  # by rows: 0·Inf would be NaN in a matrix product
        return np.sqrt(np.array([np.sum(sq[row > 0]) if (row > 0).any() else np.nan for row in parts]))


def bias_means(params: Arrays, units: Sequence[Unit]) -> list[tuple[int, Array]]:
    """``(unit index, mean bias)`` for the units with a bias (a strongly negative one switches rectifiers
    off); each mean a 0-d array on the bias' device."""
    out = []
    for u in units:
        if u.bias is not None and u.bias in params:
            b = params[u.bias]
            if isinstance(b, np.ndarray) and b.dtype in (np.float32, np.float64) and b.size:
                out.append((u.index, np.add.reduce(b, axis=None) / b.dtype.type(b.size)))  # np.mean, cheaper
                continue
            xp = namespace(b)
            out.append((u.index, xp.mean(xp.astype(b, xp.float32) if b.dtype not in (xp.float32, xp.float64)
                                         else b)))
    return out


def update_ratios(update_norms: np.ndarray, weight_norms: np.ndarray) -> np.ndarray:
    """Host: ``||ΔW|| / ||W||`` per unit, shape ``(n_units,)``; NaN where ``||W|| = 0`` or unknown."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_norms > 0, update_norms / weight_norms, np.nan)


def first_nonfinite(arrays: Arrays, units: Sequence[Unit], backward: bool = False) -> str | None:
    """Name of the first unit whose arrays hold NaN or Inf, else None: in forward order (input to output),
    or with ``backward`` in the order the backward pass writes gradients (output to input).  Host checks:
    only called once a step is already known to be non-finite."""
    for u in (reversed(units) if backward else units):
        if not all(all_finite(arrays[key]) for key in u.params if key in arrays):
            return u.name
    return None
