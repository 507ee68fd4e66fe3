"""Optimizers: ``SGD`` (momentum, Nesterov), ``AdaGrad``, ``RMSprop``, ``Adam``.

``step(params, grads)`` updates ``params`` in place and returns the applied updates ``Δ`` (``θ ← θ + Δ``),
which monitors use for update-to-weight ratios.  A subclass overrides ``_update`` only.  Formulas, with
``g`` the (clipped) gradient and ``t`` the 1-based step:

- SGD: ``v ← μ v + g``; ``Δ = -lr v`` (plain SGD when μ = 0); Nesterov: ``Δ = -lr (g + μ v)``.
- AdaGrad: ``G ← G + g²``; ``Δ = -lr g / (sqrt(G) + eps)``.
- RMSprop: ``s ← ρ s + (1 - ρ) g²``; ``Δ = -lr g / (sqrt(s) + eps)``.
- Adam: ``m ← β1 m + (1 - β1) g``; ``v ← β2 v + (1 - β2) g²``;
  ``Δ = -lr m̂ / (sqrt(v̂) + eps)`` with ``m̂ = m / (1 - β1ᵗ)``, ``v̂ = v / (1 - β2ᵗ)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from core import checks


class Optimizer:
    """Base class.  State arrays live in ``self.state[param_key][slot]``."""

    name = "optimizer"

    def __init__(self, lr: float) -> None:
        self.lr = checks.positive("lr", lr)
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self._updates: dict[str, np.ndarray] = {}

    @property
    def hyperparams(self) -> dict[str, float]:
        """Settings as plain floats (``lr`` and the optimizer's own)."""
        return {"lr": self.lr}

    def _slot(self, key: str, slot: str, like: np.ndarray) -> np.ndarray:
        s = self.state.setdefault(key, {})
        arr = s.get(slot)
        if arr is None:
            arr = s[slot] = np.zeros_like(like)
        return arr

    def _update(self, key: str, g: np.ndarray, out: np.ndarray) -> None:
        """Write the update for one parameter into ``out``."""
        raise NotImplementedError

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Apply one update to ``params`` (in place); return the updates applied, keyed like ``params``.

        The returned arrays are buffers reused by the next step.
        """
        self.t += 1
        for key, p in params.items():
            out = self._updates.get(key)
            if out is None or out.shape != p.shape or out.dtype != p.dtype:
                out = self._updates[key] = np.empty_like(p)
            self._update(key, grads[key], out)
            p += out
        return self._updates

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``{"t": t, "<param>/<slot>": array}`` for checkpoints."""
        out: dict[str, np.ndarray] = {"t": np.array(self.t)}
        for key, slots in self.state.items():
            for slot, arr in slots.items():
                out[f"{key}/{slot}"] = arr.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.state = {}
        for name, arr in state.items():
            if name == "t":
                continue
            key, slot = name.rsplit("/", 1)
            self.state.setdefault(key, {})[slot] = np.array(arr)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(lr)
        self.momentum = checks.unit("momentum", momentum)
        self.nesterov = checks.flag("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0: pass momentum=0.9, say, or nesterov=False")

    @property
    def hyperparams(self) -> dict[str, float]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": float(self.nesterov)}

    def _update(self, key, g, out):
        if self.momentum == 0.0:
            np.multiply(g, -self.lr, out=out)
            return
        v = self._slot(key, "velocity", g)
        v *= self.momentum
        v += g
        if self.nesterov:
            np.multiply(v, self.momentum, out=out)
            out += g
            out *= -self.lr
        else:
            np.multiply(v, -self.lr, out=out)


class AdaGrad(Optimizer):
    name = "adagrad"

    def __init__(self, lr: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = checks.positive("eps", eps)

    @property
    def hyperparams(self) -> dict[str, float]:
        return {"lr": self.lr, "eps": self.eps}

    def _update(self, key, g, out):
        acc = self._slot(key, "sum_sq", g)
        acc += g * g
        np.sqrt(acc, out=out)
        out += self.eps
        np.divide(g, out, out=out)
        out *= -self.lr


class RMSprop(Optimizer):
    name = "rmsprop"

    def __init__(self, lr: float = 0.001, rho: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.rho = checks.unit("rho", rho)
        self.eps = checks.positive("eps", eps)

    @property
    def hyperparams(self) -> dict[str, float]:
        return {"lr": self.lr, "rho": self.rho, "eps": self.eps}

    def _update(self, key, g, out):
        s = self._slot(key, "mean_sq", g)
        s *= self.rho
        s += (1.0 - self.rho) * (g * g)
        np.sqrt(s, out=out)
        out += self.eps
        np.divide(g, out, out=out)
        out *= -self.lr


class Adam(Optimizer):
    name = "adam"

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.beta1 = checks.unit("beta1", beta1)
        self.beta2 = checks.unit("beta2", beta2)
        self.eps = checks.positive("eps", eps)

    @property
    def hyperparams(self) -> dict[str, float]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _update(self, key, g, out):
        m = self._slot(key, "m", g)
        v = self._slot(key, "v", g)
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        np.sqrt(v / c2, out=out)
        out += self.eps
        np.divide(m, out, out=out)
        out *= -self.lr / c1


def momentum(lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False) -> SGD:
    """SGD with heavy-ball momentum (0.9 by default)."""
    return SGD(lr=lr, momentum=momentum, nesterov=nesterov)


OPTIMIZERS: dict[str, Any] = {
    "sgd": SGD,
    "momentum": momentum,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


def get_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by registry name (ValueError listing the valid names otherwise)."""
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}") from None
    return factory(**kwargs)


def as_optimizer(optimizer: Optimizer | str | None) -> Optimizer:
    """``optimizer`` itself when it is an :class:`Optimizer`; a registry name gives that optimizer with its
    default settings; None gives ``SGD(0.01)``.  Anything else (a class, a number) is a TypeError that says
    what to pass."""
    if optimizer is None:
        return SGD(0.01)
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        return get_optimizer(optimizer)
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an instance such as core.{optimizer.__name__}(lr=...), not the class")
    raise TypeError(f"optimizer must be a core.Optimizer such as core.Adam(lr=1e-3), or a name "
                    f"({', '.join(OPTIMIZERS)}), got {optimizer!r}")
