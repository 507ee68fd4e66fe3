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

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gradmon.report.markdown import md_code, md_text

_SEVERITY = {"info": "INFO", "warning": "WARNING", "error": "ERROR"}


class TensorBoardSink:
    """Writes scalars, histograms, texts, alerts and hparams into ``logdir`` (one TensorBoard run).

    >>> sink = TensorBoardSink("runs/exp1")              # doctest: +SKIP
    >>> sink.begin(["dense0", "dense2"], ["grad_norm"])  # doctest: +SKIP
    >>> sink.scalars(0, {"grad_norm/dense0": 0.5})       # doctest: +SKIP
    """

    def __init__(self, logdir: str | os.PathLike, *, flush_every: int = 50) -> None:
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
        self.failed: str | None = None
        self._calls = 0
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
        charts["curvature trace"] = ["Multiline", ["curvature/trace"]]
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

    def histogram(self, step: int, tag: str, values: np.ndarray, max_values: int = 4096, bins: int = 64) -> None:
        """A histogram of the finite values in ``bins`` equal-width buckets; large arrays are represented by an
        evenly strided sample of ``max_values`` (the shape of a distribution of 200k gradients needs far
        fewer points)."""
        data = np.asarray(values).ravel()
        if data.size > max_values:
            data = data[:: data.size // max_values]
        data = data.astype(np.float64)
        data = data[np.isfinite(data)]
        if data.size:
            self._guard(f"histogram {tag}", lambda: self._write(histogram_summary(tag, data, bins), step))

    def text(self, step: int, tag: str, markdown: str) -> None:
        from tensorboardX.summary import text

        self._guard(f"text {tag}", lambda: self._write(text(tag, markdown), step))

    def alert(self, step: int, code: str, severity: str, layer: str | None, message: str) -> None:
        """One finding as a Markdown line under the ``alerts`` tag; names and the message are escaped."""
        where = f" in {md_code(layer)}" if layer else ""
        line = (f"**{_SEVERITY.get(severity, md_text(severity.upper()))}** {md_code(code)}{where} at step {step}: "
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

    def flush(self) -> None:
        """Hand buffered events to the operating system, so a reader (and a crashed run) sees them; the
        fsync to disk, which costs milliseconds, is left to :meth:`close`."""
        # the buffered file under tensorboardX's writer; its own flush (with fsync) where that is not reachable
        recorder = getattr(self._events, "_py_recordio_writer", None)
        self._guard("events", getattr(getattr(recorder, "_writer", None), "flush", self._events.flush))

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._closed:
            return
        try:
            self._events.close()
        except Exception as exc:
            self.failed = self.failed or f"closing the event file in {self._logdir} failed: {exc}"
        self._closed = True


def histogram_summary(tag: str, data: np.ndarray, bins: int) -> Any:
    """A TensorBoard histogram of finite float64 ``data``: equal-width buckets counted with ``bincount``
    (``np.histogram`` costs several times more on a few thousand values).  TensorBoard stores right bucket
    edges, so a leading empty bucket ending at the minimum carries the left edge."""
    from tensorboardX.summary import histogram_raw

    lo, hi = float(data.min()), float(data.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    index = np.minimum(((data - lo) / width).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    edges = lo + width * np.arange(bins + 1)
    return histogram_raw(tag, min=lo, max=hi, num=int(data.size), sum=float(data.sum()),
                         sum_squares=float(np.dot(data, data)), bucket_limits=edges.tolist(),
                         bucket_counts=[0, *counts.tolist()])
