"""Loss curvature from Hessian-vector products: the top eigenvalue (Lanczos), the trace with its standard
error, and the stability threshold of gradient descent; one estimate is :func:`estimate_curvature`.

An estimate works on a :class:`HessianOperator`: the Hessian of one fixed objective at fixed parameters, as
a function of flat vectors of length ``D`` (float64 numpy arrays, or torch tensors of the parameters' dtype on
the model's device).
An objective *linearised* once per estimate (``objective.linearize()``: core's forward and backward pass,
torch's gradient graph) serves every product of that estimate.  :func:`flat_hvp` and :class:`FlatOperator`
wrap a plain dict-keyed or flat HVP (finite differences for loops that have only gradients).

- λmax: :func:`~gradmon.quantities.lanczos.lanczos` with full reorthogonalisation, from a Rademacher start
  or warm-started from the previous estimate's top eigenvector.
- trace: exact when the operator offers a cheap exact route (``exact_trace()``: core's Gauss-Newton trace
  of piecewise-linear networks), else :func:`~gradmon.quantities.trace.deflated_trace` on the Lanczos basis
  (Hutch++-style: the top of the spectrum exactly, the rest by Hutchinson on projected vectors), with as many
  products as the λmax estimate took (at least :data:`MIN_TRACE_SAMPLES`), so a cold estimate costs at most
  twice the products of λmax alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from gradmon.quantities.lanczos import (FlatHVP, LanczosResult, Vector, lanczos,  # noqa: F401
                                        power_iteration, rademacher)
from gradmon.quantities.trace import TraceResult, deflated_trace, hutchinson_trace  # noqa: F401
from gradmon.vocabulary import stability_formula, stability_threshold  # noqa: F401  (the bound, re-exported)


class HessianOperator(Protocol):
    """The Hessian of a fixed objective at fixed parameters (``D`` of them), built once per estimate.

    ``hvp(v)`` maps a vector of length ``D`` to ``H v`` (same kind: float64 numpy — float32 for an operator
    computing in float32 —, or a tensor of the operator's dtype on its device); ``vector(values)`` turns a
    host float64 array into that kind.  Optional:
    ``exact_trace() -> float | None`` (None where no exact route applies) and ``trace_method`` naming it.
    """

    dim: int

    def hvp(self, v: Vector) -> Vector: ...

    def vector(self, values: np.ndarray) -> Vector: ...


class FlatOperator:
    """A :class:`HessianOperator` over numpy vectors from a flat HVP function (matrices in tests, finite
    differences)."""

    def __init__(self, hvp: FlatHVP, dim: int) -> None:
        self._hvp, self.dim = hvp, int(dim)

    def hvp(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(self._hvp(v), dtype=np.float64)

    def vector(self, values: np.ndarray) -> np.ndarray:
        return values


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
    """One curvature measurement; ``hvps`` counts every Hessian-vector product spent on it (``lanczos_hvps`` for
    λmax, the rest for the trace).  ``trace_stderr`` is one standard error (0 for an exact trace; NaN without
    a trace).  ``top_vector`` (not serialised) is the top Ritz vector, the warm start of the next estimate."""

    step: int
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    hvps: int
    converged: bool
    top_k: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lanczos_hvps: int = 0
    trace_method: str = "none"
    warm_start: bool = False
    top_vector: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"step": int(self.step), "lambda_max": float(self.lambda_max), "lambda_min": float(self.lambda_min),
                "trace": float(self.trace), "trace_stderr": float(self.trace_stderr), "hvps": int(self.hvps),
                "lanczos_hvps": int(self.lanczos_hvps), "trace_method": self.trace_method,
                "converged": bool(self.converged), "warm_start": bool(self.warm_start),
                "top_k": [float(x) for x in self.top_k], "seconds": float(self.seconds)}


#: stochastic trace samples at least (by default as many as λmax took: a warm start that converged in three
#: products would otherwise leave the trace three samples)
MIN_TRACE_SAMPLES = 8
#: weight of the random part of a warm start vector (the previous top eigenvector plus this much of a random
#: unit vector: enough to find an eigenvalue that overtook the previous top one, too little to slow convergence)
WARM_START_MIX = 0.05


def estimate_curvature(hvp: FlatHVP | HessianOperator, dim: int | None = None, *, step: int = 0,
                       rtol: float = 1e-3, max_iter: int = 40, trace_samples: int | None = None, k: int = 1,
                       seed: int = 0, warm_start: Vector | None = None, trace: bool = True,
                       stochastic_trace: bool = True) -> CurvatureEstimate:
    """λmax (and the top ``k``) by Lanczos, and the trace with its standard error.

    ``hvp``: a :class:`HessianOperator`, or a flat numpy HVP function with its ``dim``.  ``warm_start``: the
    previous estimate's ``top_vector`` (same ``D``), else a Rademacher start from ``seed``.  The trace: exact
    when the operator's ``exact_trace()`` gives it; otherwise deflated by the Lanczos basis with
    ``trace_samples`` remainder samples (None: as many as λmax took, at least :data:`MIN_TRACE_SAMPLES`; 0: no
    trace).  ``trace=False`` skips the trace; ``stochastic_trace=False`` keeps only an exact one (no product
    is spent on the trace: NaN where the operator has no exact route).
    """
    t0 = time.perf_counter()
    op: Any = hvp if hasattr(hvp, "vector") and hasattr(hvp, "hvp") else FlatOperator(hvp, int(dim or 0))
    dim = int(op.dim)
    rng = np.random.default_rng(seed)
    start = rademacher(dim, rng)
    v0 = op.vector(start)
    warm = warm_start is not None and int(warm_start.shape[0]) == dim and bool(float(warm_start @ warm_start) > 0)
    if warm:
        v0 = warm_start / float(warm_start @ warm_start) ** 0.5 + (WARM_START_MIX / math.sqrt(dim)) * v0
    want_trace = trace and trace_samples != 0
    exact = op.exact_trace() if want_trace and hasattr(op, "exact_trace") else None
    stochastic = want_trace and exact is None and stochastic_trace
    result = lanczos(op.hvp, dim, k=k, rtol=rtol, max_iter=max_iter, rng=rng, v0=v0, want_vectors=True,
                     keep_basis=stochastic)
    value = stderr = float("nan")
    method, hvps = "none", result.hvps
    if exact is not None:
        value, stderr, method = float(exact), 0.0, getattr(op, "trace_method", "exact")
    elif stochastic:
        samples = max(result.hvps, MIN_TRACE_SAMPLES) if trace_samples is None else max(2, int(trace_samples))
        tr = deflated_trace(op.hvp, result.basis, result.ritz_trace, samples, rng=rng)
        value, stderr, method, hvps = tr.trace, tr.stderr, tr.method, hvps + tr.hvps
    top = result.eigenvectors[:, 0] if result.eigenvectors is not None else None
    return CurvatureEstimate(step=step, lambda_max=result.lambda_max, lambda_min=result.lambda_min, trace=value,
                             trace_stderr=stderr, hvps=hvps, converged=result.converged,
                             top_k=[float(x) for x in result.eigenvalues], seconds=time.perf_counter() - t0,
                             lanczos_hvps=result.hvps, trace_method=method, warm_start=warm, top_vector=top)


# -- one call ---------------------------------------------------------------------------------------------------------
@dataclass
class CurvatureResult:
    """What a one-call measurement returns (:func:`gradmon.curvature`, :func:`gradmon.torch.curvature`).

    ``lambda_max``: the top Hessian eigenvalue (loss units per squared parameter unit); ``trace`` ±
    ``trace_stderr`` (one standard error; 0 when exact, NaN without a trace); ``hvps``: Hessian-vector
    products spent; ``seconds``: wall time of the whole call (the linearisation included); ``converged``:
    whether Lanczos met ``tol``.  Also ``lambda_min`` (the most negative Ritz value seen), ``trace_method``
    and, for the exact route, ``layer_traces`` (the trace of each layer's diagonal block)."""

    lambda_max: float
    trace: float
    trace_stderr: float
    hvps: int
    seconds: float
    converged: bool
    lambda_min: float = float("nan")
    lanczos_hvps: int = 0
    trace_method: str = "none"
    layer_traces: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"lambda_max": self.lambda_max, "trace": self.trace, "trace_stderr": self.trace_stderr,
                "hvps": self.hvps, "seconds": self.seconds, "converged": self.converged,
                "lambda_min": self.lambda_min, "lanczos_hvps": self.lanczos_hvps, "trace_method": self.trace_method,
                "layer_traces": dict(self.layer_traces) if self.layer_traces is not None else None}


def measure(build: Callable[[], Any], *, tol: float = 1e-3, trace: bool = True, max_iter: int = 100,
            seed: int = 0) -> CurvatureResult:
    """One cold estimate on the operator ``build()`` returns (timed with it): the body of the one-call APIs."""
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be a relative tolerance in (0, 1) such as 1e-3, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 2:
        raise ValueError(f"max_iter must be an integer >= 2, got {max_iter!r}")
    t0 = time.perf_counter()
    op = build()
    est = estimate_curvature(op, rtol=float(tol), max_iter=max_iter, seed=seed, trace=bool(trace))
    layers = op.layer_traces() if trace and est.trace_method.startswith("exact") and hasattr(op, "layer_traces") \
        else None
    return CurvatureResult(lambda_max=est.lambda_max, trace=est.trace, trace_stderr=est.trace_stderr, hvps=est.hvps,
                           seconds=time.perf_counter() - t0, converged=est.converged, lambda_min=est.lambda_min,
                           lanczos_hvps=est.lanczos_hvps, trace_method=est.trace_method, layer_traces=layers)
