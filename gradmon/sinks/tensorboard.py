"""TensorBoard sink (through tensorboardX): presentation only, no judging.

One run per training run.  At the start a custom-scalars layout puts every layer of a quantity in one
multiline chart (``grad_norm/<layer>`` for all layers, ...), log-scale charts first: custom-scalars charts
have no log axis, so gradient norms are also written as ``log10_*`` tags (the global norm here, per layer by
the monitor), and those charts come before the linear ones, whose lines hug zero when norms span decades.
Findings become ``alerts`` text as they open (TensorBoard's text tab lists them newest first; the final
``report`` text lists every finding worst first); hyperparameters and the final report are written at the
end.  A failure while writing (disk full, a vanished directory) never propagates: the sink records one line
in ``failed`` and turns itself off.

Events are written synchronously, in the caller's thread, with tensorboardX's event-file writer and summary
builders.  tensorboardX's ``SummaryWriter`` hands events to a background thread through a bounded queue: a
write error kills that thread, and the training loop then blocks forever on the full queue.  Written here, an
error surfaces where it happens, and buffered events cost a copy in memory, not a trip through a pipe.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core.callbacks import RunInfo
from gradmon.findings import Finding, HealthReport
from gradmon.history import History, Record
from gradmon.layout import Unit
from gradmon.report.markdown import md_code, md_text, render_markdown
from gradmon.sinks.base import Sink
from gradmon.vocabulary import SEVERITIES

#: tags of the per-layer quantities written to TensorBoard
QUANTITIES = ("log10_grad_norm", "grad_norm", "update_ratio", "saturation", "dead_fraction", "weight_norm")


class TensorBoardSink(Sink):
    """Writes scalars, histograms, texts, alerts and hparams into ``logdir`` (one TensorBoard run).

    ``scalar_every``: records between scalar writes (records holding the slow quantities, such as update
    ratios, are always written, so those reach TensorBoard whatever the two cadences).

    >>> sink = TensorBoardSink("runs/exp1")              # doctest: +SKIP
    >>> sink.begin(["dense0", "dense2"], ["grad_norm"])  # doctest: +SKIP
    >>> sink.scalars(0, {"grad_norm/dense0": 0.5})       # doctest: +SKIP
    """

    name = "tensorboard"
    wants_histograms = True

    def __init__(self, logdir: str | os.PathLike, *, flush_every: int = 50, scalar_every: int = 10) -> None:
        try:
            from tensorboardX.event_file_writer import EventsWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install tensorboardX") from None
        self._logdir = Path(logdir)
        try:
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._events = EventsWriter(str(self._logdir / "events"))
        except OSError as exc:
            raise OSError(f"cannot write TensorBoard events to {str(self._logdir)!r} ({exc.strerror or exc}); "
                          f"choose another --logdir") from None
        self.flush_every = max(1, int(flush_every))
        self.scalar_every = max(1, int(scalar_every))
        self.failed: str | None = None
        self._calls = 0
        self._records = 0
        self._closed = False

    def _write(self, summary: Any, step: int = 0) -> None:
        """One summary protobuf as one event at ``step``."""
        from tensorboardX.proto.event_pb2 import Event

        self._events.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    @property
    def logdir(self) -> Path:
        return self._logdir

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.failed or self._closed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # a sink must never stop training
            self.failed = f"writing {what} to {self._logdir} failed: {type(exc).__name__}: {exc}"

    def begin(self, layer_names: Sequence[str], quantities: Sequence[str]) -> None:
        """The custom-scalars layout: one multiline chart per quantity over all layers, in this order: the
        log-scale quantities (``log10_*``), the log10 global gradient norm, the loss, the other quantities,
        the global norm and clip coefficient, curvature."""
        logs = [q for q in quantities if q.startswith("log10_")]
        charts: dict[str, list[Any]] = {q: ["Multiline", [f"{q}/{name}" for name in layer_names]] for q in logs}
        charts["log10 global gradient norm"] = ["Multiline", ["log10_grad_norm/global"]]
        charts["loss"] = ["Multiline", ["loss/train", "loss/train_epoch", "loss/val"]]
        charts.update({q: ["Multiline", [f"{q}/{name}" for name in layer_names]] for q in quantities
                       if q not in logs})
        charts["global gradient"] = ["Multiline", ["grad_norm/global", "clip_coef"]]
        charts["curvature"] = ["Multiline", ["curvature/lambda_max", "curvature/stability_threshold"]]
        charts["curvature trace"] = ["Multiline", ["curvature/trace", "curvature/trace_stderr"]]
        from tensorboardX.summary import custom_scalars

        self._guard("the layout", lambda: self._write(custom_scalars({"gradmon": charts})))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """All ``values`` of one step in a single event (one protobuf, not one per tag).  A positive finite
        ``grad_norm/global`` is also written as ``log10_grad_norm/global``."""
        from tensorboardX.proto.summary_pb2 import Summary

        total = values.get("grad_norm/global")
        if total is not None and np.isfinite(total) and total > 0:
            values = {**values, "log10_grad_norm/global": float(np.log10(total))}

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v))
                                 for tag, v in values.items() if v is not None])
        self._guard("scalars", self._write, summary, step)
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def histogram(self, step: int, tag: str, histogram: Mapping[str, Any]) -> None:
        """A histogram computed where the values live (:func:`gradmon.quantities.xp.histogram`)."""
        self._guard(f"histogram {tag}", lambda: self._write(histogram_summary(tag, histogram), step))

    def text(self, step: int, tag: str, markdown: str) -> None:
        from tensorboardX.summary import text

        self._guard(f"text {tag}", lambda: self._write(text(tag, markdown), step))

    def alert(self, step: int, code: str, severity: str, layer: str | None, message: str) -> None:
        """One finding as a Markdown line under the ``alerts`` tag; names and the message are escaped."""
        where = f" in {md_code(layer)}" if layer else ""
        label = severity.upper() if severity in SEVERITIES else md_text(severity.upper())
        line = (f"**{label}** {md_code(code)}{where} at step {step}: "
                f"{md_text(message)}")
        self.text(step, "alerts", line)
        self.flush()

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Hyperparameters and result metrics for the HPARAMS tab, in this same run."""
        from tensorboardX.summary import hparams as hparams_summary

        finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}  # a diverged run has no final loss

        def write() -> None:
            from tensorboardX.summary import scalar

            clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
            for summary in hparams_summary(clean, finite):  # experiment, session start, session end
                self._write(summary)
            for k, v in finite.items():
                self._write(scalar(k, v))
        self._guard("hparams", write)

    # -- the Sink protocol -----------------------------------------------------------------------------------
    def start(self, run: RunInfo, units: Sequence[Unit]) -> None:
        self.begin([u.name for u in units], QUANTITIES)

    def record(self, record: Record, units: Sequence[Unit], slow: bool) -> None:
        """Scalars of every ``scalar_every``-th record, and of every record holding the slow quantities."""
        self._records += 1
        if not (slow or self._records % self.scalar_every == 1 % self.scalar_every):
            return
        values = {"loss/train": record.scalar("loss"), "grad_norm/global": record.scalar("grad_norm"),
                  "clip_coef": record.scalar("clip_coef"), "lr": record.scalar("lr")}
        with np.errstate(divide="ignore", invalid="ignore"):  # orders of magnitude read better on a log scale
            derived = {"log10_grad_norm": np.log10(record.layer("grad_norm"))}
        for q in QUANTITIES:
            arr = derived[q] if q in derived else record.layer(q)
            for u in units:
                v = float(arr[u.index])
                if math.isfinite(v):
                    values[f"{q}/{u.name}"] = v
        self.scalars(record.step, values)

    def curvature(self, entry: Mapping[str, Any]) -> None:
        values = {"curvature/lambda_max": entry.get("lambda_max"), "curvature/trace": entry.get("trace"),
                  "curvature/trace_stderr": entry.get("trace_stderr"),  # the trace's error bar, a second series
                  "curvature/hvps": entry.get("hvps"), "curvature/stability_threshold": entry.get("threshold")}
        self.scalars(int(entry["step"]), {k: float(v) for k, v in values.items() if v is not None
                                          and (k != "curvature/trace_stderr" or math.isfinite(float(v)))})

    def finding(self, finding: Finding) -> None:
        self.alert(finding.first_step, finding.code, finding.severity, finding.layer, finding.message)

    def epoch(self, step: int, logs: Mapping[str, float]) -> None:
        tags = (("loss", "loss/train_epoch"), ("val_loss", "loss/val"), ("accuracy", "accuracy/train"),
                ("val_accuracy", "accuracy/val"))
        self.scalars(step, {tag: float(logs[key]) for key, tag in tags if key in logs})

    def close(self, report: HealthReport | None = None, history: History | None = None,
              written: Sequence[Path] = ()) -> None:
        """The final report as text and the run's hyperparameters and outcome (HPARAMS), then the event file
        is flushed and closed (idempotent)."""
        if report is not None and not self._closed:
            self._guard("the report text", lambda: self.text(report.steps, "report", render_markdown(report)))
            metrics = {"gradmon/findings": float(len(report.findings)),
                       "gradmon/errors": float(sum(f.severity == "error" for f in report.findings))}
            if report.loss:
                metrics["gradmon/final_loss"] = float(report.loss[-1]["train"])
            self.hparams(hparams_of(report.spec), metrics)
        self._close_file()

    def flush(self) -> None:
        """Hand buffered events to the operating system, so a reader (and a crashed run) sees them; the
        fsync to disk, which costs milliseconds, is left to :meth:`close`."""
        # the buffered file under tensorboardX's writer; its own flush (with fsync) where that is not reachable
        recorder = getattr(self._events, "_py_recordio_writer", None)
        self._guard("events", getattr(getattr(recorder, "_writer", None), "flush", self._events.flush))

    def _close_file(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._closed:
            return
        try:
            self._events.close()
        except Exception as exc:
            self.failed = self.failed or f"closing the event file in {self._logdir} failed: {exc}"
        self._closed = True


def histogram_summary(tag: str, h: Mapping[str, Any]) -> Any:
    """A TensorBoard histogram from a computed one (``min``, ``max``, ``num``, ``sum``, ``sum_squares``,
    ``edges``, ``counts``).  TensorBoard stores right bucket edges, so a leading empty bucket ending at the
    minimum carries the left edge."""
    from tensorboardX.summary import histogram_raw

    return histogram_raw(tag, min=h["min"], max=h["max"], num=int(h["num"]), sum=h["sum"],
                         sum_squares=h["sum_squares"], bucket_limits=[float(e) for e in h["edges"]],
                         bucket_counts=[0, *(int(c) for c in h["counts"])])


def hparams_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Flat scalar hyperparameters of a spec for TensorBoard's HPARAMS plugin."""
    out: dict[str, Any] = {}
    for section in ("model", "train", "data"):
        for key, value in dict(spec.get(section, {})).items():
            if isinstance(value, (bool, int, float, str)):
                out[f"{section}.{key}"] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                out[f"{section}.{key}"] = str(list(value))
    return out
