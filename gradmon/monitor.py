"""The monitor: a core callback that measures, judges and reports training health.

It wires four parts, each in its own module: the :class:`~gradmon.recorder.Recorder` (per-step
measurement into bounded history), the :class:`~gradmon.quantities.curvature_meter.CurvatureMeter`, the
:class:`~gradmon.jury.Jury` (detectors, hysteresis, advice) and the sinks (:mod:`gradmon.sinks`: console,
TensorBoard, any :class:`~gradmon.sinks.base.Sink` passed in).  Data flows one way, from the loop's events
to the report.  The monitor never changes training: it reads read-only payloads and copies what it keeps.

(About 540 lines, above the house's 450: one class, the hook protocol's events and the report they add
up to; the measuring, judging and presenting it wires live in their own modules.)

>>> import gradmon, core
>>> monitor = gradmon.Monitor(logdir="runs/exp1")          # doctest: +SKIP
>>> core.Trainer(model, callbacks=[monitor]).fit(X, y)     # doctest: +SKIP
>>> monitor.report().status                                # doctest: +SKIP
'healthy'
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.callbacks import Callback, RunInfo, StepState
from gradmon.detectors import default_detectors
from gradmon.findings import Finding, HealthReport
from gradmon.history import History
from gradmon.jury import Jury
from gradmon.layout import Unit, units_from_run
from gradmon.outputs import check_writable, spec_from_run, write_run_files
from gradmon.quantities.curvature_meter import DEFAULT_BUDGET, CurvatureMeter
from gradmon.quantities.gradients import first_nonfinite
from gradmon.quantities.xp import all_finite, histogram, log10_magnitudes, sample
from gradmon.recorder import Recorder
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.signals import held
from gradmon.sinks.base import Sink, SinkSet
from gradmon.sinks.console import ConsoleSink
from gradmon.thresholds import Thresholds


def _check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Monitor {name} must be {'None or ' if optional else ''}an integer >= {low}, got {value!r}")


class Monitor(Callback):
    """Watches a training run through the hook protocol.

    Parameters
    ----------
    logdir: where TensorBoard events, ``report.json``, ``report.html`` and ``history.npz`` go (None: keep
        everything in memory).
    every: steps between the cheap per-layer statistics (gradient norms, activation saturation, dead units).
    curvature_every: steps between curvature estimates (top Hessian eigenvalue by Lanczos, trace with its
        standard error) on a probe set of ``curvature_samples`` training examples; 0 turns curvature off.
        None (the default): the steps follow ``curvature_budget``.
    curvature_budget: without ``curvature_every``, curvature takes at most this share of the run's wall time
        (0.05: 5%); the first estimate comes at the first step, later ones warm-started from the previous
        top eigenvector.  When they happen depends on the machine's speed: pin ``curvature_every`` for runs
        that must be reproducible step for step.  0 turns curvature off.
    trace_samples: stochastic samples of the trace where no exact route applies (None: as many as the
        λmax estimate took; 0: no trace).
    tensorboard_every: records between TensorBoard scalar writes (the history keeps every record); records
        that measure the slow quantities (see ``weight_every``) are written too.
    histogram_every: steps between gradient/activation histograms (default: ~20 per run; 0: none).
    hparams: the hyperparameters TensorBoard's HPARAMS lists (spec keys; None: all of the spec's; ``()``:
        none, for runs whose group writes one experiment, see :func:`gradmon.sinks.tensorboard.write_experiment`).
    judge_every: records between detector judgments (default: ~20 per run, at most every 50 records).
    weight_every: records between weight norms, update-to-weight ratios and activation moments (weights
        move slowly; this keeps the every-step cost to gradient norms and activation health).
    console: print findings as they open.
    stop_on_nonfinite: ask the loop to stop, before the update, when NaN/Inf appears (False keeps going).
    detectors: names of detectors to run (all by default).
    thresholds: the judging numbers (:class:`gradmon.thresholds.Thresholds`, or overrides by table and field
        such as ``{"vanishing_gradients": {"min_drop": 3.0}}``).
    sinks: more :class:`~gradmon.sinks.base.Sink` objects to present the run (after the console and the
        TensorBoard sink the monitor makes itself).
    units: ``units(run) -> [Unit]`` for loops that lay out their units themselves (the PyTorch adapter);
        by default :func:`gradmon.layout.units_from_run`.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, *, every: int = 1,
                 curvature_every: int | None = None, curvature_budget: float = DEFAULT_BUDGET,
                 curvature_samples: int = 1024, tensorboard: bool = True, tensorboard_every: int = 10,
                 histogram_every: int | None = None, judge_every: int | None = None, window: int = 200,
                 capacity: int = 2048, console: bool = True, detectors: Sequence[str] | None = None,
                 curvature_rtol: float = 1e-3, curvature_max_iter: int = 40, trace_samples: int | None = None,
                 seed: int = 0, open_after: int | None = None, close_after: int | None = None,
                 weight_every: int = 10, stop_on_nonfinite: bool = True,
                 thresholds: Thresholds | Mapping[str, Mapping[str, float]] | None = None,
                 sinks: Sequence[Sink] = (), hparams: Sequence[str] | None = None,
                 units: Callable[[RunInfo], Sequence[Unit]] | None = None) -> None:
        for name, value, low in (("every", every, 1), ("curvature_samples", curvature_samples, 1),
                                 ("tensorboard_every", tensorboard_every, 1), ("window", window, 20),
                                 ("capacity", capacity, 4),
                                 ("weight_every", weight_every, 1), ("curvature_max_iter", curvature_max_iter, 2)):
            _check_int(name, value, low)
        _check_int("curvature_every", curvature_every, 0, optional=True)
        _check_int("trace_samples", trace_samples, 0, optional=True)
        if isinstance(curvature_budget, bool) or not isinstance(curvature_budget, (int, float)) \
                or not 0 <= curvature_budget < 1:
            raise ValueError(f"Monitor curvature_budget must be a share of wall time in [0, 1) (0.05 is 5%), "
                             f"got {curvature_budget!r}")
        _check_int("histogram_every", histogram_every, 0, optional=True)
        for name, value in (("judge_every", judge_every),
                            ("open_after", open_after), ("close_after", close_after)):
            _check_int(name, value, 1, optional=True)
        if capacity % 2:
            raise ValueError(f"Monitor capacity must be even (the history halves itself when full), got {capacity}")
        if not (isinstance(curvature_rtol, (int, float)) and 0 < curvature_rtol < 1):
            raise ValueError(f"Monitor curvature_rtol must be a number in (0, 1), got {curvature_rtol!r}")
        self.thresholds = Thresholds.coerce(thresholds)
        judging = self.thresholds.judging
        if open_after is not None or close_after is not None:  # explicit arguments win over the table
            judging = dataclasses.replace(judging, open_after=open_after or judging.open_after,
                                          close_after=close_after or judging.close_after)
            self.thresholds = dataclasses.replace(self.thresholds, judging=judging)
        self.logdir = Path(logdir) if logdir is not None else None
        self.recorder = Recorder(every=every, weight_every=weight_every, window=window, capacity=capacity,
                                 dead_pool=judging.dead_unit_examples, saturation_margin=judging.saturation_margin,
                                 input_examples=judging.input_examples)
        self.meter = CurvatureMeter(every=curvature_every, samples=curvature_samples, rtol=curvature_rtol,
                                    max_iter=curvature_max_iter, trace_samples=trace_samples, seed=seed,
                                    budget=curvature_budget)
        self.jury = Jury(default_detectors(list(detectors) if detectors is not None else None, self.thresholds),
                         self.thresholds, judge_every=judge_every, on_open=self._opened)
        self.console = ConsoleSink(enabled=console)
        self.tensorboard_every = int(tensorboard_every)
        self.histogram_every = histogram_every
        self.hparams = list(hparams) if hparams is not None else None
        self.stop_on_nonfinite = stop_on_nonfinite
        self.use_tensorboard = tensorboard and self.logdir is not None
        self._extra_sinks = list(sinks)
        self._layout = units or units_from_run
        self._reset()

    def _reset(self) -> None:
        """Per-run state (a monitor reused for a second ``fit`` starts afresh)."""
        self.sink_errors: list[str] = []
        self.notes: list[str] = []
        self.run: RunInfo | None = None
        self.units: list[Unit] = []
        self.steps = 0
        self.ended = "running"
        self.sinks = SinkSet([self.console], self._failed)
        self._hist_schedule: Schedule = every_schedule(0)
        self._checked_step = -1       # the last step whose loss and gradient norm were checked for NaN/Inf
        self._merged: dict[str, Any] | None = None
        self._closed = False
        self.metrics: list[dict[str, Any]] = []   # log_metrics() calls: {"step", name: value...}
        self.facts: dict[str, Any] = {}           # describe(): the loss's name and the batch size, for the report
        if self.logdir is not None:
            check_writable(self.logdir)

    # -- what the parts know, for readers ------------------------------------------------------------------
    @property
    def history(self) -> History | None:
        """The whole run's records (bounded)."""
        return self.recorder.history

    @property
    def window(self):
        """The recent records the detectors judge."""
        return self.recorder.window

    @property
    def curvature(self) -> list[dict[str, Any]]:
        """The curvature measurements so far."""
        return self.meter.entries

    @property
    def curvature_every(self) -> int:
        """Steps between curvature measurements (0 when off, or turned off by a failure; 1 under a time
        budget, which may measure at any step)."""
        if not self.meter.enabled:
            return 0
        return 1 if self.meter.every is None else self.meter.every

    @property
    def findings(self) -> list[Finding]:
        return self.jury.findings

    # -- hook protocol ---------------------------------------------------------------------------------------
    def requests(self, step: int) -> set[str]:
        wanted = self.recorder.requests(step)
        if self.meter.due(step):
            wanted.add("curvature")
        return wanted

    def on_train_begin(self, run: RunInfo) -> None:
        self._reset()
        self.run = run
        self.units = list(self._layout(run))
        self.recorder.begin(run, self.units)
        self.meter.begin(run)
        self.jury.begin(run, self.units, self.recorder.window, measure_every=self.recorder.every,
                        inputs=self.recorder.inputs)
        total = max(1, run.total_steps)
        hist_every = self.histogram_every if self.histogram_every is not None else (
            max(1, total // 20) if run.total_steps > 0 else 100)
        sinks: list[Sink] = [self.console]
        if self.use_tensorboard:
            try:
                from gradmon.sinks.tensorboard import TensorBoardSink

                sinks.append(TensorBoardSink(self.logdir, scalar_every=self.tensorboard_every, hparams=self.hparams))
            except (ImportError, OSError) as exc:
                self._failed(f"the tensorboard sink failed and is off for the rest of the run: {exc}")
        self.sinks = SinkSet([*sinks, *self._extra_sinks], self._failed)
        self._hist_schedule = every_schedule(int(hist_every) if self.sinks.wants_histograms else 0)
        self.sinks.emit("start", run, self.units)

    def on_after_backward(self, state: StepState) -> None:
        if self.run is None:
            raise RuntimeError("Monitor.on_train_begin(run) must be called before the first step")
        if self.recorder.pending is not None:  # a loop that does not send on_step_end
            self._commit(None)
        step = state.step
        # the loop's own reading of the loss and the gradient norm: NaN/Inf is judged before the update
        if state.grad_norm is not None:
            self._checked_step = step
            if not _finite_step(float(state.loss), state.loss_known, float(state.grad_norm)):
                self._nonfinite(state, float(state.loss), state.loss_known, float(state.grad_norm))
        if self.recorder.measures(step) and not self.recorder.measure(state):  # NaN/Inf hidden by saturation
            gnorm = float(state.grad_norm) if state.grad_norm is not None else math.nan
            self._nonfinite(state, float(state.loss), state.loss_known, gnorm)
        if self.meter.due(step) and (math.isfinite(state.loss) or not state.loss_known):
            self._measure_curvature(state)
        if self._hist_schedule(step):
            for tag, values in self.recorder.histograms(state):
                h = histogram(values)
                if h is not None:
                    self.sinks.emit("histogram", step, tag, h)
                if tag.startswith("gradients/"):  # magnitudes in decades: 1e-7 and 1e-1 apart on one axis
                    h = histogram(log10_magnitudes(sample(values)))  # (the histogram's sample, not all)
                    if h is not None:
                        self.sinks.emit("histogram", step, f"log10_abs_{tag}", h)

    def on_step_end(self, state: StepState) -> None:
        self.steps = state.step + 1
        if self.recorder.pending is not None:
            self._commit(state)

    def log_loss(self, value: Any) -> None:
        """The loss of the step measured last, for loops that learn it only after ``on_after_backward``
        (call before ``on_step_end``).  A 0-d device array (a torch tensor) is staged with the step's other
        values and checked when its record is committed: no transfer of its own; without a record to hold
        it, it is dropped (the next record's gradients show a NaN loss)."""
        pending = self.recorder.pending
        if not isinstance(value, (int, float, np.generic)):
            if pending is not None:
                self.recorder.set_loss(value)
            return
        value = float(value)
        if pending is not None:
            self.recorder.set_loss(value)
            self.meter.set_loss(pending.step, value)
        if not math.isfinite(value) and self.jury.nonfinite_step is None:
            self.jury.nonfinite(self.steps, f"The loss became {value} at step {self.steps}: training cannot "
                                f"continue from here.", {"step": self.steps, "loss": value,
                                                         "last_finite_loss": self._last_finite_loss()}, None)

    def will_record_update(self, step: int) -> bool:
        """Whether the record of ``step`` will hold update ratios (loops that must copy weights to compute
        updates, like the PyTorch adapter, ask first)."""
        return self.recorder.will_record_update(step)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.sinks.emit("epoch", self.steps, dict(logs))

    def on_train_end(self, logs: Mapping[str, Any]) -> None:
        if self.recorder.pending is not None:
            self._commit(None)
        self.steps = max(self.steps, int(logs.get("steps", self.steps)))
        stopped = logs.get("stopped")
        self.ended = "completed" if not stopped else (
            "nonfinite" if "non-finite" in str(stopped) else f"stopped: {stopped}")
        checkpoint_error = dict(logs.get("history") or {}).get("checkpoint_error")
        if checkpoint_error:  # the loop has said so on the console; the report keeps it too
            self.sink_errors.append(f"[gradmon] checkpoint not written: {checkpoint_error}")
        self._judge(final=True)
        self.close()

    def on_exception(self, exc: BaseException, state: StepState | None) -> None:
        with held():  # a second Ctrl-C waits the milliseconds until report.json is written (see gradmon.signals)
            if self.recorder.pending is not None:
                self._commit(None)
            if state is not None:
                self.steps = max(self.steps, state.step + 1)
            # Ctrl-C is "interrupted"; SIGTERM/SIGHUP arrive as a KeyboardInterrupt that says "terminated"
            self.ended = getattr(exc, "ended", "interrupted") if isinstance(exc, KeyboardInterrupt) else \
                f"exception: {type(exc).__name__}: {exc}"
            try:
                self._judge(final=True)
            finally:
                self.close()

    def should_stop(self) -> str | None:
        """Stop before a non-finite update is applied (unless ``stop_on_nonfinite=False``)."""
        if self.stop_on_nonfinite and self.jury.nonfinite_step is not None:
            return f"non-finite values at step {self.jury.nonfinite_step}"
        return None

    def stop_reason(self, severity: str = "error") -> str | None:
        """Why a loop should stop now: NaN/Inf appeared, or a finding of ``severity`` (or worse) is open; None
        while training may go on.  (``gradmon.torch``'s ``watcher.should_stop``, the Lightning and Hugging
        Face callbacks' ``stop_on``.)"""
        from gradmon.vocabulary import severity_rank

        if self.jury.nonfinite_step is not None:
            return f"non-finite values at step {self.jury.nonfinite_step}"
        floor = severity_rank(severity)
        worst = [f for f in self.jury.findings if severity_rank(f.severity) >= floor]
        if worst:
            f = worst[0]
            return f"{f.severity} {f.code}" + (f" in {f.layer}" if f.layer else "") + f" at step {f.first_step}"
        return None

    def log_metrics(self, step: int | None = None, **metrics: float) -> None:
        """Validation (or any) metrics of the run so far, e.g. ``log_metrics(val_loss=0.3, accuracy=0.91)``:
        they go to the sinks as an epoch's logs (TensorBoard ``loss/val``, ``accuracy/val``...) and to the
        report (``extra["metrics"]``, one entry per call).  ``accuracy`` means validation accuracy here, as
        in most loops that compute it on held-out data; ``train_accuracy`` is the training one."""
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[name] = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError):
                raise ValueError(f"log_metrics({name}=...) needs a number, got {type(value).__name__}") from None
        at = self.steps if step is None else int(step)
        self.metrics.append({"step": at, **values})
        logs = {{"accuracy": "val_accuracy", "train_accuracy": "accuracy"}.get(k, k): v for k, v in values.items()}
        self.sinks.emit("epoch", at, logs)

    def describe(self, loss: str | None = None, batch_size: int | None = None) -> None:
        """Facts a loop learns as it runs (the loss's name, the batch size) for a report whose run
        description has placeholders (``loss: "unknown"``, ``batch_size: 0``)."""
        if loss and loss != "unknown":
            self.facts.setdefault("loss", str(loss))
        if batch_size:
            self.facts.setdefault("batch_size", int(batch_size))

    # -- the step's path -------------------------------------------------------------------------------------
    def _commit(self, state: StepState | None) -> None:
        rec = self.recorder.commit(state)
        if rec is None:
            return
        self.steps = max(self.steps, rec.step + 1)
        loss, gnorm = rec.scalar("loss"), rec.scalar("grad_norm")
        if self.recorder.loss_staged:  # a device loss: known on the host only now
            self.meter.set_loss(rec.step, loss)
        if self._checked_step != rec.step:  # loops that did not give the norm: checked now, on the record
            self._checked_step = rec.step
            loss_known = self.recorder.loss_staged or not math.isnan(loss)  # (a NaN here: no loss was given)
            if not _finite_step(loss, loss_known, gnorm):
                self._nonfinite(None, loss, loss_known, gnorm, rec.step)
        self.jury.observe(loss, gnorm, self.recorder.batch)
        self.sinks.emit("record", rec, self.units, self.recorder.slow)
        if self.jury.due(self.recorder.records):
            self._judge()

    def _judge(self, final: bool = False, codes: Sequence[str] | None = None, step: int | None = None) -> None:
        if self.recorder.window is None:
            return
        self.jury.judge(self.meter.entries, self.recorder.sizes, steps=self.steps, records=self.recorder.records,
                        final=final, codes=codes, step=step)

    def _measure_curvature(self, state: StepState) -> None:
        entry = self.meter.measure(state)
        if self.meter.failed:
            self._failed(self.meter.failed)
        if entry is None:
            return
        self.sinks.emit("curvature", entry)
        self._judge(codes=("sharpness_above_stability",), step=state.step)

    def _nonfinite(self, state: StepState | None, loss: float, loss_known: bool, gnorm: float,
                   step: int | None = None) -> None:
        """NaN/Inf at ``state``'s step (or ``step``, for a record): locate it (the first activation, the first
        gradient in backward order, the first parameter) and report it once."""
        step = state.step if state is not None else int(step)
        where = None
        if state is not None:
            where = self._first_nonfinite_activation(state)
            if where is None and state.grad_sq_norms is not None:
                where = self._nonfinite_from_norms(state)
            if where is None:
                where = first_nonfinite(state.grads, self.units, backward=True) \
                    or first_nonfinite(state.params, self.units)
        else:
            where = self._nonfinite_from_norms(None)
        what = [name for name, ok in (("loss", math.isfinite(loss) or not loss_known),
                                      ("gradients", math.isfinite(gnorm))) if not ok] or ["activations"]
        message = (f"NaN/Inf appeared at step {step} in the {' and '.join(what)}"
                   + (f", first in {where}" if where else "") + ": training cannot continue from here.")
        evidence = {"step": step, "loss": loss, "grad_norm": gnorm, "first_layer": where,
                    "last_finite_loss": self._last_finite_loss()}
        self.jury.nonfinite(step, message, evidence, where)

    def _nonfinite_from_norms(self, state: StepState | None) -> str | None:
        """The first unit in backward order whose gradient norm the loop (or the last record) saw non-finite:
        the reading before any clipping the loop does."""
        if state is not None:
            sq = state.grad_sq_norms
            values = np.asarray(sq if isinstance(sq, np.ndarray) else np.array([float(v) for v in sq]))
            finite = dict(zip(state.grads, np.isfinite(values)))
        else:
            finite = dict(zip(self.recorder.grad_keys, np.isfinite(self.recorder.last_tensor_norms)))
        return next((u.name for u in reversed(self.units) if not all(finite.get(k, True) for k in u.params)), None)

    def _first_nonfinite_activation(self, state: StepState) -> str | None:
        """The first unit, input to output, whose layer output (or activation) holds NaN or Inf."""
        if state.activations is None:
            return None
        for u in self.units:
            for layer in (u.name, u.activation_layer):
                y = state.activations.get(layer) if layer else None
                if y is not None and not all_finite(y):
                    return u.name
        return None

    def _last_finite_loss(self) -> float | None:
        window = self.recorder.window
        if window is None or not len(window):
            return None
        losses = window.scalar("loss")
        ok = losses[np.isfinite(losses)]
        return float(ok[-1]) if ok.size else None

    # -- sinks and notes -----------------------------------------------------------------------------------
    def _opened(self, finding: Finding) -> None:
        self.sinks.emit("finding", finding)

    def _failed(self, message: str) -> None:
        """Report once, on the console (even when quiet) and in the report's ``sink_errors``, that an output or
        the curvature measurement failed."""
        line = f"[gradmon] {message}"
        if line not in self.sink_errors:
            self.sink_errors.append(line)
            self.console.failure(line)

    def add_note(self, text: str, console: bool = False) -> None:
        """A sentence for the report's ``extra["notes"]``: what this run did not measure and how to turn it
        on (e.g. curvature without a probe in the PyTorch adapter); ``console`` prints it once too."""
        if text not in self.notes:
            self.notes.append(str(text))
            if console:
                self.console.note(text)

    # -- results ---------------------------------------------------------------------------------------------
    def judge_now(self) -> None:
        """Run the detectors on what has been recorded so far, as at the end of a run."""
        if self.recorder.pending is not None:
            self._commit(None)
        self._judge(final=True)

    def adopt_merged(self, history: History, report: Mapping[str, Any] | None = None) -> None:
        """Replace this monitor's results by those merged over the ranks of a data-parallel run (rank 0;
        :func:`gradmon.adapters.distributed.merge_ranks`): the rank-averaged ``history`` and, once the report
        of that history is known, the report dict holding every rank's findings."""
        self.recorder.history = history
        self._merged = dict(report) if report is not None else None

    def report(self) -> HealthReport:
        """The health report so far (final after training ends)."""
        if self._merged is not None:
            merged = HealthReport.from_dict({**self._merged, "ended": self.ended})
            self.jury.diagnose(merged.findings)
            return merged
        if self.run is None:
            return HealthReport(spec={}, steps=0, findings=[], ended=self.ended)
        findings = self.jury.diagnose()  # with their advice, linked by cause
        history = self.recorder.history
        layers, loss = [], []
        if history is not None:
            summaries = {q: history.summary(q) for q in ("grad_norm", "update_ratio", "saturation", "dead_fraction",
                                                          "act_std")}
            lrs = self.recorder.unit_lrs
            for u in self.units:
                entry = {"name": u.name, "activation": u.activation}
                entry.update({q: summaries[q][u.index] for q in summaries})
                if self.run.framework != "core":  # other loops' units come in many kinds (conv2d, lstm...)
                    entry["kind"] = u.kind
                if lrs is not None:
                    entry["lr"] = float(lrs[u.index])
                if u.aliases:
                    entry["aliases"] = list(u.aliases)
                if u.note:
                    entry["no_activation_statistics"] = u.note
                layers.append(entry)
            loss = [{"step": int(s), "train": float(v)} for s, v in zip(history.steps, history.scalar("loss"))]
        spec = dict(self.run.spec) if self.run.spec else spec_from_run(self.run)
        train = spec.get("train")
        if isinstance(train, dict):  # placeholders of a loop that did not know them at the start
            train = spec["train"] = dict(train)
            if train.get("loss") in (None, "", "unknown") and "loss" in self.facts:
                train["loss"] = self.facts["loss"]
            if not train.get("batch_size"):
                train["batch_size"] = self.facts.get("batch_size") or self.recorder.batch or train.get("batch_size")
        extra: dict[str, Any] = {"sink_errors": list(self.sink_errors)} if self.sink_errors else {}
        if self.notes:
            extra["notes"] = list(self.notes)
        if self.run.frozen:
            extra["frozen"] = list(self.run.frozen)
        if self.metrics:
            extra["metrics"] = list(self.metrics)
        return HealthReport(spec=spec, steps=self.steps, findings=findings, layers=layers,
                            curvature=list(self.meter.entries), loss=loss, ended=self.ended, extra=extra)

    def save(self, logdir: str | os.PathLike | None = None, formats: Sequence[str] = ("json", "html"),
             report: HealthReport | None = None) -> list[Path]:
        """Write ``history.npz`` and ``report.<fmt>`` into ``logdir`` (the monitor's by default); returns the
        files written.  A file that cannot be written (disk full, a renderer failing on odd input) is reported
        on the console and in the report's ``sink_errors``, and the others are still written (report.json
        last, so that it lists them).  ``report``: the report to write (built now when not given)."""
        target = Path(logdir) if logdir is not None else self.logdir
        if target is None:
            raise ValueError("no logdir: pass Monitor(logdir=...) or save(logdir)")
        return write_run_files(target, report if report is not None else self.report(), self.recorder.history,
                               formats, self.sink_errors, self._failed)

    def close(self) -> None:
        """Write the report files and close the sinks (idempotent; failures are reported, not raised)."""
        if self._closed:
            return
        self._closed = True
        report = self.report()
        written: list[Path] = []
        try:
            written = self.save(report=report) if self.logdir is not None else []
        finally:  # a Ctrl-C during the slow HTML report (report.json is written by then) still closes the sinks
            self.sinks.emit("close", report, self.recorder.history, written)


def _finite_step(loss: float, loss_known: bool, gnorm: float) -> bool:
    """Whether a step's loss (when known) and global gradient norm are finite."""
    return (math.isfinite(loss) or not loss_known) and math.isfinite(gnorm)
