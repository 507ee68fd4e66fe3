"""The sink protocol: where a monitor's measurements and findings are presented while a run goes on.

A sink receives finished data only (records, computed histograms, curvature entries, findings, the final
report): it never measures or judges.  Every method is a no-op in :class:`Sink`, so a sink overrides the
events it presents.  A sink that fails sets :attr:`Sink.failed` (or raises); the monitor then reports it once
and drops it for the rest of the run: a sink never stops training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from core.callbacks import RunInfo
from gradmon.findings import Finding, HealthReport
from gradmon.history import History, Record
from gradmon.layout import Unit


class Sink:
    """Base class: every event is a no-op; override the ones you present.

    Events, in order: :meth:`start` once; then per committed record :meth:`record`, with :meth:`histogram`,
    :meth:`curvature`, :meth:`finding` and :meth:`epoch` as they happen; :meth:`close` once at the end.
    """

    #: set to a one-line reason when the sink stopped working (it is then dropped)
    failed: str | None = None
    #: whether this sink presents histograms (the monitor computes them only if some sink does)
    wants_histograms: bool = False

    def start(self, run: RunInfo, units: Sequence[Unit]) -> None:
        """The run begins; ``units`` are the monitored layers, input to output."""

    def record(self, record: Record, units: Sequence[Unit], slow: bool) -> None:
        """One committed record (``slow``: it holds the slow quantities, e.g. update ratios)."""

    def histogram(self, step: int, tag: str, histogram: Mapping[str, Any]) -> None:
        """A histogram computed by :func:`gradmon.quantities.xp.histogram` (counts, edges and sums)."""

    def curvature(self, entry: Mapping[str, Any]) -> None:
        """One curvature measurement (see :mod:`gradmon.quantities.curvature_meter`)."""

    def finding(self, finding: Finding) -> None:
        """A finding opened (its suggestions attached)."""

    def epoch(self, step: int, logs: Mapping[str, float]) -> None:
        """An epoch ended at ``step``: ``logs`` holds ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``."""

    def close(self, report: HealthReport, history: History | None, written: Sequence[Path]) -> None:
        """The run ended: the final ``report``, its ``history`` and the report files ``written``."""


class SinkSet:
    """The monitor's sinks, called in order; a sink that raises or sets ``failed`` is reported through
    ``on_failure(line)`` once and dropped."""

    def __init__(self, sinks: Sequence[Sink], on_failure: Any) -> None:
        self.sinks = list(sinks)
        self.on_failure = on_failure
        self._by_event: dict[str, list[Sink]] = {}

    def _listening(self, event: str) -> list[Sink]:
        """The sinks that present ``event`` (a sink that leaves it a no-op costs nothing per step)."""
        found = self._by_event.get(event)
        if found is None:
            found = self._by_event[event] = [s for s in self.sinks if getattr(type(s), event, None)
                                              is not getattr(Sink, event)]
        return found

    def __iter__(self):
        return iter(self.sinks)

    @property
    def wants_histograms(self) -> bool:
        return any(s.wants_histograms for s in self.sinks)

    def emit(self, event: str, *args: Any) -> None:
        for sink in self._listening(event):
            try:
                getattr(sink, event)(*args)
            except Exception as exc:  # a sink must never stop training
                sink.failed = sink.failed or f"{type(exc).__name__}: {exc}"
            if sink.failed:
                self.sinks.remove(sink)
                self._by_event.clear()
                name = getattr(sink, "name", type(sink).__name__)
                self.on_failure(f"the {name} sink failed and is off for the rest of the run: {sink.failed}")
