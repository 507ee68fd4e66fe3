"""The curvature measurement of a run: when, on what, and what one measurement records.

:class:`CurvatureMeter` decides the steps: by default a time budget (curvature at most ``budget`` of the
run's wall time, the first estimate at the first step; :class:`~gradmon.quantities.curvature_budget.TimeBudget`),
or a fixed cadence when ``every`` is given (it wins; 0 turns curvature off).  It linearises the loop's
objective once per estimate (``objective.linearize()``: one forward and backward pass, or one gradient
graph, for all the products; a plain ``hvp`` or central differences of ``grad`` with a checked step where
that is all the loop offers), runs :func:`~gradmon.quantities.curvature.estimate_curvature` warm-started from
the previous estimate's top eigenvector, and returns one entry per measurement: ``step``, ``lambda_max``,
``lambda_min``, ``trace``, ``trace_stderr``, ``trace_method``, ``hvps``, ``lanczos_hvps``, ``converged``,
``warm_start``, ``top_k``, ``seconds``, ``hvp`` (the method), ``rtol`` (the tolerance it was taken to),
``examples`` (how many examples the loss was of, when known), ``dtype`` (of the products), ``lr``, ``loss``
and, for optimizers with a 2/lr bound, ``threshold``.  The objective is the run's fixed probe set when the
loop offers one (``RunInfo.probe``), else the step's own batch (``StepState.objective``).

Under the budget the first estimate is a *quick* one, since nothing has paid for it yet and it is taken
whatever it costs: it is there to see λmax against ``2/lr`` at initialisation, so it is taken to a relative
tolerance of :data:`FIRST_RTOL` (Ritz values approach λmax from below: a value above the bound is above it),
on as many examples as a training batch (at least :data:`FIRST_EXAMPLES`; the first of the probe's examples,
or the step's batch), in the model's dtype (core's objective computes in float64 unless told), with the
trace only where it is exact.  It costs a few dozen training steps' worth of work whatever the probe's size,
and the budget expects the next estimate to cost it scaled to the whole probe, the tighter tolerance and a
stochastic trace (:meth:`CurvatureMeter._next_cost`).  A fixed cadence takes every estimate alike.

A measurement that fails is reported once (:attr:`CurvatureMeter.failed`) and turns curvature off: it is a
measurement, and must never be why training stops.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable

import numpy as np

from core.callbacks import Objective, RunInfo, StepState
from gradmon.quantities.curvature import (MIN_TRACE_SAMPLES, FlatOperator, estimate_curvature, fd_hvp,
                                          flat_hvp)
from gradmon.quantities.curvature_budget import TimeBudget
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.vocabulary import STABILITY_BOUND_OPTIMIZERS, stability_threshold

#: measurements kept in memory (halved, keeping every other one, when exceeded)
MAX_RECORDS = 512
#: the default share of wall time curvature may take
DEFAULT_BUDGET = 0.05
#: the relative tolerance (at least) of the first estimate of a budgeted run
FIRST_RTOL = 0.05
#: the fewest probe examples the first estimate of a budgeted run is taken on (else a training batch's worth)
FIRST_EXAMPLES = 128


class CurvatureMeter:
    """Curvature on a probe of ``samples`` training examples (or the step's batch), at most ``budget`` of the
    run's wall time, or every ``every`` steps when given (0: never; ``budget=0`` without ``every``: never).

    ``rtol`` and ``max_iter`` bound the Lanczos iteration; ``trace_samples`` is the number of stochastic
    samples of the deflated trace where no exact route applies (None: as many as λmax took; 0: no trace);
    ``seed`` draws the probe and the random start vectors; ``clock`` times the budget.
    """

    def __init__(self, every: int | None = None, samples: int = 1024, rtol: float = 1e-3, max_iter: int = 40,
                 trace_samples: int | None = None, seed: int = 0, budget: float = DEFAULT_BUDGET,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.every = None if every is None else int(every)
        self.budget_fraction = float(budget)
        self.samples = int(samples)
        self.rtol, self.max_iter = float(rtol), int(max_iter)
        self.trace_samples = None if trace_samples is None else int(trace_samples)
        self.seed = int(seed)
        self.clock = clock
        self.budget: TimeBudget | None = None
        self._schedule: Schedule = every_schedule(self.every or 0)
        self.entries: list[dict[str, Any]] = []
        self.failed: str | None = None
        self._run: RunInfo | None = None
        self._probe: Objective | None = None
        self._warm: Any = None

    @property
    def by_budget(self) -> bool:
        """Whether the steps follow the time budget (no fixed ``every``)."""
        return self.every is None and self.budget_fraction > 0

    def begin(self, run: RunInfo) -> None:
        """Start a run (measurements and the probe of an earlier run are dropped; a failure is forgiven)."""
        self._run, self._probe, self._warm = run, None, None
        self.entries = []
        self.failed = None
        self._schedule = every_schedule(self.every or 0)
        self.budget = TimeBudget(self.budget_fraction, self.clock) if self.by_budget else None

    @property
    def enabled(self) -> bool:
        return (self.by_budget or bool(self.every)) and self.failed is None

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        if self.budget is not None:
            return self.budget.due(step)
        return self._schedule(step)

    @property
    def quick(self) -> bool:
        """Whether the next estimate is the quick first one of a budgeted run (see the module's notes)."""
        return self.budget is not None and self.budget.measured == 0

    def measure(self, state: StepState) -> dict[str, Any] | None:
        """One estimate at ``state``'s parameters, appended to :attr:`entries` and returned; None when the
        loop has no objective to measure (or the measurement failed: see :attr:`failed`)."""
        run = self._run
        quick = self.quick
        rtol = max(self.rtol, FIRST_RTOL) if quick else self.rtol
        t0 = self.clock()
        try:
            objective, examples = self._objective(state, quick)
            if objective is None:
                return None
            op, method = operator(objective, state.params, run.dtype if quick and run is not None else None)
            est = estimate_curvature(op, step=state.step, rtol=rtol, max_iter=self.max_iter,
                                     trace_samples=self.trace_samples, seed=self.seed + state.step,
                                     warm_start=self._warm, stochastic_trace=not quick)
            self._warm = est.top_vector
            entry = est.to_dict()
            entry.update(seconds=self.clock() - t0, hvp=method, rtol=rtol, examples=examples,
                         dtype=str(getattr(op, "dtype", "float64")).replace("torch.", ""), lr=float(state.lr),
                         loss=float(state.loss) if state.loss_known else float("nan"))
            if run is not None and run.optimizer in STABILITY_BOUND_OPTIMIZERS and state.lr > 0:
                entry["threshold"] = stability_threshold(float(state.lr),
                                                         float(run.hyperparams.get("momentum", 0.0)),
                                                         bool(run.hyperparams.get("nesterov", False)))
            expected = self._next_cost(state, entry, examples) if quick else None
        except Exception as exc:  # a measurement must never be why training stops
            self.failed = (f"the curvature measurement failed and is off for the rest of the run: "
                           f"{type(exc).__name__}: {exc}")
            return None
        if self.budget is not None:
            self.budget.charge(entry["seconds"], expected)
        self.entries.append(entry)
        if len(self.entries) > MAX_RECORDS:
            self.entries = self.entries[::2]
        return entry

    def _objective(self, state: StepState, quick: bool = False) -> tuple[Objective | None, int | None]:
        """The objective of an estimate at ``state`` and its number of examples (None when unknown): the
        probe (its first examples for a quick estimate), else the step's batch."""
        run = self._run
        if run is None or run.probe is None:
            return state.objective, (int(state.batch_size) or None) if state.objective is not None else None
        if quick:
            n = min(self.samples, max(int(state.batch_size or 0), int(run.batch_size or 0), FIRST_EXAMPLES))
            if n < self.samples:
                first = run.probe(n, self.seed)
                return first, example_count(first)
        if self._probe is None:
            self._probe = run.probe(self.samples, self.seed)
        return self._probe, example_count(self._probe)

    def _next_cost(self, state: StepState, entry: dict[str, Any], done: int | None) -> float:
        """What the estimate after the quick one ``entry`` should cost: its seconds per product, times the
        products the next one should take (Lanczos' grow about as the logarithm of the tolerance, from the
        quick one's :data:`FIRST_RTOL` to ``rtol``; plus those of a stochastic trace where the quick one had
        no exact trace), scaled by the examples of the objective the next one is on over the ``done`` the
        quick one was on (a product's cost grows with them).  A warm start usually makes it cheaper."""
        _, coming = self._objective(state)
        scale = max(1.0, coming / done) if coming and done else 1.0
        taken = max(1, int(entry["hvps"]))
        products = taken * max(1.0, math.log(self.rtol) / math.log(entry["rtol"]))
        if entry["trace_method"] == "none" and self.trace_samples != 0:
            products += max(products, MIN_TRACE_SAMPLES) if self.trace_samples is None else max(2, self.trace_samples)
        return float(entry["seconds"]) * scale * products / taken

    def set_loss(self, step: int, value: float) -> None:
        """The loss of ``step``, for a measurement taken before the loop knew it."""
        last = self.entries[-1] if self.entries else None
        if last is not None and last["step"] == step and np.isnan(last["loss"]):
            last["loss"] = float(value)


def example_count(objective: Any) -> int | None:
    """How many examples an objective's loss is over (the length of its targets), None when unknown."""
    shape = getattr(getattr(objective, "y", None), "shape", None)
    return int(shape[0]) if shape else None


def float64_copy(x: Any) -> np.ndarray:
    """A float64 host copy of a parameter (numpy array or tensor): the Lanczos vectors live in host memory."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        return x.double().numpy()
    return np.array(x, dtype=np.float64)


def operator(objective: Any, params: Any, dtype: str | None = None) -> tuple[Any, str]:
    """The Hessian operator of one estimate, and how its products are made: ``objective.linearize()``
    (exact, built once; in ``dtype`` where the objective computes in float64 unless told, like core's: the
    model's dtype for a quick estimate), else the objective's ``hvp`` at a float64 copy of ``params`` (exact,
    rebuilt per product), else central differences of its ``grad`` with a checked step."""
    if hasattr(objective, "linearize"):
        if dtype is not None and "dtype" in inspect.signature(objective.linearize).parameters:
            return objective.linearize(dtype=dtype), "exact"
        return objective.linearize(), "exact"
    p = {k: float64_copy(v) for k, v in params.items()}
    dim = sum(v.size for v in p.values())
    if hasattr(objective, "hvp"):
        return FlatOperator(flat_hvp(lambda v: objective.hvp(v, p), p), dim), "exact"
    kinks = getattr(objective, "kinks", None)
    return FlatOperator(flat_hvp(lambda v: fd_hvp(objective.grad, p, v, kink_fn=kinks)[0], p), dim), \
        "finite differences"
