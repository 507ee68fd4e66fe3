"""The trace of a symmetric operator from its products, with an honest standard error.

- :func:`hutchinson_trace`: ``tr(H) ≈ mean(zᵀHz)`` over Rademacher vectors ``z`` (unbiased; its variance is
  ``2(‖H‖²_F − Σ Hᵢᵢ²)`` per sample, large when a few eigenvalues dominate, as they do in a network's Hessian).
- :func:`deflated_trace` (Hutch++-style, Meyer, Musco, Musco & Woodruff 2021): the top of the spectrum is
  taken exactly from an orthonormal basis ``Q`` that spans it (the Lanczos basis of the λmax estimate, paid
  for already), ``tr(H) = tr(QᵀHQ) + tr(PHP)`` with ``P = I − QQᵀ``, and only the remainder ``tr(PHP)`` is
  estimated by Hutchinson on projected vectors ``Pz``.  Its variance is ``2‖PHP‖²_F`` per sample at most:
  the outliers that make plain Hutchinson noisy are gone.

``stderr`` is the sample standard deviation over ``√samples`` (NaN with one sample, 0 when exact).  Vectors
are numpy arrays or torch tensors, like the basis (see :mod:`gradmon.quantities.lanczos`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gradmon.quantities.lanczos import FlatHVP, Vector, like, rademacher


@dataclass
class TraceResult:
    """``trace`` ± ``stderr`` (one standard error), from ``hvps`` products, by ``method``."""

    trace: float
    stderr: float
    hvps: int
    method: str = "hutchinson"


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    stderr = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
    return float(arr.mean()), stderr


def hutchinson_trace(hvp: FlatHVP, dim: int, samples: int = 10, rng: np.random.Generator | None = None,
                     extra: list[float] | None = None) -> TraceResult:
    """``tr(H) ≈ mean(zᵀHz)`` over Rademacher vectors ``z`` (unbiased); ``extra`` adds samples already
    paid for."""
    rng = rng if rng is not None else np.random.default_rng(0)
    values = list(extra or [])
    for _ in range(samples):
        z = rademacher(dim, rng)
        values.append(float(np.dot(z, np.asarray(hvp(z), dtype=np.float64))))
    mean, stderr = _mean_and_stderr(values)
    return TraceResult(mean, stderr, samples)


def deflated_trace(hvp: FlatHVP, basis: Vector, ritz_trace: float, samples: int,
                   rng: np.random.Generator | None = None) -> TraceResult:
    """``tr(H) = tr(QᵀHQ) + tr(PHP)``: ``ritz_trace`` is ``tr(QᵀHQ)`` for the orthonormal rows of ``basis``
    (``(m, D)``; Lanczos gives it as the sum of its α), the remainder is Hutchinson's estimate over
    ``samples`` projected Rademacher vectors (at least 2, for an error bar).

    When the basis spans the whole space the trace is exact (no product is spent, ``stderr`` 0).
    """
    m, dim = int(basis.shape[0]), int(basis.shape[1])
    if m >= dim:
        return TraceResult(float(ritz_trace), 0.0, 0, "deflated")
    rng = rng if rng is not None else np.random.default_rng(0)
    samples = max(2, int(samples))
    values = []
    for _ in range(samples):
        z = like(basis, rademacher(dim, rng))
        if m:
            for _ in range(2):  # twice: the projection must leave nothing of the deflated space
                z = z - (basis @ z) @ basis
        values.append(float(z @ hvp(z)))
    mean, stderr = _mean_and_stderr(values)
    return TraceResult(float(ritz_trace) + mean, stderr, samples, "deflated")
