"""TensorBoard sink (through tensorboardX): presentation only, no judging.

One run per training run.  What it shows is laid out in :mod:`gradmon.sinks.dashboard`: per-layer tags that
sort in depth order (``grad_norm/03_dense6``) with descriptions, log10 series for gradient norms and update
ratios (custom-scalars charts have no log axis; norms spanning decades hug zero on a linear one), a
custom-scalars layout whose first category is the diagnosis (a chart per finding, titled with its layer and
fix), the findings with their fixes in TEXT (``alerts`` as they open; at the end the diagnosis on top) and
HPARAMS with the chosen hyperparameters and the final metrics.

What reaches the file, and when:

- scalars every ``scalar_every``-th record (and every record that holds the slow quantities).  The records
  in between are kept (copies of two small rows) and written when a finding opens and when the run stops,
  for any reason, so the steps that show a failure are never lost to the cadence;
- a series that has kept one value is held back until it changes (then its first and last equal points are
  written); a series that never changed is not charted, and the diagnosis text names it;
- the file is flushed (to the operating system) every ``flush_every`` writes, when a finding opens and at
  the end (then also fsync'ed and closed).

A failure while writing (disk full, a vanished directory) never propagates: the sink records one line in
``failed`` and turns itself off.  Events are written synchronously, in the caller's thread, with tensorboardX's
summary builders into an :class:`EventFile` (created exclusively, under a name of its own, never through a
planted symlink): tensorboardX's ``SummaryWriter`` hands events to a background thread through a bounded
queue, a write error kills that thread, and the training loop then blocks forever on the full queue.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core.callbacks import RunInfo
from core.files import create_exclusive
from gradmon.findings import Finding, HealthReport
from gradmon.history import LAYER_QUANTITIES, SCALARS, History, Record
from gradmon.layout import Unit
from gradmon.report.markdown import md_code, md_text, render_markdown
from gradmon.sinks import dashboard
from gradmon.sinks.base import Sink
from gradmon.vocabulary import SEVERITIES

#: tags of the per-layer quantities written to TensorBoard (prefixes; see :mod:`gradmon.sinks.dashboard`)
QUANTITIES = dashboard.LAYER_QUANTITIES
#: tags whose series are held back while they keep one value (a constant chart says nothing)
_RUN_WIDE_HELD = ("clip_coef", "lr")
#: run-wide tags written from a record's scalar row
_RUN_WIDE = (("loss/train", SCALARS.index("loss")), ("grad_norm/global", SCALARS.index("grad_norm")),
             ("clip_coef", SCALARS.index("clip_coef")), ("lr", SCALARS.index("lr")))
_ROW = {q: LAYER_QUANTITIES.index(q) for q in LAYER_QUANTITIES}


class EventFile:
    """One TensorBoard event file in ``logdir``, created exclusively and never through a symlink
    (:func:`core.files.create_exclusive`), under a name no other writer picks:
    ``events.out.tfevents.<unix seconds>.<host>.<pid>.<random>`` (TensorBoard reads every file whose name
    holds ``tfevents``, in name order).  Events are appended as TFRecords (length, masked CRC-32C of the
    length, data, masked CRC-32C of the data), synchronously: :meth:`flush` hands them to the operating
    system, :meth:`close` also fsyncs."""

    def __init__(self, logdir: str | os.PathLike) -> None:
        from tensorboardX.proto.event_pb2 import Event

        host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname())[:64] or "host"
        name = f"events.out.tfevents.{int(time.time()):010d}.{host}.{os.getpid()}.{secrets.token_hex(4)}"
        self.path = Path(logdir) / name
        self._fh = create_exclusive(self.path)
        try:
            self.write_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        except BaseException:
            self._fh.close()
            raise

    def write_event(self, event: Any) -> None:
        """Append one ``Event`` protobuf."""
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._fh.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                 struct.pack("<I", masked_crc32c(data)))))

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()


class TensorBoardSink(Sink):
    """Writes scalars, histograms, texts, alerts and hparams into ``logdir`` (one TensorBoard run).

    ``scalar_every``: records between scalar writes (records holding the slow quantities, such as update
    ratios, are always written).  ``hparams``: the hyperparameters HPARAMS lists (spec keys such as
    ``train.lr``; None: every scalar key of the spec; ``()``: write no experiment, because a group of runs
    writes one for all of them with :func:`write_experiment`).

    >>> sink = TensorBoardSink("runs/exp1")              # doctest: +SKIP
    >>> sink.scalars(0, {"loss/train": 0.5})             # doctest: +SKIP
    """

    name = "tensorboard"
    wants_histograms = True
    #: added to every live alert's message (the rank-averaging subclass says whose judgment it is)
    alert_suffix = ""

    def __init__(self, logdir: str | os.PathLike, *, flush_every: int = 50, scalar_every: int = 10,
                 hparams: Sequence[str] | None = None) -> None:
        self._logdir = Path(logdir)
        try:
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._events = EventFile(self._logdir)
        except ImportError:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install tensorboardX") from None
        except Exception as exc:  # whatever stops the file being created is an OSError to the monitor
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            raise OSError(f"cannot write TensorBoard events to {str(self._logdir)!r} ({why}); "
                          f"choose another --logdir") from None
        self.flush_every = max(1, int(flush_every))
        self.scalar_every = max(1, int(scalar_every))
        self.hparam_keys = list(hparams) if hparams is not None else None
        self.failed: str | None = None
        self._calls = 0
        self._records = 0
        self._closed = False
        self._units: list[Unit] = []
        self._width = 2
        self._tags: dict[str, tuple[str, ...]] = {}    # per quantity: the unit tags, in unit order
        self._hist_tags: dict[str, str] = {}            # histogram tag as the monitor names it -> depth-ordered
        self._described: set[str] = set()
        self._constant: dict[str, list[float]] = {}     # tag -> [first step, value, last step, points]
        self._varying: set[str] = set()
        self._unwritten: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._findings: list[Finding] = []
        self._epoch_logs: dict[str, float] = {}

    # -- writing ----------------------------------------------------------------------------------------------
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

    def _value(self, tag: str, v: float) -> Any:
        """A scalar value; the first one of a tag carries its description."""
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        if tag in self._described:
            return Summary.Value(tag=tag, simple_value=float(v))
        self._described.add(tag)
        meta = SummaryMetadata(display_name=tag, summary_description=dashboard.description(tag),
                               plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
        return Summary.Value(tag=tag, simple_value=float(v), metadata=meta)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """The ``values`` of one step in a single event.  A positive finite ``grad_norm/global`` is also
        written as ``log10_grad_norm/global``; series that have kept one value are held back (see the
        module docstring)."""
        from tensorboardX.proto.summary_pb2 import Summary

        total = values.get("grad_norm/global")
        if total is not None and np.isfinite(total) and total > 0:
            values = {**values, "log10_grad_norm/global": float(np.log10(total))}
        now, earlier = self._admit(step, values)

        def write() -> None:
            for when, tag, v in earlier:  # the first (and last equal) points of a series that just changed
                self._write(Summary(value=[self._value(tag, v)]), when)
            if now:
                self._write(Summary(value=[self._value(t, v) for t, v in now.items()]), step)
        self._guard("scalars", write)
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def _admit(self, step: int, values: Mapping[str, float]) -> tuple[dict[str, float], list[tuple[int, str, float]]]:
        """Split ``values`` into what is written now and the held points of series that change now."""
        now: dict[str, float] = {}
        earlier: list[tuple[int, str, float]] = []
        for tag, v in values.items():
            if v is None:
                continue
            v = float(v)
            if tag in self._varying or not self._holds(tag):
                now[tag] = v
                continue
            held = self._constant.get(tag)
            if held is None:
                self._constant[tag] = [step, v, step, 1]
            elif v == held[1]:
                held[2], held[3] = step, held[3] + 1
            else:
                del self._constant[tag]
                self._varying.add(tag)
                earlier.append((int(held[0]), tag, held[1]))
                if held[2] != held[0]:
                    earlier.append((int(held[2]), tag, held[1]))
                now[tag] = v
        return now, earlier

    def _holds(self, tag: str) -> bool:
        """Whether ``tag`` is held back while constant: per-layer quantities, the clip coefficient and the
        learning rate (the loss and curvature always go out)."""
        return tag in _RUN_WIDE_HELD or tag.split("/", 1)[0] in self._tags

    def histogram(self, step: int, tag: str, histogram: Mapping[str, Any]) -> None:
        """A histogram computed where the values live (:func:`gradmon.quantities.xp.histogram`); per-layer
        tags are renamed to sort in depth order (``gradients/dense6`` -> ``gradients/03_dense6``)."""
        tag = self._hist_tags.get(tag, tag)
        self._guard(f"histogram {tag}", lambda: self._write(histogram_summary(tag, histogram), step))

    def text(self, step: int, tag: str, markdown: str) -> None:
        from tensorboardX.summary import text

        self._guard(f"text {tag}", lambda: self._write(text(tag, markdown), step))

    def alert(self, step: int, code: str, severity: str, layer: str | None, message: str) -> None:
        """One finding as a Markdown line under the ``alerts`` tag; names and the message are escaped."""
        where = f" in {md_code(layer)}" if layer else ""
        label = severity.upper() if severity in SEVERITIES else md_text(severity.upper())
        self.text(step, "alerts", f"**{label}** {md_code(code)}{where} at step {step}: {md_text(message)}")
        self.flush()

    def layout(self, step: int = 0, final: bool = False) -> None:
        """(Re)write the custom-scalars layout (TensorBoard reads the last one): at the end, only charts
        with informative series."""
        shown = self._informative() if final else None
        self._guard("the layout", lambda: self._write(_layout_summary(
            dashboard.layout(self._units, self._findings, shown)), step))

    def _informative(self) -> set[str]:
        """Tags with data that changed (or a single point, such as one curvature measurement)."""
        return (set(self._described) - set(self._constant)) | {t for t, h in self._constant.items() if h[3] == 1}

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], ended: str = "completed") -> None:
        """HPARAMS: every hyperparameter's value (session start), the experiment listing ``self.hparam_keys``
        (all when None, none when empty) and the finite ``metrics`` as scalars."""
        from tensorboardX.proto.summary_pb2 import Summary

        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}

        def write() -> None:
            keys = list(hparams) if self.hparam_keys is None else self.hparam_keys
            if keys:
                self._write(dashboard.experiment_summary({k: hparams.get(k, "") for k in keys},
                                                         list(dashboard.METRIC_MEANING)))
            for summary in dashboard.session_summaries(hparams, ended):
                self._write(summary)
            for k, v in finite.items():
                self._write(Summary(value=[self._value(k, v)]))
        self._guard("hparams", write)

    # -- the Sink protocol -----------------------------------------------------------------------------------
    def start(self, run: RunInfo, units: Sequence[Unit]) -> None:
        self.begin(units)

    def begin(self, units: Sequence[Unit]) -> None:
        """Name the per-layer tags of ``units`` and write the first layout (every chart that can apply)."""
        self._units = list(units)
        self._width = dashboard.index_width(len(self._units))
        self._tags = {q: tuple(dashboard.layer_tag(q, u, self._width) for u in self._units) for q in QUANTITIES}
        self._hist_tags = {f"{kind}/{u.name}": dashboard.layer_tag(kind, u, self._width)
                           for kind in ("gradients", "activations", "log10_abs_gradients") for u in self._units}
        self.layout(0)

    def record(self, record: Record, units: Sequence[Unit], slow: bool) -> None:
        """Scalars of every ``scalar_every``-th record and of every record holding the slow quantities; the
        others are kept until a finding opens or the run stops."""
        self._records += 1
        if not (slow or self._records % self.scalar_every == 1 % self.scalar_every):
            self._unwritten.append((record.step, record.scalars.copy(), record.layers.copy()))
            return
        self._unwritten.clear()
        self.scalars(record.step, self._values(record.step, record.scalars, record.layers))

    def _values(self, step: int, scalars: np.ndarray, layers: np.ndarray) -> dict[str, float]:
        """The tags and values of one record's rows (``scalars`` ``(len(SCALARS),)``, ``layers``
        ``(len(LAYER_QUANTITIES), n_units)``); values that are not finite are left out."""
        values = {tag: float(scalars[i]) for tag, i in _RUN_WIDE if math.isfinite(scalars[i])}
        with np.errstate(divide="ignore", invalid="ignore"):  # orders of magnitude read better on a log scale
            derived = {"log10_grad_norm": np.log10(layers[_ROW["grad_norm"]]),
                       "log10_update_ratio": np.log10(layers[_ROW["update_ratio"]]),
                       "log10_act_std": np.log10(layers[_ROW["act_std"]])}
        for q, tags in self._tags.items():
            arr = derived[q] if q in derived else layers[_ROW[q]]
            for tag, v in zip(tags, arr.tolist()):
                if math.isfinite(v):
                    values[tag] = v
        return values

    def unit_tag(self, quantity: str, j: int) -> str:
        """The tag of per-layer ``quantity`` for the ``j``-th unit (``grad_norm/03_dense6``)."""
        return self._tags[quantity][j]

    def _write_unwritten(self) -> None:
        """The records kept since the last scalar write, in order."""
        pending, self._unwritten = self._unwritten, []
        for step, scalars, layers in pending:
            self.scalars(step, self._values(step, scalars, layers))

    def curvature(self, entry: Mapping[str, Any]) -> None:
        values = {"curvature/lambda_max": entry.get("lambda_max"), "curvature/trace": entry.get("trace"),
                  "curvature/trace_stderr": entry.get("trace_stderr"),  # the trace's error bar, a second series
                  "curvature/hvps": entry.get("hvps"), "curvature/stability_threshold": entry.get("threshold")}
        self.scalars(int(entry["step"]), {k: float(v) for k, v in values.items() if v is not None  # no trace: none
                                          and (k not in ("curvature/trace", "curvature/trace_stderr")
                                               or math.isfinite(float(v)))})

    def finding(self, finding: Finding) -> None:
        """A finding opened: the records held back by the cadence, the alert with its fix, the layout with
        the finding's chart first, and a flush (a run that dies next keeps all of it)."""
        self._write_unwritten()
        self._findings.append(finding)
        self.text(finding.first_step, "alerts",
                  dashboard.alert_markdown(finding, self._width, self._units, self.alert_suffix))
        if finding.severity in ("warning", "error"):
            self.layout(finding.first_step)
        self.flush()

    def epoch(self, step: int, logs: Mapping[str, float]) -> None:
        tags = (("loss", "loss/train_epoch"), ("val_loss", "loss/val"), ("accuracy", "accuracy/train"),
                ("val_accuracy", "accuracy/val"))
        self._epoch_logs.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        self.scalars(step, {tag: float(logs[key]) for key, tag in tags if key in logs})

    def close(self, report: HealthReport | None = None, history: History | None = None,
              written: Sequence[Path] = ()) -> None:
        """The run stopped (for any reason): the records held back, the final layout (informative charts
        only), the diagnosis on top of the alerts, the full report, HPARAMS; then the event file is flushed,
        fsync'ed and closed (idempotent)."""
        if not self._closed:
            self._write_unwritten()
        if report is not None and not self._closed:
            self._findings = list(report.findings)
            step = max(report.steps, 0)
            dropped = sorted(t for t, h in self._constant.items() if h[3] > 1)
            self.layout(step, final=True)
            self._guard("the diagnosis", lambda: self.text(step, "alerts", dashboard.diagnosis_markdown(
                report, self._units, [f"{t} = {self._constant[t][1]:.4g}" for t in dropped])))
            self._guard("the report text", lambda: self.text(step, "report", render_markdown(report)))
            self.hparams(dashboard.flat_hparams(report.spec), self._final_metrics(report), report.ended)
        self._close_file()

    def _final_metrics(self, report: HealthReport) -> dict[str, float]:
        logs = self._epoch_logs
        metrics = {"metrics/status": float(dashboard.STATUS_VALUES[report.status]),
                   "metrics/findings": float(len(report.worst("warning"))), "metrics/steps": float(report.steps)}
        if report.loss:
            metrics["metrics/train_loss"] = float(report.loss[-1]["train"] if report.loss[-1]["train"] is not None
                                                  else math.nan)
        if "val_loss" in logs:
            metrics["metrics/val_loss"] = logs["val_loss"]
        accuracy = logs.get("val_accuracy", logs.get("accuracy"))
        if accuracy is not None:
            metrics["metrics/accuracy"] = accuracy
        return metrics

    def flush(self) -> None:
        """Hand buffered events to the operating system, so a reader (and a crashed run) sees them; the
        fsync to disk, which costs milliseconds, is left to :meth:`close`."""
        self._guard("events", self._events.flush)

    def _close_file(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._closed:
            return
        try:
            self._events.close()
        except Exception as exc:
            self.failed = self.failed or f"closing the event file in {self._logdir} failed: {exc}"
        self._closed = True


def _layout_summary(layout: Any) -> Any:
    """The custom-scalars config summary of a :class:`Layout` protobuf."""
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()])
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=meta)])


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
    return dashboard.flat_hparams(spec)


def write_experiment(logdir: str | os.PathLike, hparams: Mapping[str, Any]) -> Path:
    """One HPARAMS experiment for a group of runs under ``logdir`` (a doctor's baseline and trials, a
    search's trials), listing the hyperparameters ``hparams`` (name -> an example value, for the type) and
    the final metrics.  The runs write theirs with ``hparams=()``: TensorBoard uses one experiment."""
    sink = TensorBoardSink(logdir, hparams=())
    sink._guard("the experiment", lambda: sink._write(
        dashboard.experiment_summary(dict(hparams), list(dashboard.METRIC_MEANING))))
    sink._close_file()
    if sink.failed:
        raise OSError(sink.failed)
    return Path(logdir)
