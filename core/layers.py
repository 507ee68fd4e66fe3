"""Layers: ``Layer`` base, ``Dense``, ``BatchNorm``, ``Dropout``.

Layers are functional over their parameters: ``forward(x, p, ctx)`` reads the layer's parameters from ``p``
(``{"weight": W, "bias": b}``), keeps what backward needs in ``ctx.cache[name]``, and returns the output;
``backward(g, p, ctx, grads)`` writes parameter gradients into ``grads`` and returns the input gradient.
The same layer can therefore be evaluated at other parameters (float64 copies, perturbed points) without
touching the model's state, which is how curvature is measured.

Every layer also implements the R-operator (Pearlmutter 1994): ``forward_dot`` propagates a tangent
``dx`` and a parameter direction ``v`` forward, ``backward_dot`` propagates the tangent of the backward
pass, giving exact Hessian-vector products ("forward-over-reverse").

Shapes: ``x`` is ``(batch, in_features)``; a Dense weight is ``(in_features, out_features)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core import checks
from core.initializers import get_initializer

Params = dict[str, np.ndarray]


class Context:
    """Per-evaluation scratch space: caches for backward, reusable buffers, dropout masks.

    ``training`` selects batch statistics (BatchNorm) and active dropout.  ``masks`` fixes dropout masks
    (keyed by layer name) so a batch can be re-evaluated exactly; ``dropout=False`` turns dropout off even
    in training mode (curvature probes).  With ``reuse=True`` buffers persist across calls of the same
    shape (the trainer's hot path), so arrays handed out are overwritten by the next step; only a context
    with ``update_stats=True`` (the trainer's own pass) moves BatchNorm running statistics, and only at
    :meth:`commit_stats`: until then the batch statistics wait in ``pending_stats`` (the trainer commits
    them only for a step it applies, so a skipped non-finite step leaves the running statistics untouched).
    ``alive``, when a dict, receives from each ReLU/LeakyReLU layer a boolean ``(units,)`` array, True where
    the unit was positive for at least one example of the batch (a buffer like the others); None: not kept.
    """

    def __init__(self, training: bool = True, rng: np.random.Generator | None = None,
                 masks: dict[str, np.ndarray] | None = None, dropout: bool = True,
                 reuse: bool = False, update_stats: bool = False) -> None:
        self.training = training
        self.rng = rng
        self.masks: dict[str, np.ndarray] = {} if masks is None else masks
        self.dropout = dropout
        self.reuse = reuse
        self.update_stats = update_stats
        self.alive: dict[str, np.ndarray] | None = None
        #: ``(layer, batch mean, unbiased batch variance)`` waiting for :meth:`commit_stats`
        self.pending_stats: list[tuple[Any, np.ndarray, np.ndarray]] = []
        self.cache: dict[str, dict[str, Any]] = {}
        self._buffers: dict[tuple[str, str], np.ndarray] = {}

    def commit_stats(self) -> None:
        """Blend the pending batch statistics into the layers' running statistics (then forget them)."""
        for layer, mean, var in self.pending_stats:
            layer.blend_stats(mean, var)
        self.pending_stats.clear()

    def buffer(self, layer: str, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array, the same one on every call with the same shape when ``reuse``."""
        if not self.reuse:
            return np.empty(shape, dtype=dtype)
        buf = self._buffers.get((layer, key))
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            self._buffers[(layer, key)] = buf
        return buf

    def store(self, layer: str) -> dict[str, Any]:
        c = self.cache.get(layer)
        if c is None:
            c = self.cache[layer] = {}
        return c


class Layer:
    """Base class.  Subclasses set ``kind`` and override ``forward``/``backward`` (and the R-operator)."""

    kind: str = "layer"
    #: registry name of the activation for activation layers, else None
    activation: str | None = None

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.units: int | None = None

    def init_params(self, rng: np.random.Generator) -> Params:
        """Fresh float64 parameter values keyed by parameter name (``{"weight": W, "bias": b}``; empty for
        layers without parameters)."""
        return {}

    def forward(self, x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def backward(self, g: np.ndarray, p: Params, ctx: Context, grads: Params) -> np.ndarray:
        raise NotImplementedError

    def forward_dot(self, dx: np.ndarray, p: Params, v: Params, ctx: Context) -> np.ndarray:
        """Tangent of the output for input tangent ``dx`` and parameter direction ``v``."""
        raise NotImplementedError

    def backward_dot(self, g: np.ndarray, dg: np.ndarray, p: Params, v: Params, ctx: Context,
                     hv: Params) -> np.ndarray:
        """Tangent of the input gradient; writes the Hessian-vector product of the parameters to ``hv``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b`` with ``W`` of shape ``(in_features, out_features)``.

    ``init`` names an initializer of :data:`core.initializers.INITIALIZERS`; ``std`` goes with ``normal``
    and ``limit`` with ``uniform``; ``bias_init`` is a constant.
    """

    kind = "dense"

    def __init__(self, in_features: int, out_features: int, init: str = "xavier_uniform",
                 bias_init: float = 0.0, std: float | None = None, limit: float | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.in_features = checks.positive_int("Dense in_features", in_features)
        self.out_features = checks.positive_int("Dense out_features", out_features)
        get_initializer(init)
        if init == "normal" and std is None:
            raise ValueError("Dense(init='normal') needs a positive std, e.g. std=0.05")
        if init == "uniform" and limit is None:
            raise ValueError("Dense(init='uniform') needs a positive limit, e.g. limit=0.05")
        self.units = self.out_features
        self.init = init
        self.bias_init = checks.number("Dense bias_init", bias_init)
        self.std = checks.optional_positive("Dense std", std)
        self.limit = checks.optional_positive("Dense limit", limit)

    def init_params(self, rng: np.random.Generator) -> Params:
        fn = get_initializer(self.init)
        shape = (self.in_features, self.out_features)
        if self.init == "normal":
            w = fn(shape, rng, std=self.std)
        elif self.init == "uniform":
            w = fn(shape, rng, limit=self.limit)
        else:
            w = fn(shape, rng)
        return {"weight": w, "bias": np.full(self.out_features, self.bias_init)}

    def forward(self, x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (batch, {self.in_features}), got {x.shape}")
        w = p["weight"]
        y = ctx.buffer(self.name, "y", (x.shape[0], self.out_features), w.dtype)
        np.matmul(x, w, out=y)
        y += p["bias"]
        ctx.store(self.name)["x"] = x
        return y

    def backward(self, g: np.ndarray, p: Params, ctx: Context, grads: Params) -> np.ndarray:
        x = ctx.cache[self.name]["x"]
        w = p["weight"]
        gw = grads.get("weight")
        if gw is None or gw.shape != w.shape:
            gw = grads["weight"] = np.empty_like(w)
        np.matmul(x.T, g, out=gw)
        gb = grads.get("bias")
        if gb is None or gb.shape != p["bias"].shape:
            gb = grads["bias"] = np.empty_like(p["bias"])
        np.sum(g, axis=0, out=gb)
        if ctx.cache[self.name].get("first", False):
            return g  # the input gradient of the first layer is never used
        gx = ctx.buffer(self.name, "gx", x.shape, g.dtype)
        np.matmul(g, w.T, out=gx)
        return gx

    def forward_dot(self, dx: np.ndarray | None, p: Params, v: Params, ctx: Context) -> np.ndarray:
        """``dx`` None: the input does not move (the first layer), so its product with ``W`` is skipped."""
        x = ctx.cache[self.name]["x"]
        ctx.cache[self.name]["dx"] = dx
        out = x @ v["weight"]
        if dx is not None:
            out += dx @ p["weight"]
        out += v["bias"]
        return out

    def backward_dot(self, g: np.ndarray, dg: np.ndarray, p: Params, v: Params, ctx: Context,
                     hv: Params) -> np.ndarray | None:
        """Returns None for the first layer (whose input tangent nothing reads)."""
        c = ctx.cache[self.name]
        x, dx = c["x"], c["dx"]
        hw = x.T @ dg
        if dx is not None:
            hw += dx.T @ g
        hv["weight"] = hw
        hv["bias"] = dg.sum(axis=0)
        if c.get("first", False):
            return None
        return dg @ p["weight"].T + g @ v["weight"].T


class BatchNorm(Layer):
    """Batch normalisation over the batch axis: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

    In training mode the batch mean and (biased) variance are used and running statistics are updated as
    ``running = momentum * running + (1 - momentum) * batch`` (unbiased variance); in eval mode the running
    statistics are used.  Training mode needs at least 2 examples per batch (as in PyTorch): the variance
    of one example is 0, which would zero every gradient upstream.  ``eps`` (> 0) is added to the variance.
    """

    kind = "batchnorm"

    def __init__(self, num_features: int, momentum: float = 0.9, eps: float = 1e-5,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.num_features = checks.positive_int("BatchNorm num_features", num_features)
        self.units = self.num_features
        self.momentum = checks.unit("BatchNorm momentum", momentum)
        self.eps = checks.positive("BatchNorm eps", eps)
        self.running_mean = np.zeros(self.num_features)
        self.running_var = np.ones(self.num_features)

    def init_params(self, rng: np.random.Generator) -> Params:
        return {"gamma": np.ones(self.num_features), "beta": np.zeros(self.num_features)}

    def forward(self, x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
        if not ctx.training:
            scale = p["gamma"] / np.sqrt(self.running_var + self.eps)
            return ((x - self.running_mean) * scale + p["beta"]).astype(x.dtype, copy=False)
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"{self.name}: BatchNorm in training mode needs more than 1 example per batch, "
                             f"got input of shape {x.shape}; use batches of 2 or more (or eval mode)")
        mean = x.mean(axis=0)
        xc = x - mean
        var = np.einsum("ij,ij->j", xc, xc) / n
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = xc * inv_std
        y = xhat * p["gamma"] + p["beta"]
        ctx.store(self.name).update(xhat=xhat, xc=xc, inv_std=inv_std)
        if ctx.update_stats:  # blended into the running statistics at ctx.commit_stats()
            ctx.pending_stats.append((self, mean, var * (n / (n - 1))))
        return y

    def blend_stats(self, mean: np.ndarray, var: np.ndarray) -> None:
        """``running = momentum * running + (1 - momentum) * batch`` for a batch's mean and unbiased
        variance, both of shape ``(num_features,)``."""
        m = self.momentum
        self.running_mean = m * self.running_mean + (1 - m) * mean
        self.running_var = m * self.running_var + (1 - m) * var

    def backward(self, g: np.ndarray, p: Params, ctx: Context, grads: Params) -> np.ndarray:
        c = ctx.cache[self.name]
        xhat, inv_std = c["xhat"], c["inv_std"]
        n = g.shape[0]
        grads["gamma"] = np.einsum("ij,ij->j", g, xhat)
        grads["beta"] = g.sum(axis=0)
        h = g * p["gamma"]
        return (inv_std / n) * (n * h - h.sum(axis=0) - xhat * np.einsum("ij,ij->j", h, xhat))

    def forward_dot(self, dx: np.ndarray, p: Params, v: Params, ctx: Context) -> np.ndarray:
        c = ctx.cache[self.name]
        xc, inv_std, xhat = c["xc"], c["inv_std"], c["xhat"]
        dxc = dx - dx.mean(axis=0)
        dvar = 2.0 * (xc * dxc).mean(axis=0)
        dinv = -0.5 * inv_std ** 3 * dvar
        dxhat = dxc * inv_std + xc * dinv
        c.update(dxhat=dxhat, dinv=dinv)
        return v["gamma"] * xhat + p["gamma"] * dxhat + v["beta"]

    def backward_dot(self, g: np.ndarray, dg: np.ndarray, p: Params, v: Params, ctx: Context,
                     hv: Params) -> np.ndarray:
        c = ctx.cache[self.name]
        xhat, inv_std, dxhat, dinv = c["xhat"], c["inv_std"], c["dxhat"], c["dinv"]
        n = g.shape[0]
        hv["gamma"] = (dg * xhat + g * dxhat).sum(axis=0)
        hv["beta"] = dg.sum(axis=0)
        h = g * p["gamma"]
        dh = dg * p["gamma"] + g * v["gamma"]
        s_hx = (h * xhat).sum(axis=0)
        inner = n * h - h.sum(axis=0) - xhat * s_hx
        dinner = n * dh - dh.sum(axis=0) - dxhat * s_hx - xhat * (dh * xhat + h * dxhat).sum(axis=0)
        return (dinv / n) * inner + (inv_std / n) * dinner


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the rest by
    ``1 / (1 - p)``; identity in eval mode (and when the context turns dropout off)."""

    kind = "dropout"

    def __init__(self, p: float, name: str | None = None) -> None:
        super().__init__(name)
        self.p = checks.unit("Dropout p", p)

    def _mask(self, x: np.ndarray, ctx: Context) -> np.ndarray | None:
        if not ctx.training or not ctx.dropout or self.p == 0.0:
            return None
        mask = ctx.masks.get(self.name)
        if mask is None or mask.shape != x.shape:
            if ctx.rng is None:
                raise RuntimeError(f"{self.name}: dropout in training mode needs a random generator")
            keep = ctx.rng.random(x.shape) >= self.p
            mask = (keep / (1.0 - self.p)).astype(x.dtype)
            ctx.masks[self.name] = mask
        return mask

    def forward(self, x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
        mask = self._mask(x, ctx)
        ctx.store(self.name)["mask"] = mask
        return x if mask is None else x * mask

    def backward(self, g: np.ndarray, p: Params, ctx: Context, grads: Params) -> np.ndarray:
        mask = ctx.cache[self.name]["mask"]
        return g if mask is None else g * mask

    def forward_dot(self, dx: np.ndarray, p: Params, v: Params, ctx: Context) -> np.ndarray:
        mask = ctx.cache[self.name]["mask"]
        return dx if mask is None else dx * mask

    def backward_dot(self, g: np.ndarray, dg: np.ndarray, p: Params, v: Params, ctx: Context,
                     hv: Params) -> np.ndarray:
        mask = ctx.cache[self.name]["mask"]
        return dg if mask is None else dg * mask
