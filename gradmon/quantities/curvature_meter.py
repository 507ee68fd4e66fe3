"""The curvature measurement of a run: when, on what, and what one measurement records.

:class:`CurvatureMeter` decides the steps (a schedule), builds a Hessian-vector product for the loop's
objective (exact where the objective has ``hvp``; otherwise central differences of its ``grad`` with a
checked step), runs :func:`~gradmon.quantities.curvature.estimate_curvature` and returns one entry per
measurement: ``step``, ``lambda_max``, ``lambda_min``, ``trace``, ``trace_stderr``, ``hvps``, ``converged``,
``top_k``, ``seconds``, ``hvp`` (the method), ``lr``, ``loss`` and, for optimizers with a 2/lr bound,
``threshold``.  The objective is the run's fixed probe set when the loop offers one
(``RunInfo.probe``), else the step's own batch (``StepState.objective``).

A measurement that fails is reported once (:attr:`CurvatureMeter.failed`) and turns curvature off: it is a
measurement, and must never be why training stops.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from core.callbacks import Objective, RunInfo, StepState
from gradmon.quantities.curvature import estimate_curvature, fd_hvp, flat_hvp
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.vocabulary import STABILITY_BOUND_OPTIMIZERS, stability_threshold

#: measurements kept in memory (halved, keeping every other one, when exceeded)
MAX_RECORDS = 512


class CurvatureMeter:
    """Curvature every ``every`` steps (0: never) on a probe of ``samples`` training examples.

    ``rtol`` and ``max_iter`` bound the Lanczos iteration; ``trace_samples`` Hutchinson samples estimate the
    trace (0: no trace); ``seed`` draws the probe and the random start vectors.
    """

    def __init__(self, every: int = 50, samples: int = 1024, rtol: float = 1e-3, max_iter: int = 40,
                 trace_samples: int = 4, seed: int = 0) -> None:
        self.every = int(every)
        self.samples = int(samples)
        self.rtol, self.max_iter = float(rtol), int(max_iter)
        self.trace_samples, self.seed = int(trace_samples), int(seed)
        self._schedule: Schedule = every_schedule(self.every)
        self.entries: list[dict[str, Any]] = []
        self.failed: str | None = None
        self._run: RunInfo | None = None
        self._probe: Objective | None = None

    def begin(self, run: RunInfo) -> None:
        """Start a run (measurements and the probe of an earlier run are dropped; a failure is forgiven)."""
        self._run, self._probe = run, None
        self.entries = []
        self.failed = None
        self._schedule = every_schedule(self.every)

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.failed is None

    def due(self, step: int) -> bool:
        return self.enabled and self._schedule(step)

    def measure(self, state: StepState) -> dict[str, Any] | None:
        """One estimate at ``state``'s parameters, appended to :attr:`entries` and returned; None when the
        loop has no objective to measure (or the measurement failed: see :attr:`failed`)."""
        run = self._run
        try:
            objective = self._objective(state)
            if objective is None:
                return None
            params = {k: float64_copy(v) for k, v in state.params.items()}
            if hasattr(objective, "hvp"):
                hvp = flat_hvp(lambda v: objective.hvp(v, params), params)
                method = "exact"
            else:
                kinks = getattr(objective, "kinks", None)
                hvp = flat_hvp(lambda v: fd_hvp(objective.grad, params, v, kink_fn=kinks)[0], params)
                method = "finite differences"
            dim = sum(v.size for v in params.values())
            t0 = time.perf_counter()
            est = estimate_curvature(hvp, dim, step=state.step, rtol=self.rtol, max_iter=self.max_iter,
                                     trace_samples=self.trace_samples, seed=self.seed + state.step)
            entry = est.to_dict()
            entry.update(seconds=time.perf_counter() - t0, hvp=method, lr=float(state.lr),
                         loss=float(state.loss) if state.loss_known else float("nan"))
            if run is not None and run.optimizer in STABILITY_BOUND_OPTIMIZERS and state.lr > 0:
                entry["threshold"] = stability_threshold(float(state.lr),
                                                         float(run.hyperparams.get("momentum", 0.0)),
                                                         bool(run.hyperparams.get("nesterov", False)))
        except Exception as exc:  # a measurement must never be why training stops
            self.failed = (f"the curvature measurement failed and is off for the rest of the run: "
                           f"{type(exc).__name__}: {exc}")
            return None
        self.entries.append(entry)
        if len(self.entries) > MAX_RECORDS:
            self.entries = self.entries[::2]
        return entry

    def _objective(self, state: StepState) -> Objective | None:
        run = self._run
        if run is not None and run.probe is not None:
            if self._probe is None:
                self._probe = run.probe(self.samples, self.seed)
            return self._probe
        return state.objective

    def set_loss(self, step: int, value: float) -> None:
        """The loss of ``step``, for a measurement taken before the loop knew it."""
        last = self.entries[-1] if self.entries else None
        if last is not None and last["step"] == step and np.isnan(last["loss"]):
            last["loss"] = float(value)


def float64_copy(x: Any) -> np.ndarray:
    """A float64 host copy of a parameter (numpy array or tensor): the Lanczos vectors live in host memory."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        return x.double().numpy()
    return np.array(x, dtype=np.float64)
