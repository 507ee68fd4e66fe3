"""Loss-curve detectors: divergence, oscillation, plateau.

All compare the recent window with the run's own history: ``initial_loss`` (median of the first records,
up to a blow-up among them) and ``best_loss`` (lowest smoothed loss so far).

Divergence has four patterns (``evidence["pattern"]``): ``rising`` (the loss climbs, above its start or
losing most of what it learned), ``stuck`` (it stays well above its start over the whole window, after an
early blow-up or a rise, whatever the gradient norms did: the step threw the weights out of the region they
started in), ``unrecovered`` (it blew up to many times its start and never came back below a fraction of
it: the blow-up left a network that cannot learn, often dead units or vanished gradients, which are its
consequences) and ``spike`` (it blew up to many times its start and came back: a warning while the blow-up is
in the window, since the damage it leaves stays).  Each is fixed by a lower learning rate.  Mini-batch noise is not oscillation: differences of
independent noise have a lag-1 autocorrelation of -0.5, a period-2 swing from too large a step is near -1.
Every number is a field of :class:`~gradmon.thresholds.DivergenceThresholds`,
:class:`~gradmon.thresholds.OscillationThresholds` or :class:`~gradmon.thresholds.PlateauThresholds`.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import STARVING, Detector, JudgeContext, Observation, block_medians, finite, \
    is_above_start, median
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


def stayed_up(ctx: JudgeContext, t: DivergenceThresholds) -> tuple[str | None, dict]:
    """Whether the loss has not come back from a blow-up (or a rise): ``("stuck", evidence)`` when its level
    stays above ``t.stuck_factor`` times the start over the window (for ``t.min_records_since`` records at
    least), ``("unrecovered", evidence)`` when it blew up to ``t.blowup_factor`` times its start and has not
    been below ``t.recovered_fraction`` of it since, ``(None, {})`` otherwise."""
    k = ctx.smooth
    ok = finite(ctx.window.scalar("loss"))
    start = ctx.initial_loss
    if ok.size < max(t.min_losses, k) or not np.isfinite(start) or start <= 0:
        return None, {}
    current = median(ok[-k:])
    levels = block_medians(ok, k)
    evidence = {"loss_now": sig(current), "initial_loss": sig(start), "best_loss": sig(min(ctx.best_loss, current))}
    if np.isfinite(ctx.peak_loss) and ctx.peak_step >= 0:
        evidence.update(peak_loss=sig(ctx.peak_loss), peak_step=int(ctx.peak_step))
    since = int(np.sum(ctx.window.steps > ctx.peak_step)) if ctx.peak_step >= 0 else ok.size
    above = levels > t.stuck_factor * start + t.above_start_margin
    if current > t.stuck_factor * start + t.above_start_margin and levels.size and \
            float(np.mean(above)) >= t.stuck_fraction and min(since, ok.size) >= t.min_records_since:
        return "stuck", evidence
    blew_up = np.isfinite(ctx.peak_loss) and ctx.peak_loss >= t.blowup_factor * start
    if blew_up and since >= t.min_records_since and ctx.low_since_peak > t.recovered_fraction * start \
            and current > t.recovered_fraction * start:
        return "unrecovered", evidence
    if blew_up and ctx.peak_step >= int(ctx.window.steps[0]):
        return "spike", evidence  # it came back, but the step is at the edge of what the network survives
    return None, {}


class LossDivergence(Detector):
    codes = ("loss_divergence",)

    def __init__(self, thresholds: DivergenceThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else DivergenceThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        # a loss that stays up names the problem best (lower the learning rate, whatever the gradients did);
        # then one that climbs; then a blow-up it came back from
        pattern, evidence = stayed_up(ctx, t)
        if pattern not in ("stuck", "unrecovered"):
            diverging, rising = is_diverging(ctx, t)
            if diverging:
                pattern, evidence = "rising", {**evidence, **rising}
        if pattern is None:
            return []
        current, start = evidence["loss_now"], evidence["initial_loss"]
        peak, at = evidence.get("peak_loss"), evidence.get("peak_step")
        blew = (f"The loss blew up to {peak:.3g} at step {at} ({peak / start:.0f}x its start of {start:.3g})"
                if peak is not None and peak >= 2 * start else None)
        if pattern == "rising":
            severity = "error" if current > t.error_factor * start else "warning"
            message = (f"The loss is diverging: {current:.3g} now against {start:.3g} at the start and "
                       f"{evidence['best_loss']:.3g} at best; steps are too large for the curvature.")
        elif pattern == "stuck":
            severity = "error" if current > t.error_factor * start else "warning"
            message = ((f"{blew} and has stayed far above it since" if blew else
                        f"The loss has risen above where it started ({start:.3g}) and stays there")
                       + f": {current:.3g} now, {current / start:.1f}x its start.  The steps threw the weights out "
                         f"of the region they started in and none brought them back: the learning rate is too "
                         f"large, whatever the gradient norms did.")
        elif pattern == "spike":
            severity = "warning"
            message = (f"{blew} before coming back ({current:.3g} now): the step is at the edge of what the network "
                       f"survives, and the damage a blow-up leaves (dead units, vanished gradients) stays; a lower "
                       f"learning rate avoids it.")
        else:
            severity = "warning"
            message = (f"{blew or f'The loss blew up to {peak:.3g}'} and has not recovered: it is {current:.3g} "
                       f"now ({current / start:.0%} of its start) and never went below {t.recovered_fraction:.0%} "
                       f"of it, while a run that learns does.  The blow-up left a network that cannot learn: "
                       f"the learning rate is too large.")
        evidence["pattern"] = pattern
        evidence["stays_up"] = bool(current > t.stuck_factor * start + t.above_start_margin)
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
