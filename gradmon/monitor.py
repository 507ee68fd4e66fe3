"""The monitor: a core callback that measures, judges and reports training health.

Data flows one way: events from the training loop → quantities (:mod:`gradmon.quantities`) → bounded
history (:mod:`gradmon.history`) → detectors (:mod:`gradmon.detectors`) → advice (:mod:`gradmon.advice`)
→ sinks (TensorBoard, console, report files).  The monitor never changes training: it reads read-only
payloads and copies what it keeps.

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
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core.callbacks import Callback, RunInfo, StepState
from gradmon.advice import Context as AdviceContext
from gradmon.advice import advise
from gradmon.detectors import Detector, FindingTracker, JudgeContext, Observation, default_detectors
from gradmon.detectors.base import block_medians, latest_lr, median
from gradmon.findings import Finding, HealthReport
from gradmon.history import History, Record, Window
from gradmon.layout import Unit, units_from_run
from gradmon.quantities import activations as actq
from gradmon.quantities import gradients as gradq
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.sinks.console import ConsoleSink
from gradmon.thresholds import Thresholds

#: tags of the per-layer quantities written to TensorBoard
TB_QUANTITIES = ("log10_grad_norm", "grad_norm", "update_ratio", "saturation", "dead_fraction", "weight_norm")
MAX_CURVATURE_RECORDS = 512


def spec_from_run(run: RunInfo) -> dict[str, Any]:
    """A spec-like description of a run that did not come from a spec (Python API, other loops)."""
    return {
        "model": {"layers": [{"name": l.name, "kind": l.kind} for l in run.layers]},
        "train": {"loss": run.loss, "optimizer": run.optimizer, **{k: v for k, v in run.hyperparams.items()},
                  "batch_size": run.batch_size, "epochs": run.epochs,
                  "clip_norm": run.clip_norm or 0, "l2": run.l2},
        "framework": run.framework,
    }


class Monitor(Callback):
    """Watches a training run through the hook protocol.

    Parameters
    ----------
    logdir: where TensorBoard events, ``report.json``, ``report.html`` and ``history.npz`` go (None: keep
        everything in memory).
    every: steps between the cheap per-layer statistics (gradient/weight norms, update ratios, activation
        saturation and dead units).
    curvature_every: steps between curvature estimates (top Hessian eigenvalue by Lanczos, trace by
        Hutchinson) on a probe set of ``curvature_samples`` training examples; 0 turns curvature off.
    tensorboard_every: records between TensorBoard scalar writes (the history keeps every record); records
        that measure the slow quantities (see ``weight_every``) are written too, so update ratios reach
        TensorBoard whatever the two cadences.
    histogram_every: steps between gradient/activation histograms (default: ~20 per run).
    judge_every: records between detector judgments (default: 50, fewer for short runs).
    weight_every: records between weight norms, update-to-weight ratios and activation moments (weights
        move slowly; this keeps the every-step cost to gradient norms and activation health).
    console: print findings as they open.
    stop_on_nonfinite: ask the loop to stop, before the update, when NaN/Inf appears (False keeps going).
    detectors: names of detectors to run (all by default).
    thresholds: every number the judging uses (:class:`gradmon.thresholds.Thresholds`, or a mapping of
        overrides like ``{"vanishing_gradients": {"min_drop": 3.0}}``); ``open_after``/``close_after``
        override its ``judging`` ones.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, *, every: int = 1, curvature_every: int = 50,
                 curvature_samples: int = 1024, tensorboard: bool = True, tensorboard_every: int = 10,
                 histogram_every: int | None = None, judge_every: int | None = None, window: int = 200,
                 capacity: int = 2048, console: bool = True, detectors: Sequence[str] | None = None,
                 curvature_rtol: float = 1e-3, curvature_max_iter: int = 40, trace_samples: int = 4,
                 seed: int = 0, open_after: int | None = None, close_after: int | None = None, weight_every: int = 10,
                 stop_on_nonfinite: bool = True, thresholds: Thresholds | Mapping[str, Any] | None = None) -> None:
        self.thresholds = Thresholds.coerce(thresholds)  # a bad table, field or value: ValueError naming it
        open_after = self.thresholds.judging.open_after if open_after is None else open_after
        close_after = self.thresholds.judging.close_after if close_after is None else close_after
        for name, value, low in (("every", every, 1), ("curvature_every", curvature_every, 0),
                                 ("curvature_samples", curvature_samples, 1),
                                 ("tensorboard_every", tensorboard_every, 1), ("window", window, 20),
                                 ("trace_samples", trace_samples, 0), ("capacity", capacity, 4),
                                 ("weight_every", weight_every, 1), ("open_after", open_after, 1),
                                 ("close_after", close_after, 1), ("curvature_max_iter", curvature_max_iter, 2)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"Monitor {name} must be an integer >= {low}, got {value!r}")
        for name, value in (("histogram_every", histogram_every), ("judge_every", judge_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ValueError(f"Monitor {name} must be None or an integer >= 1, got {value!r}")
        if capacity % 2:
            raise ValueError(f"Monitor capacity must be even (the history halves itself when full), got {capacity}")
        if not (isinstance(curvature_rtol, (int, float)) and 0 < curvature_rtol < 1):
            raise ValueError(f"Monitor curvature_rtol must be a number in (0, 1), got {curvature_rtol!r}")
        self.logdir = Path(logdir) if logdir is not None else None
        self.every = int(every)
        self.curvature_every = int(curvature_every)
        self.curvature_samples = int(curvature_samples)
        self.tensorboard_every = int(tensorboard_every)
        self.histogram_every = histogram_every
        self.judge_every = judge_every
        self.window_size = int(window)
        self.capacity = int(capacity)
        self.curvature_rtol = float(curvature_rtol)
        self.curvature_max_iter = int(curvature_max_iter)
        self.trace_samples = int(trace_samples)
        self.seed = seed
        self.stop_on_nonfinite = stop_on_nonfinite
        self._measure: Schedule = every_schedule(self.every)
        self._curv_schedule: Schedule = every_schedule(self.curvature_every)
        self.weight_every = int(weight_every)
        self.detectors: list[Detector] = default_detectors(list(detectors) if detectors is not None else None,
                                                             self.thresholds)
        self.console = ConsoleSink(enabled=console)
        self.open_after, self.close_after = open_after, close_after
        self.use_tensorboard = tensorboard and self.logdir is not None
        self._reset()

    def _reset(self) -> None:
        """Per-run state (a monitor reused for a second ``fit`` starts afresh)."""
        self.tracker = FindingTracker(open_after=self.open_after, close_after=self.close_after,
                                      on_open=self._opened, short_run=self.thresholds.judging.short_run)
        self.tb: Any = None
        self.sink_errors: list[str] = []
        self.notes: list[str] = []   # what was not measured and why (report.extra["notes"]), see add_note
        self.run: RunInfo | None = None
        self.units: list[Unit] = []
        self.history: History | None = None
        self.window: Window | None = None
        self.curvature: list[dict[str, Any]] = []
        self.steps = 0
        self.ended = "running"
        self._pending: Record | None = None
        self._slow = False
        self._records = 0
        self._first_losses: list[float] = []
        self._first_norms: list[float] = []
        self._best_loss = math.inf
        self._batch = 0              # examples per step, from the first measured step
        self._judged_at = 0          # records at the last full judgment
        self._dead: dict[str, actq.DeadUnitTracker] = {}
        self._sizes = np.zeros(0)
        self._probe = None
        self._judge_every = 1
        self._hist_schedule: Schedule = every_schedule(0)
        self._last_weight_norms: np.ndarray | None = None
        self._nonfinite_step: int | None = None
        self._advice_ctx: AdviceContext | None = None
        self._closed = False
        self.merged: dict[str, Any] | None = None
        if self.logdir is not None:
            _check_writable(self.logdir)

    # -- hook protocol --------------------------------------------------------------------------------
    def requests(self, step: int) -> set[str]:
        wanted = set()
        if self._measure(step):
            wanted.update(("activations", "grad_norms"))
        if self._curv_schedule(step):
            wanted.add("curvature")
        return wanted

    def on_train_begin(self, run: RunInfo) -> None:
        self._reset()
        self.run = run
        self.units = units_from_run(run)
        names = [u.name for u in self.units]
        self.history = History(names, capacity=self.capacity)
        self.window = Window(names, size=self.window_size)
        self._record = Record(len(names))
        self._unit_params = [u.params for u in self.units]
        self._dead = {u.name: actq.DeadUnitTracker(self.thresholds.judging.dead_unit_examples)
                      for u in self.units if u.activation == "relu"}
        self._advice_ctx = AdviceContext.from_run(run, self.units)
        total = max(1, run.total_steps)
        # unknown length (other loops): adaptive, see _due_judgment
        j = self.thresholds.judging
        per_run = max(1, total // (j.judgments_per_run * self.every))
        self._judge_every = self.judge_every or (int(min(j.max_judge_every, per_run)) if run.total_steps > 0 else 0)
        hist_every = self.histogram_every if self.histogram_every is not None else (
            max(1, total // 20) if run.total_steps > 0 else 100)
        self._hist_schedule = every_schedule(int(hist_every)) if self.use_tensorboard else every_schedule(0)
        if self.use_tensorboard:
            self._start_tensorboard(names)

    def on_after_backward(self, state: StepState) -> None:
        if self.run is None:
            raise RuntimeError("Monitor.on_train_begin(run) must be called before the first step")
        if self._pending is not None:  # a loop that does not send on_step_end
            self._commit(None)
        step = state.step
        loss_known = not state.extras.get("loss_missing", False)
        loss = float(state.loss) if loss_known else math.nan
        measure = self._measure(step)
        # one errstate for the whole step: norms of exploding values overflow to inf, which is reported
        with np.errstate(over="ignore", invalid="ignore"):
            sq = state.extras.get("grad_sq_norms")  # from the loop, computed while the gradients were hot
            if sq is None:
                sq = {k: gradq.sq_norm(g) for k, g in state.grads.items()}
            gnorm = state.extras.get("grad_norm")
            if gnorm is None:
                gnorm = math.sqrt(sum(sq.values()))
            if not ((math.isfinite(loss) or not loss_known) and math.isfinite(gnorm)):
                self._nonfinite(state, loss, gnorm)
            if measure:
                self._measure_step(state, step, loss, gnorm, sq)
        if self._curv_schedule(step) and (math.isfinite(loss) or not loss_known):
            self._measure_curvature(state)
        if self._hist_schedule(step):
            self._histograms(state)

    def _measure_step(self, state: StepState, step: int, loss: float, gnorm: float,
                      sq: Mapping[str, float]) -> None:
        """The cheap per-layer statistics of one step, into a pending record (committed at step end)."""
        rec = self._record.reset(step)
        rec.set_scalar("loss", loss)
        rec.set_scalar("grad_norm", gnorm)
        rec.set_scalar("lr", float(state.lr))
        rec.set_layer("grad_norm", [math.sqrt(sum(sq[k] for k in keys)) for keys in self._unit_params])
        # weights move slowly: their norms, the update ratios and activation moments every few records
        self._slow = self._records % self.weight_every == 0
        if self._slow or self._last_weight_norms is None:
            self._last_weight_norms = gradq.layer_norms(state.params, self.units, weights_only=True)
            rec.set_layer("weight_norm", self._last_weight_norms)
            rec.set_layer("bias_mean", gradq.bias_means(state.params, self.units))
        if state.activations is not None and not self._activation_stats(state, rec, with_moments=self._slow):
            self._nonfinite(state, loss, gnorm)  # NaN/Inf that saturating units hide from the loss
        if not self._sizes.size:
            self._sizes = np.array([state.params[u.weight].size for u in self.units], dtype=float)
        if not self._batch:
            self._batch = int(state.batch_size or self.run.batch_size or 1)
        self._pending = rec
        self._keep_first_loss(loss)
        if len(self._first_norms) < self.thresholds.judging.initial_grad_norms and math.isfinite(gnorm):
            self._first_norms.append(gnorm)

    def _keep_first_loss(self, loss: float) -> None:
        if len(self._first_losses) < self._initial_records() and math.isfinite(loss):
            self._first_losses.append(loss)

    def _initial_records(self) -> int:
        """Records whose losses make the initial loss: at least 32 examples (the first record from
        mini-batches of 32 or more)."""
        return math.ceil(self.thresholds.judging.initial_examples / max(1, self._batch))

    def _smoothing(self) -> int:
        """Records a loss level is smoothed over: about 256 examples, at least 5 records, at most a quarter
        of the window (single-example losses are noise; full-batch losses are not)."""
        j = self.thresholds.judging
        return int(min(max(j.min_smoothing_records, math.ceil(j.smoothing_examples / max(1, self._batch))),
                       max(j.min_smoothing_records, int(self.window_size * j.max_smoothing_fraction))))

    def log_loss(self, value: float) -> None:
        """The loss of the step measured last, for loops that learn it only after ``on_after_backward``
        (call before ``on_step_end``)."""
        value = float(value)
        if self._pending is not None:
            self._pending.set_scalar("loss", value)
            self._keep_first_loss(value)
            last = self.curvature[-1] if self.curvature else None
            if last is not None and last["step"] == self._pending.step and math.isnan(last["loss"]):
                last["loss"] = value  # measured before the loop knew this step's loss
        if not math.isfinite(value) and self._nonfinite_step is None:
            self._nonfinite_step = self.steps
            obs = Observation("nonfinite_values", None, "error",
                              f"The loss became {value} at step {self.steps}: training cannot continue from here.",
                              {"step": self.steps, "loss": value, "last_finite_loss": self._last_finite_loss()},
                              open_after=1)
            self.tracker.update(self.steps, [obs], ["nonfinite_values"], full=False)

    def will_record_update(self, step: int) -> bool:
        """Whether the record of ``step`` will hold update ratios (loops that must copy weights to
        compute updates, like the PyTorch adapter, ask first)."""
        return self._measure(step) and self._records % self.weight_every == 0

    def on_step_end(self, state: StepState) -> None:
        self.steps = state.step + 1
        if self._pending is not None:
            self._commit(state)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if self.tb is not None:
            values = {}
            for key, tag in (("loss", "loss/train_epoch"), ("val_loss", "loss/val"), ("accuracy", "accuracy/train"),
                             ("val_accuracy", "accuracy/val")):
                if key in logs:
                    values[tag] = float(logs[key])
            self._tb("scalars", self.steps, values)

    def on_train_end(self, logs: Mapping[str, Any]) -> None:
        if self._pending is not None:
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
        if self._pending is not None:
            self._commit(None)
        if state is not None:
            self.steps = max(self.steps, state.step + 1)
        self.ended = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"exception: {type(exc).__name__}: {exc}"
        try:
            self._judge(final=True)
        finally:
            self.close()

    # -- measuring --------------------------------------------------------------------------------------
    def _activation_stats(self, state: StepState, rec: Record, with_moments: bool) -> bool:
        """Saturation, dead fractions (and moments) into ``rec``; False when the input of a sigmoid or tanh
        layer holds NaN or Inf (tanh(inf) = 1: the loss and gradients would never show it)."""
        finite = True
        sat, dead = rec.layer("saturation"), rec.layer("dead_fraction")
        mean, std = rec.layer("act_mean"), rec.layer("act_std")
        activations, masks = state.activations, state.masks or {}
        for u in self.units:
            y = activations.get(u.activation_layer) if u.activation_layer else None
            if y is None:
                continue
            if u.activation in ("sigmoid", "tanh"):
                sat[u.index] = actq.saturation_fraction(y, u.activation)
                # an infinite input gives an output at the asymptote: only saturated layers can hide one
                # (a NaN input shows in the output, the loss and the gradients anyway)
                pre = (state.preactivations or {}).get(u.activation_layer) if sat[u.index] > 0 else None
                finite = finite and (pre is None or gradq.all_finite(pre))
            tracker = self._dead.get(u.name)
            if tracker is not None:
                frac = tracker.add(masks.get(u.activation_layer, y))
                if frac is not None:
                    dead[u.index] = frac
            if with_moments:
                mean[u.index], std[u.index] = actq.moments(y)
        return finite

    def _commit(self, state: StepState | None) -> None:
        rec, self._pending = self._pending, None
        if state is not None and state.update is not None and self._slow:
            with np.errstate(over="ignore", invalid="ignore"):
                rec.set_layer("update_ratio", gradq.update_ratios(state.update, self._last_weight_norms, self.units))
        rec.set_scalar("clip_coef", float(state.clip_coef) if state is not None else 1.0)
        self.history.append_record(rec)
        self.window.append_record(rec)
        self._records += 1
        self.steps = max(self.steps, rec.step + 1)
        # every tensorboard_every records, and whenever the slow quantities (update ratios...) were measured
        if self.tb is not None and (self._slow or self._records % self.tensorboard_every == 1 % self.tensorboard_every):
            self._write_scalars(rec)
        if self._due_judgment():
            self._judge()

    def _due_judgment(self) -> bool:
        """Every ``judge_every`` records; for loops of unknown length, every fifth of the records so far
        (at least 10, at most 50), so short runs are judged often enough and long ones cheaply."""
        j = self.thresholds.judging
        every = self._judge_every or max(j.min_adaptive_judge_every,
                                         min(j.max_judge_every, int(self._records * j.adaptive_judge_fraction)))
        return self._records % every == 0

    def _measure_curvature(self, state: StepState) -> None:
        """One curvature estimate on the probe set (or this batch), judged against the stability bound.

        HVPs are exact when the loop's objective has ``hvp``; otherwise they are central differences of its
        ``grad`` with a checked step (two gradient evaluations each).  A failure here is reported once and
        turns curvature off: it never stops training."""
        from gradmon.quantities.curvature import estimate_curvature, fd_hvp, flat_hvp, stability_threshold

        run = self.run
        objective = None
        try:
            if run.probe is not None:
                if self._probe is None:
                    self._probe = run.probe(self.curvature_samples, self.seed)
                objective = self._probe
            elif state.objective is not None:
                objective = state.objective
            if objective is None:
                return
            params = {k: np.array(v, dtype=np.float64) for k, v in state.params.items()}
            if hasattr(objective, "hvp"):
                hvp = flat_hvp(lambda v: objective.hvp(v, params), params)
                method = "exact"
            else:
                kinks = getattr(objective, "kinks", None)
                hvp = flat_hvp(lambda v: fd_hvp(objective.grad, params, v, kink_fn=kinks)[0], params)
                method = "finite differences"
            dim = sum(v.size for v in params.values())
            t0 = time.perf_counter()
            est = estimate_curvature(hvp, dim, step=state.step, rtol=self.curvature_rtol,
                                     max_iter=self.curvature_max_iter, trace_samples=self.trace_samples,
                                     seed=self.seed + state.step)
            entry = est.to_dict()
            entry["seconds"] = time.perf_counter() - t0
            entry["hvp"] = method
            entry["lr"] = float(state.lr)
            entry["loss"] = float(state.loss)
            if run.optimizer in ("sgd", "momentum") and state.lr > 0:
                entry["threshold"] = stability_threshold(float(state.lr),
                                                         float(run.hyperparams.get("momentum", 0.0)),
                                                         bool(run.hyperparams.get("nesterov", False)))
        except Exception as exc:  # curvature is a measurement: it must never be why training stops
            self.curvature_every = 0
            self._curv_schedule = every_schedule(0)
            self._failed(f"the curvature measurement failed and is off for the rest of the run: "
                         f"{type(exc).__name__}: {exc}")
            return
        self.curvature.append(entry)
        if len(self.curvature) > MAX_CURVATURE_RECORDS:
            self.curvature = self.curvature[::2]
        if self.tb is not None:
            values = {"curvature/lambda_max": entry.get("lambda_max"), "curvature/trace": entry.get("trace"),
                      "curvature/hvps": entry.get("hvps")}
            if "threshold" in entry:
                values["curvature/stability_threshold"] = entry["threshold"]
            self._tb("scalars", state.step, {k: float(v) for k, v in values.items() if v is not None})
        self._judge(codes=("sharpness_above_stability",), step=state.step)

    def should_stop(self) -> str | None:
        """Stop before a non-finite update is applied (unless ``stop_on_nonfinite=False``)."""
        if self.stop_on_nonfinite and self._nonfinite_step is not None:
            return f"non-finite values at step {self._nonfinite_step}"
        return None

    def _nonfinite(self, state: StepState, loss: float, gnorm: float) -> None:
        if self._nonfinite_step is not None:  # reported once, where it first appeared
            return
        self._nonfinite_step = state.step
        where = self._first_nonfinite_activation(state)
        sq = state.extras.get("grad_sq_norms")
        if where is None and sq is not None:  # the loop's own reading, before any clipping it does
            where = next((u.name for u in reversed(self.units)
                          if not all(math.isfinite(sq[k]) for k in u.params)), None)
        if where is None:
            where = gradq.first_nonfinite(state.grads, self.units, backward=True) \
                or gradq.first_nonfinite(state.params, self.units)
        what = [name for name, ok in (("loss", math.isfinite(loss)), ("gradients", math.isfinite(gnorm))) if not ok] \
            or ["activations"]
        message = (f"NaN/Inf appeared at step {state.step} in the {' and '.join(what)}"
                   + (f", first in {where}" if where else "") + ": training cannot continue from here.")
        evidence = {"step": state.step, "loss": loss, "grad_norm": gnorm, "first_layer": where,
                    "last_finite_loss": self._last_finite_loss()}
        clip = self._typical_grad_norm()
        if math.isfinite(clip):
            evidence["suggested_clip_norm"] = float(f"{clip:.2g}")
        obs = Observation("nonfinite_values", where, "error", message, evidence, open_after=1)
        self.tracker.update(state.step, [obs], ["nonfinite_values"], full=False)

    def _first_nonfinite_activation(self, state: StepState) -> str | None:
        """The first unit, input to output, whose layer output (or activation) holds NaN or Inf."""
        if state.activations is None:
            return None
        for u in self.units:
            for layer in (u.name, u.activation_layer):
                y = state.activations.get(layer) if layer else None
                if y is not None and not gradq.all_finite(y):
                    return u.name
        return None

    def _last_finite_loss(self) -> float | None:
        if self.window is None or not len(self.window):
            return None
        losses = self.window.scalar("loss")
        ok = losses[np.isfinite(losses)]
        return float(ok[-1]) if ok.size else None

    # -- judging ----------------------------------------------------------------------------------------
    def _initial_grad_norm(self) -> float:
        """The global gradient norm at the start; the first one bounds it, so a run that blows up within its
        first steps does not set its own baseline."""
        if not self._first_norms:
            return math.nan
        return min(median(self._first_norms), self._first_norms[0])

    def _typical_grad_norm(self) -> float:
        """A gradient norm typical of the calm part of the run, where clipping should start: the norm at the
        start, unless it is orders of magnitude below the median of the calmer half of the window (a tiny
        initialisation), in which case that median (NaN before any)."""
        early = self._initial_grad_norm()
        calm = math.nan
        if self.window is not None and len(self.window):
            norms = self.window.scalar("grad_norm")
            norms = np.sort(norms[np.isfinite(norms)])
            calm = median(norms[: max(1, norms.size // 2)])
        if math.isfinite(early) and early > 0 and not early < self.thresholds.judging.tiny_init_ratio * calm:
            return early
        return calm

    def _context(self) -> JudgeContext:
        window = self.window
        k = self._smoothing()
        new = max(1, self._records - self._judged_at)
        loss = window.scalar("loss", last=new + k - 1)
        ok = loss[np.isfinite(loss)]
        # the lowest loss level so far: medians of consecutive blocks of k records up to the newest one
        levels = block_medians(ok, k)
        if levels.size:
            self._best_loss = min(self._best_loss, float(levels.min()))
        first = self._first_losses[: self._initial_records()]
        initial = median(first) if first else math.nan
        sizes = self._sizes if self._sizes.size else np.ones(len(self.units))
        return JudgeContext(step=self.steps, window=window, units=self.units, run=self.run,
                            initial_loss=initial,
                            best_loss=min(self._best_loss, initial) if math.isfinite(initial) else self._best_loss,
                            initial_grad_norm=self._initial_grad_norm(), sizes=sizes, curvature=self.curvature,
                            smooth=k, new_records=new, open=self.tracker.open_severities(),
                            suggested_clip_norm=self._typical_grad_norm(),
                            median_records=self.thresholds.judging.median_records)

    def _judge(self, final: bool = False, codes: Sequence[str] | None = None, step: int | None = None) -> None:
        if self.window is None:
            return
        ctx = self._context()
        judged: list[str] = []
        for det in self.detectors:
            if codes is not None and not set(det.codes) & set(codes):
                continue
            if len(self.window) < det.min_records:
                continue
            judged.extend(det.codes)
            ctx.observations.extend(det.judge(ctx))
        if codes is None:
            self._judged_at = self._records
        at = step if step is not None else max(self.steps - 1, 0)
        self.tracker.update(at, ctx.observations, judged, final=final, full=codes is None)

    def _opened(self, finding: Finding) -> None:
        self._suggest(finding)
        self.console.finding(finding)
        if self.tb is not None:
            self._tb("alert", finding.first_step, finding.code, finding.severity, finding.layer, finding.message)

    def _suggest(self, finding: Finding) -> None:
        """Attach the advice for ``finding``, judged with the learning rate in force now (schedules)."""
        if self._advice_ctx is None:
            return
        ctx = self._advice_ctx
        if self.window is not None:
            ctx = dataclasses.replace(ctx, lr=latest_lr(self.window, ctx.lr))
        finding.suggestions = advise(finding, ctx, self.thresholds.advice)

    # -- sinks ------------------------------------------------------------------------------------------
    def _start_tensorboard(self, names: list[str]) -> None:
        try:
            from gradmon.sinks.tensorboard import TensorBoardSink

            self.tb = TensorBoardSink(self.logdir)
            self.tb.begin(names, TB_QUANTITIES)
        except ImportError as exc:
            self._tensorboard_failed(exc)

    def _tb(self, method: str, *args: Any) -> None:
        if self.tb is None:
            return
        try:
            getattr(self.tb, method)(*args)
        except Exception as exc:  # a sink must never stop training
            self._tensorboard_failed(exc)
            return
        reason = getattr(self.tb, "failed", None)
        if reason:
            self._tensorboard_failed(reason)

    def _failed(self, message: str) -> None:
        """Report once, on the console (even when quiet) and in the report's ``sink_errors``, that an output or
        the curvature measurement failed."""
        line = f"[gradmon] {message}"
        self.sink_errors.append(line)
        self.console.failure(line)

    def _tensorboard_failed(self, why: Any) -> None:
        self._failed(f"the tensorboard sink failed and is off for the rest of the run: {why}")
        self.tb = None

    def _write_scalars(self, rec: Record) -> None:
        values = {"loss/train": rec.scalar("loss"), "grad_norm/global": rec.scalar("grad_norm"),
                  "clip_coef": rec.scalar("clip_coef"), "lr": rec.scalar("lr")}
        with np.errstate(divide="ignore", invalid="ignore"):  # orders of magnitude read better on a log scale
            derived = {"log10_grad_norm": np.log10(rec.layer("grad_norm"))}
        for q in TB_QUANTITIES:
            arr = derived[q] if q in derived else rec.layer(q)
            for u in self.units:
                v = float(arr[u.index])
                if math.isfinite(v):
                    values[f"{q}/{u.name}"] = v
        self._tb("scalars", rec.step, values)

    def _histograms(self, state: StepState) -> None:
        for u in self.units:
            self._tb("histogram", state.step, f"gradients/{u.name}", np.asarray(state.grads[u.weight]).ravel())
            if state.activations is not None and u.activation_layer in state.activations:
                self._tb("histogram", state.step, f"activations/{u.name}",
                         np.asarray(state.activations[u.activation_layer]).ravel())

    # -- results ----------------------------------------------------------------------------------------
    def add_note(self, text: str) -> None:
        """A sentence for the report's ``extra["notes"]``: what this run did not measure and how to turn it
        on (e.g. curvature without a probe in the PyTorch adapter).  Call after ``on_train_begin``."""
        if text not in self.notes:
            self.notes.append(str(text))

    def judge_now(self) -> None:
        """Run the detectors on what has been recorded so far, as at the end of a run."""
        if self._pending is not None:
            self._commit(None)
        self._judge(final=True)

    def report(self) -> HealthReport:
        """The health report so far (final after training ends)."""
        if self.merged is not None:  # a data-parallel run merged over ranks (gradmon.adapters.distributed)
            merged = HealthReport.from_dict({**self.merged, "ended": self.ended})
            for f in merged.findings:
                self._suggest(f)
            return merged
        if self.run is None:
            return HealthReport(spec={}, steps=0, findings=[], ended=self.ended)
        findings = sorted(self.tracker.findings, key=lambda f: (f.first_step, f.code))
        for f in findings:
            self._suggest(f)
        layers = []
        if self.history is not None:
            summaries = {q: self.history.summary(q) for q in ("grad_norm", "update_ratio", "saturation",
                                                              "dead_fraction")}
            for u in self.units:
                entry = {"name": u.name, "activation": u.activation}
                entry.update({q: summaries[q][u.index] for q in summaries})
                layers.append(entry)
        loss = []
        if self.history is not None:
            for s, v in zip(self.history.steps, self.history.scalar("loss")):
                loss.append({"step": int(s), "train": float(v)})
        spec = dict(self.run.spec) if self.run.spec else spec_from_run(self.run)
        extra = {"sink_errors": list(self.sink_errors)} if self.sink_errors else {}
        if self.notes:
            extra["notes"] = list(self.notes)
        return HealthReport(spec=spec, steps=self.steps, findings=findings, layers=layers,
                            curvature=list(self.curvature), loss=loss, ended=self.ended, extra=extra)

    def save(self, logdir: str | os.PathLike | None = None, formats: Sequence[str] = ("json", "html"),
             report: HealthReport | None = None) -> list[Path]:
        """Write ``history.npz`` and ``report.<fmt>`` into ``logdir`` (the monitor's by default); returns the
        files written.  A file that cannot be written (disk full, a renderer failing on odd input) is reported
        on the console and in the report's ``sink_errors``, and the others are still written (report.json
        last, so that it lists them).  ``report``: the report to write (built now when not given)."""
        target = Path(logdir) if logdir is not None else self.logdir
        if target is None:
            raise ValueError("no logdir: pass Monitor(logdir=...) or save(logdir)")
        report = report if report is not None else self.report()
        written: list[Path] = []

        def attempt(name: str, write: Any) -> None:
            try:
                written.append(write())
            except Exception as exc:  # one output failing must not cost the others
                self._failed(f"could not write {name}: {type(exc).__name__}: {exc}")

        if self.history is not None:
            attempt("history.npz", lambda: self.history.save(target / "history.npz"))
        for fmt in formats:
            if fmt != "json":
                attempt(f"report.{fmt}", lambda: report.save(target / f"report.{fmt}", history=self.history))
        if "json" in formats:
            if self.sink_errors:
                report.extra["sink_errors"] = list(self.sink_errors)
            attempt("report.json", lambda: report.save(target / "report.json"))
        return written

    def close(self) -> None:
        """Write the report files and close TensorBoard (idempotent; failures are reported, not raised)."""
        if self._closed:
            return
        self._closed = True
        report = self.report()
        where = None
        if self.logdir is not None and any(p.name == "report.html" for p in self.save(report=report)):
            where = str(self.logdir / "report.html")
        if self.tb is not None:
            from gradmon.report.markdown import render_markdown

            try:
                self._tb("text", self.steps, "report", render_markdown(report))
            except Exception as exc:
                self._failed(f"could not write the report text to TensorBoard: {type(exc).__name__}: {exc}")
            metrics = {"gradmon/findings": float(len(report.findings)),
                       "gradmon/errors": float(sum(f.severity == "error" for f in report.findings))}
            if report.loss:
                metrics["gradmon/final_loss"] = float(report.loss[-1]["train"])
            self._tb("hparams", _hparams(report.spec), metrics)
            self._tb("close")
        self.console.summary(report, where)


def _hparams(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Flat scalar hyperparameters of a spec for TensorBoard's HPARAMS plugin."""
    out: dict[str, Any] = {}
    for section in ("model", "train", "data"):
        for key, value in dict(spec.get(section, {})).items():
            if isinstance(value, (bool, int, float, str)):
                out[f"{section}.{key}"] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                out[f"{section}.{key}"] = str(list(value))
    return out


def _check_writable(logdir: Path) -> None:
    """A clear error before training when ``logdir`` cannot be created or written."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / ".gradmon-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to logdir {str(logdir)!r} ({exc.strerror or exc}); "
                      f"choose another --logdir") from None
