"""Top eigenvalues of a symmetric operator from its products: Lanczos with full reorthogonalisation, and
power iteration (the baseline of PyHessian and Cockpit).

Vectors are arrays of length ``D`` of one kind: float64 numpy arrays (float32 where the start vector is: an
operator computing in float32 halves the basis' memory traffic), or torch tensors of the parameters'
dtype on the model's device (then the basis lives there too and nothing crosses to the host but scalars).  Only the small
tridiagonal matrix ``T`` (at most ``max_iter`` square) is decomposed on the host.

Lanczos builds an orthonormal Krylov basis ``Q`` (``(max_iter + 1) × D``: float64 for core, the workspace
the size check counts) and ``T = Qᵀ H Q``; the extreme eigenvalues of ``T`` (Ritz values) converge to those of ``H``
in far fewer products than power iteration.  Started from a previous estimate's top eigenvector (a *warm
start*), it converges in a few products when the operator moved little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Vector = Any  # numpy.ndarray (float64, or float32) or torch.Tensor (the parameters' dtype), shape (D,)
FlatHVP = Callable[[Vector], Vector]


def rademacher(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A vector of ``dim`` independent ±1 (float64)."""
    return rng.integers(0, 2, size=dim).astype(np.float64) * 2.0 - 1.0


def like(ref: Vector, values: np.ndarray) -> Vector:
    """``values`` (a host array) as an array of ``ref``'s kind and dtype (on its device, for torch)."""
    if isinstance(ref, np.ndarray):
        return values.astype(ref.dtype, copy=False)
    import torch

    return torch.as_tensor(np.ascontiguousarray(values), dtype=ref.dtype, device=ref.device)


def empty_rows(ref: Vector, rows: int, dim: int) -> Vector:
    """An uninitialised ``(rows, dim)`` array of ``ref``'s kind and dtype (and device, for torch): the basis'
    rows are written before they are read, and zeroing 40 rows of a large model costs more than several
    products."""
    if isinstance(ref, np.ndarray):
        return np.empty((rows, dim), dtype=ref.dtype)
    return ref.new_empty((rows, dim))


#: a second Gram-Schmidt pass when the first left less than this share of the vector's norm (1/√2)
REORTHOGONALISE_AGAIN = 0.7071


def _norm(w: Vector) -> float:
    return float(w @ w) ** 0.5


@dataclass
class LanczosResult:
    """Top-``k`` Ritz values (descending), the most negative one, and the HVPs spent.

    ``basis`` (``(m, D)``, orthonormal rows) and ``ritz_trace`` (``tr(QᵀHQ) = Σ αᵢ``, the trace of ``H`` on
    the Krylov space) are kept for a deflated trace estimate when asked (``keep_basis``).
    """

    eigenvalues: np.ndarray
    eigenvectors: Vector | None
    lambda_min: float
    hvps: int
    converged: bool
    residuals: np.ndarray
    basis: Vector | None = None
    ritz_trace: float = float("nan")

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])


def lanczos(hvp: FlatHVP, dim: int, k: int = 1, rtol: float = 1e-3, max_iter: int = 40,
            rng: np.random.Generator | None = None, v0: Vector | None = None, want_vectors: bool = False,
            keep_basis: bool = False) -> LanczosResult:
    """Largest-algebraic eigenvalues of the symmetric operator ``hvp`` by Lanczos with full
    reorthogonalisation (a second Gram-Schmidt pass where the first cancelled much of the vector).

    ``v0``: the start vector (numpy or torch; the basis is of its kind); a Rademacher vector from ``rng``
    when None.  Stops when, for each of the top ``k`` Ritz values θ, the change since the previous
    iteration is below ``rtol·|θ|`` and the residual bound ``|β_m s_m|`` (last component of its Ritz vector
    times the next β) is below ``rtol·|θ|``; or on breakdown (an invariant subspace: exact), or after
    ``max_iter`` HVPs.
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    rng = rng if rng is not None else np.random.default_rng(0)
    m_max = int(min(max_iter, dim))
    if v0 is None:
        v0 = rademacher(dim, rng)
    if isinstance(v0, np.ndarray):
        q = np.array(v0, dtype=np.float32 if v0.dtype == np.float32 else np.float64)
    else:
        q = v0.clone()
    norm = _norm(q)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the Lanczos start vector must be finite and non-zero")
    Q = empty_rows(q, m_max + 1, dim)
    Q[0] = q / norm
    alphas: list[float] = []
    betas: list[float] = []
    prev: np.ndarray | None = None
    converged = False
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    beta = 0.0
    for j in range(m_max):
        w = hvp(Q[j])
        if isinstance(w, np.ndarray) or not hasattr(w, "device"):
            w = np.asarray(w, dtype=Q.dtype)
        alpha = float(w @ Q[j])
        alphas.append(alpha)
        # full reorthogonalisation against the whole basis (classical Gram-Schmidt), repeated only when the
        # first pass cancelled most of w ("twice is enough", Kahan-Parlett): each pass reads the basis twice
        before = _norm(w)
        w = w - (Q[: j + 1] @ w) @ Q[: j + 1]  # (a new array: the product may alias the basis)
        beta = _norm(w)
        if beta < REORTHOGONALISE_AGAIN * before:
            w = w - (Q[: j + 1] @ w) @ Q[: j + 1]
            beta = _norm(w)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(T)
        if not np.all(np.isfinite(theta)):
            break  # a non-finite product: report what there is, not converged
        top = theta[::-1][:k]
        scale = np.maximum(np.abs(top), 1e-30)
        resid = np.abs(beta * s[-1, ::-1][:k])
        if beta <= 1e-12 * max(1.0, float(np.max(np.abs(theta)))):
            converged = True  # invariant subspace: the Ritz values are exact
            break
        if prev is not None and len(prev) == len(top) and len(top) == k:
            if np.all(np.abs(top - prev) <= rtol * scale) and np.all(resid <= rtol * scale):
                converged = True
                break
        prev = top
        betas.append(beta)
        Q[j + 1] = w / beta
    m = len(alphas)
    order = np.argsort(theta)[::-1][:k]
    vectors = None
    if want_vectors and m:
        vectors = Q[:m].T @ like(Q, np.ascontiguousarray(s[:, order]))
    return LanczosResult(eigenvalues=theta[order], eigenvectors=vectors,
                         lambda_min=float(theta.min()) if theta.size else float("nan"), hvps=m,
                         converged=converged, residuals=np.abs(beta * s[-1, order]) if m else np.zeros(0),
                         basis=Q[:m] if keep_basis else None, ritz_trace=float(sum(alphas)))


def power_iteration(hvp: FlatHVP, dim: int, iters: int = 100, tol: float | None = None,
                    rng: np.random.Generator | None = None) -> tuple[float, int]:
    """The baseline of PyHessian and Cockpit: the Rayleigh quotient of repeated products (largest
    magnitude eigenvalue); stops early when ``tol`` is given and the estimate moves less than that."""
    rng = rng if rng is not None else np.random.default_rng(0)
    v = rademacher(dim, rng)
    v /= np.linalg.norm(v)
    estimate = 0.0
    for i in range(1, iters + 1):
        w = np.asarray(hvp(v), dtype=np.float64)
        new = float(np.dot(v, w))
        norm = float(np.linalg.norm(w))
        if norm == 0:
            return 0.0, i
        v = w / norm
        if tol is not None and i > 1 and abs(new - estimate) <= tol * max(abs(new), 1e-30):
            return new, i
        estimate = new
    return estimate, iters
