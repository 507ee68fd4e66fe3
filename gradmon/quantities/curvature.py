"""Loss curvature from Hessian-vector products: top eigenvalues (Lanczos), trace (Hutchinson), and the
stability threshold of gradient descent.

Everything works on an ``hvp`` callable over flat float64 vectors of dimension ``D``; :func:`flat_hvp`
wraps a dict-keyed HVP (``core.BatchObjective.hvp``, the PyTorch adapter's double backward).  The Lanczos
loop is plain numpy (no scipy iterating over numpy work, so the two OpenBLAS copies never compete).

Lanczos with full reorthogonalisation builds an orthonormal Krylov basis ``Q`` and the tridiagonal
``T = Qᵀ H Q``; the extreme eigenvalues of ``T`` (Ritz values) converge to those of ``H`` in far fewer
products than power iteration, typically 15–25 HVPs for a relative tolerance of 1e-3 where power
iteration is given 100 (PyHessian's and Cockpit's default budget).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from gradmon.vocabulary import stability_formula, stability_threshold  # noqa: F401  (the bound, re-exported)

FlatHVP = Callable[[np.ndarray], np.ndarray]


# -- vectors <-> dicts ---------------------------------------------------------------------------------------
def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """One float64 vector of all arrays, in key order."""
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()])


def unflatten(vec: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split ``vec`` into float64 arrays shaped and keyed like ``like``."""
    total = sum(int(np.prod(np.shape(a))) for a in like.values())
    if vec.size != total:
        raise ValueError(f"vector of length {vec.size} does not match parameters of total size {total}")
    out, offset = {}, 0
    for key, a in like.items():
        n = int(np.prod(np.shape(a)))
        out[key] = vec[offset:offset + n].reshape(np.shape(a))
        offset += n
    return out


def flat_hvp(hvp: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
             like: Mapping[str, np.ndarray]) -> FlatHVP:
    """A flat-vector HVP from a dict-keyed one."""
    return lambda v: flatten(hvp(unflatten(v, like)))


