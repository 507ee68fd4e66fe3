"""The L2 penalty ``l2 * Σ ||W||²`` over the weights (Dense ``.weight`` parameters, not biases or
BatchNorm's gamma and beta), written once for the trainer and the objective.

Its gradient is ``2 * l2 * W`` on each weight; its Hessian is ``2 * l2 * I`` on the weights, so its
Hessian-vector product has the gradient's form with the vector in place of the weights.

>>> import numpy as np
>>> params = {"dense0.weight": np.array([[3.0, 4.0]]), "dense0.bias": np.array([1.0, 1.0])}
>>> l2_penalty(params, 0.1, weight_keys(params))
2.5
>>> grads = {"dense0.weight": np.zeros((1, 2)), "dense0.bias": np.zeros(2)}
>>> add_l2_gradient(grads, params, 0.1, weight_keys(params)); grads["dense0.weight"]
array([[0.6, 0.8]])
"""

from __future__ import annotations

from typing import Iterable, Mapping, MutableMapping

import numpy as np

from core.clipping import sq_norm_unguarded


def weight_keys(params: Iterable[str]) -> list[str]:
    """The keys of ``params`` (a mapping or its keys) that the penalty covers: those ending in ``.weight``."""
    return [k for k in params if k.endswith(".weight")]


def l2_penalty(params: Mapping[str, np.ndarray], l2: float, weights: Iterable[str]) -> float:
    """``l2 * Σ_k Σ params[k]²`` over the keys ``weights`` (unitless, added to the loss).

    Each sum of squares is one dot product in the array's dtype, redone in float64 when a float32 one
    overflows (:func:`core.clipping.sq_norm_unguarded`), so it is finite for any finite weights.  Call it
    under ``np.errstate(over="ignore")`` in float32 hot loops (see that function).
    """
    return l2 * sum(sq_norm_unguarded(params[k]) for k in weights)


def add_l2_gradient(grads: MutableMapping[str, np.ndarray], params: Mapping[str, np.ndarray], l2: float,
                    weights: Iterable[str]) -> None:
    """``grads[k] += 2 * l2 * params[k]`` in place for each key in ``weights`` (same shapes and dtype).

    For a Hessian-vector product pass the products as ``grads`` and the vector as ``params``.
    """
    coef = 2.0 * l2
    for k in weights:
        grads[k] += coef * params[k]
