"""How often the PyTorch watcher measures, so that measuring costs at most a fraction of the training time.

Measuring a step (the fused gradient norms, the activation reductions, the one transfer to the host, the
record) costs a fixed time, whatever the model: on a large model that is nothing, on a tiny MLP whose step
takes 2 ms it is several percent.  :class:`StatisticsBudget` watches, step by step, the wall time of the
training loop and the time spent inside the watcher, and after a warm-up in which every step is measured
(early training is where most pathologies appear) proposes measuring every ``k``-th step, the smallest
``k`` that keeps the watcher's share of the step time under the budget.  A model whose steps are long is
measured at every step.

The cost model: a measured step costs ``c_m`` (seconds), an unmeasured one ``c_u`` (the hooks alone), a bare
step ``b``; measuring every ``k``-th step costs ``(c_m + (k - 1) c_u) / k`` per step, which must stay under
``fraction * b`` (aiming at :data:`AIM` of it: some overhead, torch's own hook dispatch, is not timed).
Costs are averaged over whole periods, so a measured step's work that falls into its neighbours' intervals
(the norms at the end of the backward pass before it, its record when the loss comes after the step) is
counted right.
"""

from __future__ import annotations

import math

#: the share of the budget the cadence aims at (the rest covers the hooks' untimed dispatch)
AIM = 0.8


class StatisticsBudget:
    """Chooses the measuring cadence from timings.

    ``fraction``: the share of the training time measuring may cost (0.05: 5%); ``warmup``: steps measured
    at every step before the first decision; ``period``: steps between decisions; ``max_every``: the
    sparsest cadence (a record every ``max_every`` steps, whatever the cost).
    """

    def __init__(self, fraction: float = 0.05, *, warmup: int = 200, period: int = 100,
                 max_every: int = 16) -> None:
        if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ValueError(f"statistics_budget must be a fraction in (0, 1) such as 0.05, got {fraction!r}")
        self.fraction, self.warmup, self.period, self.max_every = float(fraction), warmup, period, max_every
        self.every = 1                        # the cadence in force
        self.steps = 0                        # step intervals seen
        self.measured_cost = math.nan         # c_m, seconds per measured step
        self.unmeasured_cost = math.nan       # c_u, seconds per unmeasured step
        self.bare = math.nan                  # b, seconds per step without the watcher
        self.thinned_at: int | None = None    # the first step measured less than every step
        self._wall = self._cost = 0.0         # sums over the current period
        self._count = 0

    def record(self, wall: float, cost: float) -> int | None:
        """One step interval: its wall time and the watcher's time in it (seconds).  Returns the new cadence
        when it changes (from the next step on), else None."""
        self.steps += 1
        if self.steps <= min(self.warmup, 20):  # the first steps hold one-off costs (the trace, allocations)
            return None
        self._wall += wall
        self._cost += cost
        self._count += 1
        if self.steps < self.warmup or self._count < self.period:
            return None
        cost_per_step, bare = self._cost / self._count, (self._wall - self._cost) / self._count
        self._wall = self._cost = 0.0
        self._count = 0
        return self._decide(cost_per_step, bare)

    def _decide(self, cost_per_step: float, bare: float) -> int | None:
        k = self.every
        self.bare = bare
        if k == 1:
            self.measured_cost = cost_per_step
        elif math.isfinite(self.measured_cost):  # mean = (c_m + (k - 1) c_u) / k: solve for c_u
            self.unmeasured_cost = max(0.0, (k * cost_per_step - self.measured_cost) / (k - 1))
        c_m = self.measured_cost
        c_u = self.unmeasured_cost if math.isfinite(self.unmeasured_cost) else 0.1 * c_m
        room = AIM * self.fraction * bare
        if not (math.isfinite(c_m) and bare > 0):
            return None
        if c_m <= room:
            new = 1
        elif room <= c_u:
            new = self.max_every
        else:
            new = min(self.max_every, max(1, math.ceil((c_m - c_u) / (room - c_u))))
        if new == k:
            return None
        self.every = new
        if new > 1 and self.thinned_at is None:
            self.thinned_at = self.steps
        return new

    def describe(self) -> str | None:
        """A sentence for the report when measuring was thinned out (None when every step was measured)."""
        if self.thinned_at is None:
            return None
        share = self.measured_cost / self.bare if self.bare > 0 else math.nan
        return (f"statistics were measured at every step until step {self.thinned_at}, then less often (every "
                f"{self.every} steps at the end): measuring every step would cost {share:.0%} of this model's "
                f"step time, above the budget of {self.fraction:.0%}; watch(..., every=1) measures every step")
