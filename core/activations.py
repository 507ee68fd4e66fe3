"""Elementwise activation layers: ``Sigmoid``, ``Tanh``, ``ReLU``, ``LeakyReLU``, ``ELU``.

A subclass overrides ``_f`` (forward, keeping what it needs in the cache), ``_df`` (the derivative f'(x)
from the cache) and ``_d2f`` (the second derivative, for the R-operator).  ReLU keeps its boolean mask
from the forward pass, so its backward is one multiplication.  ReLU and LeakyReLU also note which units
were positive for some example (``ctx.alive``, when the context asks), while the mask is in cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core import checks
from core.layers import Context, Layer, Params


def _note_alive(name: str, mask: np.ndarray, ctx: Context) -> None:
    """When ``ctx.alive`` is a dict: ``ctx.alive[name]`` = ``mask.any(axis=0)``, a boolean ``(units,)``
    buffer (True where the unit was positive for at least one example of the batch)."""
    if ctx.alive is not None:
        alive = ctx.buffer(name, "alive", mask.shape[1:], np.dtype(bool))
        np.logical_or.reduce(mask, axis=0, out=alive)  # mask.any(axis=0) without np.any's dispatch overhead
        ctx.alive[name] = alive


class Activation(Layer):
    """Base of elementwise activations ``y = f(x)``."""

    def _f(self, x: np.ndarray, c: dict[str, Any], ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def _df(self, c: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _d2f(self, c: dict[str, Any]) -> np.ndarray | None:
        """f''(x) from the cache, or None where it is zero almost everywhere (piecewise linear)."""
        raise NotImplementedError

    def forward(self, x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
        c = ctx.store(self.name)
        c["x"] = x
        c["derivatives"] = None  # f' and f'' of this pass, computed once by the first R-operator product
        return self._f(x, c, ctx)

    def _derivatives(self, c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        d = c.get("derivatives")
        if d is None:
            d = c["derivatives"] = (self._df(c), self._d2f(c))
        return d

    def backward(self, g: np.ndarray, p: Params, ctx: Context, grads: Params) -> np.ndarray:
        df = self._df(ctx.cache[self.name])
        if ctx.reuse:
            np.multiply(g, df, out=g)  # g is a scratch buffer of the layer above
            return g
        return g * df

    def forward_dot(self, dx: np.ndarray, p: Params, v: Params, ctx: Context) -> np.ndarray:
        c = ctx.cache[self.name]
        c["dx"] = dx
        return self._derivatives(c)[0] * dx

    def backward_dot(self, g: np.ndarray, dg: np.ndarray, p: Params, v: Params, ctx: Context,
                     hv: Params) -> np.ndarray:
        c = ctx.cache[self.name]
        df, d2 = self._derivatives(c)
        out = dg * df
        if d2 is not None:
            out = out + g * d2 * c["dx"]
        return out


class Sigmoid(Activation):
    """``σ(x) = 1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""

    kind = "sigmoid"
    activation = "sigmoid"

    def _f(self, x, c, ctx):
        s = np.empty_like(x)
        pos = x >= 0
        s[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        e = np.exp(x[~pos])
        s[~pos] = e / (1.0 + e)
        c["y"] = s
        return s

    def _df(self, c):
        s = c["y"]
        return s * (1.0 - s)

    def _d2f(self, c):
        s = c["y"]
        return s * (1.0 - s) * (1.0 - 2.0 * s)


class Tanh(Activation):
    kind = "tanh"
    activation = "tanh"

    def _f(self, x, c, ctx):
        t = np.tanh(x)
        c["y"] = t
        return t

    def _df(self, c):
        t = c["y"]
        return 1.0 - t * t

    def _d2f(self, c):
        t = c["y"]
        return -2.0 * t * (1.0 - t * t)


class ReLU(Activation):
    kind = "relu"
    activation = "relu"

    def _f(self, x, c, ctx):
        mask = ctx.buffer(self.name, "mask", x.shape, np.dtype(bool))
        np.greater(x, 0, out=mask)
        _note_alive(self.name, mask, ctx)
        y = ctx.buffer(self.name, "y", x.shape, x.dtype)
        np.maximum(x, 0, out=y)
        c["mask"] = mask
        c["y"] = y
        return y

    def _df(self, c):
        return c["mask"]

    def _d2f(self, c):
        return None


class LeakyReLU(Activation):
    """``x`` for ``x > 0``, ``alpha * x`` otherwise."""

    kind = "leakyrelu"
    activation = "leaky_relu"

    def __init__(self, alpha: float = 0.01, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha = checks.unit("LeakyReLU alpha", alpha)

    def _f(self, x, c, ctx):
        mask = x > 0
        _note_alive(self.name, mask, ctx)
        slope = np.where(mask, 1.0, self.alpha).astype(x.dtype)
        c["slope"] = slope
        y = x * slope
        c["y"] = y
        return y

    def _df(self, c):
        return c["slope"]

    def _d2f(self, c):
        return None


class ELU(Activation):
    """``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise."""

    kind = "elu"
    activation = "elu"

    def __init__(self, alpha: float = 1.0, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha = checks.positive("ELU alpha", alpha)

    def _f(self, x, c, ctx):
        pos = x > 0
        neg = self.alpha * np.expm1(np.minimum(x, 0.0))
        y = np.where(pos, x, neg).astype(x.dtype, copy=False)
        c["pos"] = pos
        c["y"] = y
        return y

    def _df(self, c):
        return np.where(c["pos"], 1.0, c["y"] + self.alpha).astype(c["y"].dtype, copy=False)

    def _d2f(self, c):
        return np.where(c["pos"], 0.0, c["y"] + self.alpha).astype(c["y"].dtype, copy=False)


ACTIVATIONS: dict[str, type[Activation]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
}

def get_activation(name: str, **kwargs: Any) -> Activation:
    """An activation layer by registry name (ValueError listing the valid names otherwise)."""
    try:
        cls = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}") from None
    return cls(**kwargs)