# -- Lanczos ---------------------------------------------------------------------------------------------------
@dataclass
class LanczosResult:
    """Top-``k`` Ritz values (descending), the most negative one, and the HVPs spent."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    lambda_min: float
    hvps: int
    converged: bool
    residuals: np.ndarray

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])


def rademacher(dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=dim).astype(np.float64) * 2.0 - 1.0


def lanczos(hvp: FlatHVP, dim: int, k: int = 1, rtol: float = 1e-3, max_iter: int = 40,
            rng: np.random.Generator | None = None, v0: np.ndarray | None = None,
            want_vectors: bool = False) -> LanczosResult:
    """Largest-algebraic eigenvalues of the symmetric operator ``hvp`` by Lanczos with full
    reorthogonalisation (two Gram-Schmidt passes per step).

    Stops when, for each of the top ``k`` Ritz values θ, the change since the previous iteration is below
    ``rtol·|θ|`` and the residual bound ``|β_m s_m|`` (last component of its Ritz vector times the next
    β) is below ``rtol·|θ|``; or on breakdown (an invariant subspace: exact), or after ``max_iter`` HVPs.
    """
    if dim < 1:
        raise ValueError("dim must be >= 1")
    rng = rng if rng is not None else np.random.default_rng(0)
    m_max = int(min(max_iter, dim))
    q = rademacher(dim, rng) if v0 is None else np.asarray(v0, dtype=np.float64).copy()
    q /= np.linalg.norm(q)
    Q = np.zeros((m_max + 1, dim))
    Q[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    prev: np.ndarray | None = None
    converged = False
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    beta = 0.0
    for j in range(m_max):
        w = np.asarray(hvp(Q[j]), dtype=np.float64)
        alpha = float(np.dot(w, Q[j]))
        alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation against the whole basis
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta = float(np.linalg.norm(w))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(T)
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
    if want_vectors:
        vectors = Q[:m].T @ s[:, order]
    return LanczosResult(eigenvalues=theta[order], eigenvectors=vectors, lambda_min=float(theta.min()),
                         hvps=m, converged=converged, residuals=np.abs(beta * s[-1, order]))


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


# -- trace ---------------------------------------------------------------------------------------------------
@dataclass
class TraceResult:
    trace: float
    stderr: float
    hvps: int


def hutchinson_trace(hvp: FlatHVP, dim: int, samples: int = 10, rng: np.random.Generator | None = None,
                     extra: list[float] | None = None) -> TraceResult:
    """``tr(H) ≈ mean(zᵀHz)`` over Rademacher vectors ``z`` (unbiased); ``extra`` adds samples already
    paid for (Lanczos' first step gives one)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    values = list(extra or [])
    for _ in range(samples):
        z = rademacher(dim, rng)
        values.append(float(np.dot(z, hvp(z))))
    if not values:
        return TraceResult(float("nan"), float("nan"), 0)
    arr = np.array(values)
    stderr = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
    return TraceResult(float(arr.mean()), stderr, samples)


# -- finite differences, for loops without exact HVPs ---------------------------------------------------------
def fd_hvp(grad_fn: Callable[[dict[str, np.ndarray]], tuple[float, Mapping[str, np.ndarray]]],
           params: Mapping[str, np.ndarray], vec: Mapping[str, np.ndarray], eps: float | None = None,
           kink_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
           max_shrink: int = 12) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Central difference ``(∇L(θ+εv) - ∇L(θ-εv)) / 2ε`` in float64, with a *checked* step.

    Why checked: in a ReLU network the gradient is only piecewise smooth.  If any unit's pre-activation
    changes sign between θ-εv and θ+εv, the difference picks up a jump of order one in the gradient,
    divided by 2ε — an error that grows as ε shrinks towards the kink and easily makes the estimated top
    eigenvalue wrong by orders of magnitude on a trained net, where many units sit near zero.

    With ``kink_fn(params) -> bool array`` (the sign pattern of the rectifier pre-activations, e.g.
    ``core.BatchObjective.kinks``) ε is divided by 4 until the pattern is the same at θ-εv, θ and θ+εv.
    Without it, the results at ε and ε/2 must agree to 1e-3 (else ε shrinks).  The default step is
    ``1e-3 · (1 + ||θ||) / ||v||``.  ``info`` reports the step used, the shrinks, the gradient evaluations
    and ``kinks_crossed`` (units still crossing when the shrinks ran out).
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    v = {k: np.asarray(vec[k], dtype=np.float64) for k in p}
    vnorm = math.sqrt(sum(float(np.sum(x * x)) for x in v.values()))
    if vnorm == 0:
        return {k: np.zeros_like(x) for k, x in v.items()}, {"eps": 0.0, "shrinks": 0, "grad_evals": 0,
                                                             "kinks_crossed": 0}
    pnorm = math.sqrt(sum(float(np.sum(x * x)) for x in p.values()))
    step = eps if eps is not None else 1e-3 * (1.0 + pnorm) / vnorm
    evals = 0

    def diff(e: float) -> dict[str, np.ndarray]:
        nonlocal evals
        plus = {k: p[k] + e * v[k] for k in p}
        minus = {k: p[k] - e * v[k] for k in p}
        gp, gm = grad_fn(plus)[1], grad_fn(minus)[1]
        evals += 2
        return {k: (np.asarray(gp[k], dtype=np.float64) - np.asarray(gm[k], dtype=np.float64)) / (2 * e) for k in p}

    shrinks, crossed = 0, 0
    if kink_fn is not None:
        base = kink_fn(p)
        for shrinks in range(max_shrink + 1):
            plus = kink_fn({k: p[k] + step * v[k] for k in p})
            minus = kink_fn({k: p[k] - step * v[k] for k in p})
            crossed = int(np.count_nonzero(plus != base) + np.count_nonzero(minus != base))
            if crossed == 0 or shrinks == max_shrink:
                break
            step /= 4.0
        result = diff(step)
    else:
        result = diff(step)
        for shrinks in range(1, max_shrink + 1):
            half = diff(step / 2)
            num = math.sqrt(sum(float(np.sum((half[k] - result[k]) ** 2)) for k in p))
            den = math.sqrt(sum(float(np.sum(half[k] ** 2)) for k in p)) or 1.0
            step /= 2
            result = half
            if num / den < 1e-3:
                break
    return result, {"eps": step, "shrinks": shrinks, "grad_evals": evals, "kinks_crossed": crossed}


# -- one estimate -------------------------------------------------------------------------------------------------
@dataclass
class CurvatureEstimate:
    """One curvature measurement; ``hvps`` counts every Hessian-vector product spent on it."""

    step: int
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    hvps: int
    converged: bool
    top_k: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"step": int(self.step), "lambda_max": float(self.lambda_max), "lambda_min": float(self.lambda_min),
                "trace": float(self.trace), "trace_stderr": float(self.trace_stderr), "hvps": int(self.hvps),
                "converged": bool(self.converged), "top_k": [float(x) for x in self.top_k],
                "seconds": float(self.seconds)}


def estimate_curvature(hvp: FlatHVP, dim: int, *, step: int = 0, rtol: float = 1e-3, max_iter: int = 40,
                       trace_samples: int = 0, k: int = 1, seed: int = 0) -> CurvatureEstimate:
    """λmax (and the top ``k``) by Lanczos from a Rademacher start, and the trace by Hutchinson.

    The Lanczos start vector ``z/√D`` gives ``D·α₁ = zᵀHz``, one Hutchinson sample for free; the trace
    uses it plus ``trace_samples`` more (NaN when ``trace_samples`` is 0)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    z = rademacher(dim, rng)
    first: list[float] = []

    def recording(v: np.ndarray) -> np.ndarray:
        out = hvp(v)
        if not first:
            first.append(float(np.dot(v, out)) * dim)  # v = z/√D, so D·vᵀHv = zᵀHz
        return out

    result = lanczos(recording, dim, k=k, rtol=rtol, max_iter=max_iter, rng=rng, v0=z)
    trace = stderr = float("nan")
    hvps = result.hvps
    if trace_samples > 0:
        tr = hutchinson_trace(hvp, dim, samples=trace_samples, rng=rng, extra=first)
        trace, stderr, hvps = tr.trace, tr.stderr, hvps + tr.hvps
    return CurvatureEstimate(step=step, lambda_max=result.lambda_max, lambda_min=result.lambda_min, trace=trace,
                             trace_stderr=stderr, hvps=hvps, converged=result.converged,
                             top_k=[float(x) for x in result.eigenvalues], seconds=time.perf_counter() - t0)
