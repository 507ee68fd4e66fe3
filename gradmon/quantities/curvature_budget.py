"""When curvature is measured: a share of the run's wall time (a budget), or a fixed cadence.

:class:`TimeBudget` keeps curvature at most ``fraction`` of the wall time since the run began (measurements
included): a step is due when ``(spent + expected) ≤ fraction · (elapsed + expected)``, where ``expected``
is what the next measurement should cost (by default the cost of the last one; after its quick first one the
meter scales it to the next one's examples, tolerance and trace).  The first measurement is taken at the first step, whatever it costs (so a
λmax far above ``2/lr`` at initialisation is seen: the meter makes it a quick one), and it is charged like any
other: the budget pays it back before the next one.  So the share of a run is at most the larger of
``fraction`` and the first measurement's cost over the run's time (on a run much longer than one measurement
it tends to ``fraction``); a later measurement that costs more than expected overshoots once, and the next
waits for it.

The decision of a step is made the first time it is asked and kept, so that every part of a loop that asks
(``requests`` before the step, ``on_after_backward`` in it) hears the same answer.  The clock is injected
(``time.perf_counter`` by default), so the scheduling is tested deterministically.  Because it follows wall
time, *when* measurements happen depends on the machine: pin ``curvature_every`` for runs that must be
reproducible step for step (tests, comparisons of reports).
"""

from __future__ import annotations

import time
from typing import Callable


class TimeBudget:
    """Due steps from wall time: curvature at most ``fraction`` of the run (``0 < fraction < 1``)."""

    def __init__(self, fraction: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ValueError(f"a curvature budget must be a fraction of wall time in (0, 1), got {fraction!r}")
        self.fraction = float(fraction)
        self.clock = clock
        self.start()

    def start(self) -> None:
        """A new run: the clock starts now; nothing is spent."""
        self.t0 = self.clock()
        self.spent = 0.0
        self.expected = 0.0
        self.measured = 0
        self._decided: tuple[int, bool] | None = None

    def due(self, step: int) -> bool:
        """Whether ``step`` is measured (the first call for a step decides; later calls repeat it)."""
        if self._decided is not None and self._decided[0] == step:
            return self._decided[1]
        if self.measured == 0:
            answer = True
        else:
            elapsed = self.clock() - self.t0
            answer = self.spent + self.expected <= self.fraction * (elapsed + self.expected)
        self._decided = (step, answer)
        return answer

    def charge(self, seconds: float, expected: float | None = None) -> None:
        """A measurement took ``seconds`` of wall time; the next one should cost ``expected`` seconds (None:
        as much as this one)."""
        self.spent += float(seconds)
        self.expected = float(seconds if expected is None else expected)
        self.measured += 1

    @property
    def share(self) -> float:
        """Curvature's share of the wall time so far (0 before the first measurement)."""
        elapsed = self.clock() - self.t0
        return self.spent / elapsed if elapsed > 0 else 0.0
