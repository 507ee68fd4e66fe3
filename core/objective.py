"""The loss of a fixed batch as a function of the parameters (the ``Objective`` of the hook protocol).

Evaluation happens in float64 on copies, through the model's functional layers, so it never disturbs
training: the model's parameters, gradients, buffers and BatchNorm running statistics are untouched.
Hessian-vector products are exact (R-operator, see :mod:`core.layers`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from core.activations import LeakyReLU, ReLU
from core.layers import Context
from core.losses import Loss
from core.model import Sequential
from core.regularization import add_l2_gradient, l2_penalty, weight_keys

Arrays = Mapping[str, np.ndarray]


class BatchObjective:
    """``L(θ) = loss(model(x; θ), y) + l2 * Σ ||W||²`` on one fixed batch.

    ``masks`` fixes the dropout masks (the ones of the training step being re-evaluated); with
    ``dropout=False`` dropout is off (probe sets).  BatchNorm uses the statistics of ``x``.
    """

    def __init__(self, model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, l2: float = 0.0,
                 masks: Mapping[str, np.ndarray] | None = None, dropout: bool = True) -> None:
        self.model = model
        self.loss = loss
        self._x, self._y = x, y  # converted to float64 on first use: most steps never evaluate
        self.l2 = float(l2)
        self._masks = dict(masks or {})
        self.dropout = dropout and bool(self._masks)
        self.n_grad = 0
        self.n_hvp = 0

    @property
    def x(self) -> np.ndarray:
        """Inputs of shape ``(batch, features)``, float64."""
        if self._x.dtype != np.float64:
            self._x = np.asarray(self._x, dtype=np.float64)
        return self._x

    @property
    def y(self) -> np.ndarray:
        """Targets: integer labels ``(batch,)`` or float64 ``(batch, k)``."""
        if not np.issubdtype(self._y.dtype, np.integer) and self._y.dtype != np.float64:
            self._y = np.asarray(self._y, dtype=np.float64)
        return self._y

    def _context(self) -> Context:
        masks = {k: m.astype(np.float64, copy=False) for k, m in self._masks.items()}
        return Context(training=True, masks=masks, dropout=self.dropout)

    def _params(self, params: Arrays | None) -> dict[str, np.ndarray]:
        source = self.model.parameters() if params is None else params
        return {k: np.asarray(v, dtype=np.float64) for k, v in source.items()}

    def value(self, params: Arrays | None = None) -> float:
        p = self._params(params)
        z = self.model.forward(self.x, ctx=self._context(), params=p)
        value, _ = self.loss(z, self.y)
        if self.l2:
            value += l2_penalty(p, self.l2, weight_keys(p))
        return value

    def grad(self, params: Arrays | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients (float64) at ``params`` (current parameters when None)."""
        self.n_grad += 1
        p = self._params(params)
        ctx = self._context()
        z = self.model.forward(self.x, ctx=ctx, params=p)
        value, g = self.loss(z, self.y)
        grads = self.model.backward(g, ctx, params=p)
        if self.l2:
            weights = weight_keys(p)
            value += l2_penalty(p, self.l2, weights)
            add_l2_gradient(grads, p, self.l2, weights)
        return value, grads

    def hvp(self, vec: Arrays, params: Arrays | None = None) -> dict[str, np.ndarray]:
        """Exact Hessian-vector product ``H(θ) vec`` (float64), keyed like the parameters."""
        self.n_hvp += 1
        p = self._params(params)
        v = {k: np.asarray(vec[k], dtype=np.float64) for k in p}
        _, _, hv = self.model.hvp(self.loss, self.x, self.y, p, v, self._context())
        if self.l2:  # the penalty's Hessian is 2·l2·I on the weights
            add_l2_gradient(hv, v, self.l2, weight_keys(p))
        return hv

    def kinks(self, params: Arrays | None = None) -> np.ndarray:
        """Sign pattern of every ReLU/LeakyReLU pre-activation on this batch (flat bool array).

        Used to check a finite-difference step: if the pattern differs between θ - εv and θ + εv, a unit
        changed side and the difference quotient is not a Hessian-vector product.
        """
        record: dict[str, np.ndarray] = {}
        ctx = self._context()
        self.model.forward(self.x, ctx=ctx, params=self._params(params))
        for layer in self.model.layers:
            if isinstance(layer, (ReLU, LeakyReLU)):
                record[layer.name] = ctx.cache[layer.name]["x"] > 0
        if not record:
            return np.zeros(0, dtype=bool)
        return np.concatenate([m.ravel() for m in record.values()])
