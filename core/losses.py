"""Losses: ``mse``, ``binary_cross_entropy``, ``cross_entropy``.

A loss maps the network output ``z`` of shape ``(batch, k)`` and the targets to a scalar and its gradient
with respect to ``z``.  ``dot(z, y, dz)`` is the R-operator of that gradient (the Hessian of the loss in
``z`` applied to ``dz``), used for exact Hessian-vector products.

- ``mse``: mean over all elements of ``(z - y)²`` (no ½ factor); targets of shape ``(batch, k)``.
- ``binary_cross_entropy``: on logits ``z`` of shape ``(batch, 1)`` (the sigmoid lives inside), labels in
  {0, 1}; mean over the batch.
- ``cross_entropy``: softmax and negative log-likelihood on logits, integer labels of shape ``(batch,)``;
  mean over the batch; the log-softmax is computed stably (max subtracted).
"""

from __future__ import annotations

import numpy as np


class Loss:
    """Base class: ``__call__`` returns ``(value, grad_z)``; ``dot`` returns the R-op of ``grad_z``."""

    name: str = "loss"

    def __call__(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def dot(self, z: np.ndarray, y: np.ndarray, dz: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def gauss_newton_factor(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``S`` of shape ``(batch, outputs, k)`` with ``Sₙ Sₙᵀ`` the Hessian of the loss in example ``n``'s
        outputs (the batch mean included), for exact Gauss-Newton traces."""
        raise NotImplementedError

    def predictions(self, z: np.ndarray) -> np.ndarray:
        """Class predictions from outputs (classification losses only)."""
        raise NotImplementedError(f"{self.name} is a regression loss: no class predictions")

    def check_targets(self, y: np.ndarray, n_outputs: int) -> None:
        """ValueError with one clear line when targets don't fit the loss and the output width."""


class MSE(Loss):
    name = "mse"

    def _targets(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y.reshape(z.shape) if y.ndim == 1 else y

    def __call__(self, z, y):
        diff = z - self._targets(z, y)
        return float(np.mean(diff * diff)), (2.0 / diff.size) * diff

    def dot(self, z, y, dz):
        return (2.0 / z.size) * dz

    def gauss_newton_factor(self, z, y):
        n, k = z.shape
        return np.broadcast_to(np.sqrt(2.0 / z.size) * np.eye(k), (n, k, k))

    def check_targets(self, y, n_outputs):
        width = 1 if y.ndim == 1 else y.shape[1]
        if width != n_outputs:
            raise ValueError(f"mse: targets have {width} columns but the model outputs {n_outputs}")


class BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"

    def _targets(self, z, y):
        return y.reshape(z.shape).astype(z.dtype, copy=False)

    def __call__(self, z, y):
        t = self._targets(z, y)
        # softplus(z) - t*z, stable for large |z|
        value = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        s = _sigmoid(z)
        return float(value.mean()), (s - t) / z.size

    def dot(self, z, y, dz):
        s = _sigmoid(z)
        return s * (1.0 - s) * dz / z.size

    def gauss_newton_factor(self, z, y):
        s = _sigmoid(z)
        root = np.sqrt(s * (1.0 - s) / z.size)  # (n, k): the Hessian is diagonal
        return root[:, :, None] * np.eye(z.shape[1])

    def predictions(self, z):
        return (z[:, 0] > 0).astype(np.int64)

    def check_targets(self, y, n_outputs):
        if n_outputs != 1:
            raise ValueError(f"binary_cross_entropy needs a model with 1 output, got {n_outputs}")
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError("binary_cross_entropy needs labels 0 or 1")


class CrossEntropy(Loss):
    name = "cross_entropy"

    def _softmax(self, z):
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        return shifted, e / s, np.log(s)

    def __call__(self, z, y):
        n = z.shape[0]
        shifted, p, log_s = self._softmax(z)
        rows = np.arange(n)
        value = float(np.mean(log_s[:, 0] - shifted[rows, y]))
        g = p
        g[rows, y] -= 1.0
        g /= n
        return value, g

    def dot(self, z, y, dz):
        _, p, _ = self._softmax(z)
        return p * (dz - (p * dz).sum(axis=1, keepdims=True)) / z.shape[0]

    def gauss_newton_factor(self, z, y):
        # (diag(p) - p pᵀ)/n = S Sᵀ with S = (diag(√p) - p √pᵀ)/√n, since Σ p = 1
        _, p, _ = self._softmax(z)
        root = np.sqrt(p)
        factor = root[:, None, :] * (np.eye(z.shape[1])[None] - p[:, :, None])
        return factor / np.sqrt(z.shape[0])

    def predictions(self, z):
        return z.argmax(axis=1)

    def check_targets(self, y, n_outputs):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"cross_entropy needs integer class labels of shape (n,), got {y.dtype} of shape "
                             f"{y.shape}")
        if y.size and (y.min() < 0 or y.max() >= n_outputs):
            raise ValueError(f"cross_entropy: labels must be in [0, {n_outputs - 1}] for a model with "
                             f"{n_outputs} outputs, got range [{y.min()}, {y.max()}]")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


LOSSES: dict[str, type[Loss]] = {
    "mse": MSE,
    "binary_cross_entropy": BinaryCrossEntropy,
    "cross_entropy": CrossEntropy,
}


def get_loss(name: str) -> Loss:
    """A loss by registry name (ValueError listing the valid names otherwise)."""
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None


def as_loss(loss: str | Loss) -> Loss:
    """``loss`` itself when it is a :class:`Loss`, else the loss of that registry name (a TypeError or
    ValueError that lists the names otherwise)."""
    if isinstance(loss, str):
        return get_loss(loss)
    if isinstance(loss, Loss):
        return loss
    raise TypeError(f"loss must be a name ({', '.join(LOSSES)}) or a core.losses.Loss, got {loss!r}")
