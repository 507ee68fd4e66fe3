"""TensorBoard sink (through tensorboardX): presentation only, no judging.

One run per training run.  At the start a custom-scalars layout puts every layer of a quantity in one
multiline chart (``grad_norm/<layer>`` for all layers, ...); findings become ``alerts`` text as they open;
hyperparameters and the final report are written at the end.  A failure while writing (disk full, a
vanished directory) never propagates: the sink records one line in ``failed`` and turns itself off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

_SEVERITY = {"info": "INFO", "warning": "WARNING", "error": "ERROR"}


class TensorBoardSink:
    """Writes scalars, histograms, texts, alerts and hparams into ``logdir`` (one TensorBoard run).

    >>> sink = TensorBoardSink("runs/exp1")              # doctest: +SKIP
    >>> sink.begin(["dense0", "dense2"], ["grad_norm"])  # doctest: +SKIP
    >>> sink.scalars(0, {"grad_norm/dense0": 0.5})       # doctest: +SKIP
    """

    def __init__(self, logdir: str | os.PathLike, *, flush_every: int = 50) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install tensorboardX") from None
        self._logdir = Path(logdir)
        try:
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(self._logdir), flush_secs=30)
        except OSError as exc:
            raise OSError(f"cannot write TensorBoard events to {str(self._logdir)!r} ({exc.strerror or exc}); "
                          f"choose another --logdir") from None
        self.flush_every = max(1, int(flush_every))
        self.failed: str | None = None
        self._calls = 0
        self._closed = False

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
        """The custom-scalars layout: one multiline chart per quantity over all layers."""
        charts = {q: ["Multiline", [f"{q}/{name}" for name in layer_names]] for q in quantities}
        charts["loss"] = ["Multiline", ["loss/train", "loss/train_epoch", "loss/val"]]
        charts["global gradient"] = ["Multiline", ["grad_norm/global", "clip_coef"]]
        charts["curvature"] = ["Multiline", ["curvature/lambda_max", "curvature/stability_threshold"]]
        charts["curvature trace"] = ["Multiline", ["curvature/trace"]]
        self._guard("the layout", self._writer.add_custom_scalars, {"gradmon": charts})

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """All ``values`` of one step in a single event (one protobuf, not one per tag)."""
        from tensorboardX.proto.summary_pb2 import Summary

        def write() -> None:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v))
                                     for tag, v in values.items() if v is not None])
            self._writer._get_file_writer().add_summary(summary, int(step))
        self._guard("scalars", write)
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def histogram(self, step: int, tag: str, values: np.ndarray, max_values: int = 4096, bins: int = 64) -> None:
        """A histogram of the finite values; large arrays are represented by an evenly strided sample of
        ``max_values`` (the shape of a distribution of 200k gradients needs far fewer points)."""
        data = np.asarray(values).ravel()
        if data.size > max_values:
            data = data[:: data.size // max_values]
        data = data.astype(np.float64)
        data = data[np.isfinite(data)]
        if data.size:
            self._guard(f"histogram {tag}", self._writer.add_histogram, tag, data, int(step), bins=bins)

    def text(self, step: int, tag: str, markdown: str) -> None:
        self._guard(f"text {tag}", self._writer.add_text, tag, markdown, int(step))

    def alert(self, step: int, code: str, severity: str, layer: str | None, message: str) -> None:
        where = f" in {layer}" if layer else ""
        line = f"**{_SEVERITY.get(severity, severity.upper())}** `{code}`{where} at step {step}: {message}"
        self.text(step, "alerts", line)
        self.flush()

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Hyperparameters and result metrics for the HPARAMS tab, in this same run."""
        from tensorboardX.summary import hparams as hparams_summary

        finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}  # a diverged run has no final loss

        def write() -> None:
            clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
            exp, ssi, sei = hparams_summary(clean, finite)
            fw = self._writer._get_file_writer()
            for summary in (exp, ssi, sei):
                fw.add_summary(summary)
            for k, v in finite.items():
                self._writer.add_scalar(k, v, 0)
        self._guard("hparams", write)

    def flush(self) -> None:
        self._guard("events", self._writer.flush)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._writer.close()
        except Exception as exc:
            self.failed = self.failed or f"closing the event file in {self._logdir} failed: {exc}"
        self._closed = True
