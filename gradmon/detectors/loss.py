"""Loss-curve detectors: divergence, oscillation, plateau.

All compare the recent window with the run's own history: ``initial_loss`` (median of the first records)
and ``best_loss`` (lowest smoothed loss so far).  Mini-batch noise is not oscillation: differences of
independent noise have a lag-1 autocorrelation of -0.5, a period-2 swing from too large a step is near -1.
Every number is a field of :class:`~gradmon.thresholds.DivergenceThresholds`,
:class:`~gradmon.thresholds.OscillationThresholds` or :class:`~gradmon.thresholds.PlateauThresholds`.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import STARVING, Detector, JudgeContext, Observation, finite, is_above_start, median
from gradmon.thresholds import DivergenceThresholds, OscillationThresholds, PlateauThresholds
from gradmon.vocabulary import sig


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``x`` (NaN when constant or too short)."""
    if x.size < 3:
        return float("nan")
    a, b = x[:-1] - x[:-1].mean(), x[1:] - x[1:].mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def is_diverging(ctx: JudgeContext, t: DivergenceThresholds) -> tuple[bool, dict]:
    """The loss is rising, and is above where it started or has lost most of what it had learned.

    Levels are medians over ``ctx.smooth`` records (a few hundred examples), and rising means the latest
    such level is ``t.rise_factor`` (5%) above the one before it, so the noise of small batches is not
    mistaken for a trend.
    """
    k = ctx.smooth
    ok = finite(ctx.window.scalar("loss"))
    if ok.size < max(t.min_losses, k + 2) or not np.isfinite(ctx.initial_loss):
        return False, {}
    q = min(k, ok.size // 2)
    current, before = median(ok[-q:]), median(ok[-2 * q:-q])
    start, best = ctx.initial_loss, min(ctx.best_loss, current)
    rising = current > t.rise_factor * before
    learned = start - best
    lost = (current - best) / learned if learned > 0 else 0.0
    above_start = is_above_start(current, start, factor=t.above_start_factor, margin=t.above_start_margin)
    evidence = {"loss_now": sig(current), "initial_loss": sig(start), "best_loss": sig(best)}
    return bool((above_start or (learned > t.min_learned * start and lost > t.lost_fraction)) and rising), evidence


class LossDivergence(Detector):
    codes = ("loss_divergence",)

    def __init__(self, thresholds: DivergenceThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else DivergenceThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        diverging, evidence = is_diverging(ctx, self.t)
        if not diverging:
            return []
        current, start = evidence["loss_now"], evidence["initial_loss"]
        severity = "error" if current > self.t.error_factor * start else "warning"
        message = (f"The loss is diverging: {current:.3g} now against {start:.3g} at the start and "
                   f"{evidence['best_loss']:.3g} at best; steps are too large for the curvature.")
        if np.isfinite(ctx.suggested_clip_norm):
            evidence["suggested_clip_norm"] = sig(ctx.suggested_clip_norm, 2)
        return [Observation("loss_divergence", None, severity, message, evidence)]


class LossOscillation(Detector):
    codes = ("loss_oscillation",)

    def __init__(self, thresholds: OscillationThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else OscillationThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        loss = finite(ctx.window.scalar("loss", last=t.window_records))
        if loss.size < t.min_records:
            return []
        level = median(loss)
        if not np.isfinite(ctx.initial_loss) or level < t.min_level * ctx.initial_loss or level <= 0:
            return []
        d = np.diff(loss)
        ac = lag1_autocorrelation(d)
        amplitude = median(np.abs(d)) / level
        if not (ac <= t.max_autocorr and amplitude >= t.min_amplitude):
            return []
        # progress of the loss averaged over neighbouring steps, which cancels the swing itself
        pairs = 0.5 * (loss[1:] + loss[:-1])
        q = max(t.progress_min_block, int(pairs.size * t.progress_block_fraction))
        progress = 1.0 - median(pairs[-q:]) / median(pairs[:q])
        severity = "warning" if progress < t.min_progress else "info"
        message = (f"The loss swings up and down every step (lag-1 autocorrelation of its changes {ac:.2f}, "
                   f"swings {amplitude:.0%} of its level)"
                   + (" and makes no progress" if severity == "warning" else " while still falling")
                   + ": the step overshoots along a sharp direction.")
        evidence = {"autocorrelation": sig(ac), "relative_amplitude": sig(amplitude),
                    "window_progress": sig(progress), "loss_level": sig(level)}
        return [Observation("loss_oscillation", None, severity, message, evidence)]


class LossPlateau(Detector):
    codes = ("loss_plateau",)

    def __init__(self, thresholds: PlateauThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else PlateauThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        loss = finite(ctx.window.scalar("loss", last=t.window_records))
        if loss.size < t.min_records or not np.isfinite(ctx.initial_loss) or ctx.initial_loss <= 0:
            return []
        q = max(t.min_block, int(loss.size * t.block_fraction))
        head, tail = median(loss[:q]), median(loss[-q:])
        progress = 1.0 - tail / head if head > 0 else 0.0
        # neither falling nor rising: a loss going up is diverging, which is another finding
        if not -t.max_rise <= progress <= t.max_progress or tail < t.min_level * ctx.initial_loss:
            return []
        steps = ctx.window.steps[-loss.size:]
        # a stall that starved gradients explain is that finding's consequence: say so, and leave it the fix
        cause = next((code for code in STARVING if ctx.observed(code, any_layer=True)), None)
        message = (f"The loss has stopped improving at {tail:.3g} ({tail / ctx.initial_loss:.0%} of where it "
                   f"started; {progress:+.1%} over the last {int(steps[-1] - steps[0]) + 1} steps)"
                   + (f", because of the {cause.replace('_', ' ')} reported with it." if cause else "."))
        evidence = {"loss_now": sig(tail), "initial_loss": sig(ctx.initial_loss), "window_progress": sig(progress),
                    "window_steps": int(steps[-1] - steps[0]) + 1, "explained_by": cause}
        return [Observation("loss_plateau", None, "warning", message, evidence)]
