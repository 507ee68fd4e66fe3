"""The jury: judging the recorded window into findings, with their fixes and their root cause.

It keeps what judging needs to know about the run beyond the window (the initial loss, the lowest and the
highest loss level so far, the early gradient norm, the per-layer profile of the first records, the scale of
the inputs), builds a :class:`~gradmon.detectors.JudgeContext`, runs the detectors in registry order, feeds
their observations to a :class:`~gradmon.detectors.FindingTracker` (hysteresis), attaches advice to the
findings and links them by cause (:func:`gradmon.causes.link`: one root, its consequences, one first fix).
Non-finite values are judged at the step they appear (no window): :meth:`Jury.nonfinite`.

The initial loss is the median of the first records' losses (at least ``initial_examples`` examples), cut
at the first record that jumps ``initial_jump`` times above the ones before it: a blow-up in the first steps
does not set the baseline it is judged against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from core.callbacks import RunInfo
from gradmon.advice import Context as AdviceContext
from gradmon.advice import advise
from gradmon.causes import link
from gradmon.detectors import Detector, FindingTracker, JudgeContext, Observation
from gradmon.detectors.base import block_medians, column_medians, latest_lr, median
from gradmon.history import LAYER_QUANTITIES
from gradmon.quantities.inputs import InputScale
from gradmon.findings import Finding
from gradmon.history import Window
from gradmon.layout import Unit
from gradmon.thresholds import Thresholds
from gradmon.vocabulary import sig


class Jury:
    """Judges a run's window into findings.

    ``detectors`` run in the order given (a detector that defers to a finding another explains runs after
    it); ``thresholds`` holds the judging numbers (:class:`gradmon.thresholds.JudgingThresholds`) and the
    advice's; ``judge_every`` records between full judgments (None: about twenty per run, at most every 50
    records; adaptive for loops of unknown length); ``on_open(finding)`` is called once per finding, with
    its suggestions attached, when it opens.
    """

    def __init__(self, detectors: Sequence[Detector], thresholds: Thresholds, *, judge_every: int | None = None,
                 on_open: Callable[[Finding], None] | None = None) -> None:
        self.detectors = list(detectors)
        self.thresholds = thresholds
        self.t = thresholds.judging
        self.judge_every = judge_every
        self.on_open = on_open
        self.run: RunInfo | None = None
        self.units: list[Unit] = []
        self.window: Window | None = None
        self.inputs: InputScale | None = None
        self.tracker = self._tracker()
        self._advice: AdviceContext | None = None
        self._reset_run_state()

    def _tracker(self) -> FindingTracker:
        return FindingTracker(open_after=self.t.open_after, close_after=self.t.close_after, on_open=self._opened,
                              short_run=self.t.short_run)

    def _reset_run_state(self) -> None:
        self._first_losses: list[float] = []
        self._first_norms: list[float] = []
        self._started = False      # the start of the run is known (first losses and gradient norms kept)
        self._best_loss = math.inf
        self._peak = (math.nan, -1)  # the highest loss level so far and its step
        self._low_since_peak = math.nan
        self._early: dict[str, np.ndarray] = {}
        self._initial_cache: tuple[Any, float] = (None, math.nan)  # (first losses, batch) -> initial loss
        self._batch = 0
        self._window_size = 200
        self._judged_at = 0         # records at the last full judgment
        self.cadence = 1           # records between full judgments (0: adaptive, for loops of unknown length)
        self.nonfinite_step: int | None = None

    def begin(self, run: RunInfo, units: Sequence[Unit], window: Window, *, measure_every: int,
              inputs: InputScale | None = None) -> None:
        """Start judging a run over the recorder's ``window`` (state from an earlier run is dropped);
        ``inputs`` is the recorder's measurement of the first layer's input scale (None: not measured)."""
        self.run, self.units, self.window, self.inputs = run, list(units), window, inputs
        self.tracker = self._tracker()
        self._reset_run_state()
        self._window_size = window.size
        self._advice = AdviceContext.from_run(run, self.units)
        total = max(1, run.total_steps)
        t = self.t
        # unknown length (other loops): 0 means adaptive, see due()
        self.cadence = self.judge_every or (int(min(t.max_judge_every, max(1, total // (t.judgments_per_run
                                                                                         * measure_every))))
                                           if run.total_steps > 0 else 0)

    # -- what the window does not hold ---------------------------------------------------------------------
    def observe(self, loss: float, grad_norm: float, batch: int) -> None:
        """A committed record's loss and global gradient norm (the start of the run is kept)."""
        if self._started:
            return
        if not self._batch and batch > 0:
            self._batch = int(batch)  # (unknown until the loop says: the initial loss waits for it)
        self.observe_loss(loss)
        if len(self._first_norms) < self.t.initial_grad_norms and math.isfinite(grad_norm):
            self._first_norms.append(grad_norm)
        self._started = len(self._first_norms) == self.t.initial_grad_norms and \
            len(self._first_losses) >= self._initial_records() and self._batch > 0

    def observe_loss(self, loss: float) -> None:
        if len(self._first_losses) < self._initial_records() and math.isfinite(loss):
            self._first_losses.append(loss)

    def initial_loss(self) -> float:
        """The loss at the start: the median of the first records' losses, up to the first one that jumps
        ``initial_jump`` times above the median of those before it (when they hold ``initial_jump_examples``
        examples): a blow-up within the first records is judged against the loss before it."""
        first = self._first_losses[: self._initial_records()]
        if not first:
            return math.nan
        key = (len(first), self._batch)  # the first losses are kept once: asked at every judgment
        if self._initial_cache[0] != key:
            self._initial_cache = (key, self._initial_loss(first))
        return self._initial_cache[1]

    def _initial_loss(self, first: list[float]) -> float:
        t = self.t
        need = math.ceil(t.initial_jump_examples / max(1, self._batch))
        for i in range(max(1, need), len(first)):
            before = median(first[:i])
            if before > 0 and first[i] > t.initial_jump * before:
                return before
        return median(first)

    def _initial_records(self) -> int:
        """Records whose losses make the initial loss: at least ``initial_examples`` examples (the first
        record from mini-batches of that size or more)."""
        return math.ceil(self.t.initial_examples / max(1, self._batch))

    def smoothing(self) -> int:
        """Records a loss level is smoothed over: about ``smoothing_examples`` examples, at least
        ``min_smoothing_records``, at most a fraction of the window (single-example losses are noise;
        full-batch losses are not)."""
        t = self.t
        return int(min(max(t.min_smoothing_records, math.ceil(t.smoothing_examples / max(1, self._batch))),
                       max(t.min_smoothing_records, int(self._window_size * t.max_smoothing_fraction))))

    def initial_grad_norm(self) -> float:
        """The global gradient norm at the start; the first one bounds it, so a run that blows up within its
        first steps does not set its own baseline."""
        if not self._first_norms:
            return math.nan
        return min(median(self._first_norms), self._first_norms[0])

    def typical_grad_norm(self) -> float:
        """A gradient norm typical of the calm part of the run, where clipping should start: the norm at the
        start, unless it is orders of magnitude below the median of the calmer half of the window (a tiny
        initialisation), in which case that median (NaN before any)."""
        early = self.initial_grad_norm()
        calm = math.nan
        if self.window is not None and len(self.window):
            norms = self.window.scalar("grad_norm")
            norms = np.sort(norms[np.isfinite(norms)])
            calm = median(norms[: max(1, norms.size // 2)])
        if math.isfinite(early) and early > 0 and not early < self.t.tiny_init_ratio * calm:
            return early
        return calm

    # -- judging -------------------------------------------------------------------------------------------
    def due(self, records: int) -> bool:
        """Every ``judge_every`` records; for loops of unknown length, every fifth of the records so far
        (within the adaptive bounds), so short runs are judged often enough and long ones cheaply."""
        t = self.t
        every = self.cadence or max(t.min_adaptive_judge_every,
                                    min(t.max_judge_every, int(records * t.adaptive_judge_fraction)))
        return records % every == 0

    def context(self, curvature: Sequence[dict], sizes: np.ndarray, steps: int, records: int) -> JudgeContext:
        """What the detectors read: the window, the run's start and best loss, ``sizes`` (parameters per unit,
        for gradient RMS per weight), the ``curvature`` measurements and the findings open so far."""
        window, k = self.window, self.smoothing()
        new = max(1, records - self._judged_at)
        loss = window.scalar("loss", last=new + k - 1)
        ok = loss[np.isfinite(loss)]
        # the lowest loss level so far: medians of consecutive blocks of k records up to the newest one
        levels = block_medians(ok, k)
        if levels.size:
            self._best_loss = min(self._best_loss, float(levels.min()))
        initial = self.initial_loss()
        self._track_peak(window, new)
        self._keep_early(window, records)
        sizes = sizes if len(sizes) else np.ones(len(self.units))
        return JudgeContext(step=steps, window=window, units=self.units, run=self.run, initial_loss=initial,
                            best_loss=min(self._best_loss, initial) if math.isfinite(initial) else self._best_loss,
                            initial_grad_norm=self.initial_grad_norm(), sizes=sizes, curvature=curvature,
                            smooth=k, new_records=new, open=self.tracker.open_severities(),
                            median_records=self.t.median_records,
                            suggested_clip_norm=self.typical_grad_norm(), early=self._early,
                            peak_loss=self._peak[0], peak_step=self._peak[1],
                            low_since_peak=self._low_since_peak, inputs=self.inputs)

    def _track_peak(self, window: Window, new: int) -> None:
        """The highest loss level so far (medians of ``peak_records`` consecutive records, and of at least
        ``initial_examples`` examples, so one noisy batch is not a blow-up) and the lowest level since it, over
        the records since the last judgment."""
        q = max(self.t.peak_records, math.ceil(self.t.initial_examples / max(1, self._batch)))
        loss = window.scalar("loss", last=new + q - 1)
        steps = window.steps[-loss.size:] if loss.size else window.steps[:0]
        ok = np.isfinite(loss)
        loss, steps = loss[ok], steps[ok]
        if loss.size < q:
            return
        # the median of each run of q records (np.median's per-row overhead, without it: sort the rows, take
        # the middle, as np.median does)
        rows = np.sort(np.lib.stride_tricks.sliding_window_view(loss, q), axis=1)
        levels = (rows[:, (q - 1) // 2] + rows[:, q // 2]) / 2
        at = steps[q - 1:]
        i = int(np.argmax(levels))
        peak, peak_step = self._peak
        if not levels[i] <= peak:  # (NaN peak: none yet)
            self._peak = (float(levels[i]), int(at[i]))
            after = levels[i:]
            self._low_since_peak = float(after.min())
        else:
            low = float(levels.min())
            self._low_since_peak = low if math.isnan(self._low_since_peak) else min(self._low_since_peak, low)

    def _keep_early(self, window: Window, records: int) -> None:
        """Once the run has ``early_records`` records (and the window still holds them all): the per-layer
        medians of the first ones (up to a loss ``initial_jump`` times its start: a blow-up among them), the
        network as it was before training changed it."""
        n = self.t.early_records
        if self._early or records < n or len(window) < records:
            return
        block = window.layers(last=records)[:n]  # (n, quantities, layers), the run's first records
        # up to a blow-up among them: the network before the step broke it
        losses = window.scalar("loss", last=records)[:n]
        start = self.initial_loss()
        if math.isfinite(start) and start > 0:
            jumped = np.flatnonzero(~(losses <= self.t.initial_jump * start) & ~np.isnan(losses))
            if jumped.size and jumped[0] > 0:
                block = block[: jumped[0]]
        flat = column_medians(block.reshape(block.shape[0], -1)).reshape(block.shape[1:])
        self._early = dict(zip(LAYER_QUANTITIES, flat))

    def judge(self, curvature: Sequence[dict], sizes: np.ndarray, *, steps: int, records: int, final: bool = False,
              codes: Sequence[str] | None = None, step: int | None = None) -> None:
        """Run the detectors (only those emitting ``codes`` when given) on the window and update the findings
        at ``step`` (default: the last step so far)."""
        if self.window is None:
            return
        window = self.window
        ctx = self.context(curvature, sizes, steps, records)
        judged: list[str] = []
        for det in self.detectors:
            if codes is not None and not set(det.codes) & set(codes):
                continue
            if len(window) < det.min_records:
                continue
            judged.extend(det.codes)
            ctx.observations.extend(det.judge(ctx))
        if codes is None:
            self._judged_at = records
        at = step if step is not None else max(steps - 1, 0)
        self.tracker.update(at, ctx.observations, judged, final=final, full=codes is None)

    def nonfinite(self, step: int, message: str, evidence: dict[str, Any], layer: str | None) -> None:
        """NaN/Inf appeared at ``step``: an error finding at once (reported once, where it first appeared),
        with the gradient norm clipping should start at."""
        if self.nonfinite_step is not None:
            return
        self.nonfinite_step = step
        clip = self.typical_grad_norm()
        if math.isfinite(clip):
            evidence = {**evidence, "suggested_clip_norm": sig(clip, 2)}
        obs = Observation("nonfinite_values", layer, "error", message, evidence, open_after=1)
        self.tracker.update(step, [obs], ["nonfinite_values"], full=False)

    # -- findings ------------------------------------------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        """Every finding opened so far, by first step (then code), with the suggestions and links of the last
        time one opened (:meth:`diagnose` brings them up to date)."""
        return sorted(self.tracker.findings, key=lambda f: (f.first_step, f.code))

    def diagnose(self, findings: Sequence[Finding] | None = None) -> list[Finding]:
        """Attach the current advice to ``findings`` (every finding so far by default) and link them by cause
        (:func:`gradmon.causes.link`): one root cause, its consequences, and its first fix first everywhere.
        Returns them by first step."""
        findings = self.tracker.findings if findings is None else findings
        for f in findings:
            self.suggest(f)
        link(findings)
        return sorted(findings, key=lambda f: (f.first_step, f.code))

    def suggest(self, finding: Finding) -> None:
        """Attach the advice for ``finding``, judged with the learning rate in force now (schedules)."""
        if self._advice is None:
            return
        ctx = self._advice
        if self.window is not None:
            ctx = dataclasses.replace(ctx, lr=latest_lr(self.window, ctx.lr))
        finding.suggestions = advise(finding, ctx, self.thresholds.advice)

    def _opened(self, finding: Finding) -> None:
        """A finding opened: its advice and its place among the others' causes before anyone sees it."""
        self.diagnose()
        if self.on_open is not None:
            self.on_open(finding)
