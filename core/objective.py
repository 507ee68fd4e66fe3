"""The loss of a fixed batch as a function of the parameters (the ``Objective`` of the hook protocol).

Evaluation happens in float64 on copies, through the model's functional layers, so it never disturbs
training: the model's parameters, gradients, buffers and BatchNorm running statistics are untouched.
Hessian-vector products are exact (R-operator, see :mod:`core.layers`).  For many products at the same
point (one curvature estimate), :meth:`BatchObjective.linearize` runs the forward and backward pass once and
returns a :class:`BatchOperator` whose every product is only the R-operator's two passes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from core.activations import LeakyReLU, ReLU
from core.layers import Context
from core.losses import Loss
from core.model import Linearization, Sequential
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

    def _context(self, dtype: np.dtype = np.dtype(np.float64)) -> Context:
        masks = {k: m.astype(dtype, copy=False) for k, m in self._masks.items()}
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

    def linearize(self, params: Arrays | None = None, dtype: str | np.dtype = "float64") -> "BatchOperator":
        """The Hessian at ``params`` (current parameters when None) as an operator on flat float64 vectors:
        one forward and backward pass now, the R-operator's two passes per product, computed in ``dtype``
        (float64; a float32 model's own dtype halves their cost for a rougher estimate)."""
        dt = np.dtype(dtype)
        if dt == np.float64:
            p, x, y = self._params(params), self.x, self.y
        else:
            source = self.model.parameters() if params is None else params
            p = {k: np.asarray(v, dtype=dt) for k, v in source.items()}
            x = np.asarray(self._x, dtype=dt)
            y = self._y if np.issubdtype(self._y.dtype, np.integer) else np.asarray(self._y, dtype=dt)
        return BatchOperator(self, p, self.model.linearize(self.loss, x, y, p, self._context(dt)))

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


class BatchOperator:
    """The Hessian of a :class:`BatchObjective` at fixed parameters, on flat float64 vectors of length ``dim``
    (parameters in ``model.parameters()`` order): a curvature estimate's operator (see
    :class:`gradmon.quantities.curvature.HessianOperator`).  ``value`` and ``grads`` are the loss and
    gradient at that point."""

    #: how :meth:`exact_trace` gets the trace
    trace_method = "exact (Gauss-Newton)"

    def __init__(self, objective: BatchObjective, params: dict[str, np.ndarray], lin: Linearization) -> None:
        self.objective, self.params, self.lin = objective, params, lin
        self.keys = list(params)
        self.shapes = [params[k].shape for k in self.keys]
        self.offsets = np.cumsum([0] + [params[k].size for k in self.keys])
        self.dim = int(self.offsets[-1])
        self.dtype = params[self.keys[0]].dtype if self.keys else np.dtype(np.float64)
        self.weights = weight_keys(params) if objective.l2 else []
        self.value, self.grads = lin.value, lin.grads
        self.n_hvp = 0

    def _split(self, v: np.ndarray) -> dict[str, np.ndarray]:
        o = self.offsets
        return {k: v[o[i]:o[i + 1]].reshape(shape) for i, (k, shape) in enumerate(zip(self.keys, self.shapes))}

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """``H v`` for a float64 vector of length ``dim`` (computed, and returned, in the operator's ``dtype``)."""
        self.n_hvp += 1
        self.objective.n_hvp += 1
        vec = self._split(np.asarray(v, dtype=self.dtype))
        hv = self.lin.hvp(vec)
        if self.weights:  # the penalty's Hessian is 2·l2·I on the weights
            add_l2_gradient(hv, vec, self.objective.l2, self.weights)
        return np.concatenate([np.ravel(hv[k]) for k in self.keys])

    def vector(self, values: np.ndarray) -> np.ndarray:
        """A float64 host array as a vector of the operator's ``dtype``."""
        return values.astype(self.dtype, copy=False)

    def layer_traces(self) -> dict[str, float] | None:
        """The exact Hessian trace of each Dense layer (penalty included) where the Gauss-Newton route applies
        (:meth:`core.model.Linearization.gauss_newton_trace`), else None."""
        if not hasattr(self, "_traces"):
            lin = self.lin
            factor = lin.loss.gauss_newton_factor(lin.z, lin.y).astype(self.dtype, copy=False)
            traces = lin.gauss_newton_trace(factor)
            for key in self.weights if traces is not None else ():
                layer = key.rsplit(".", 1)[0]
                traces[layer] = traces.get(layer, 0.0) + 2.0 * self.objective.l2 * self.params[key].size
            self._traces = traces
        return None if self._traces is None else dict(self._traces)

    def exact_trace(self) -> float | None:
        """``tr(H)`` exactly where the network allows a cheap exact route, else None."""
        traces = self.layer_traces()
        return None if traces is None else float(sum(traces.values()))
