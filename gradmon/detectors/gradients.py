"""Vanishing and exploding gradients.

Both read per-layer gradient norms as RMS per weight (``||g|| / sqrt(n)``, so a wide input layer and a
narrow output layer compare fairly) and the global gradient norm, over the recent window.

Vanishing: the log10 RMS falls towards the input by at least ``min_drop`` decades, steadily (a least-squares
slope over depth of at least ``min_slope`` decades per layer).  The finding is located at the onset, the
output-most layer already ``onset_drop`` (a decade) below the top; the cause is read from saturation
(activation) or its absence (initialisation).

Exploding: the global norm jumps far above its early-training level (suddenly, orders of magnitude above
its window median, or while the loss is above where it started: gradients that grow from a tiny
initialisation while the loss falls or waits are learning), spikes repeatedly far above the window's 90th
percentile, grows by orders of magnitude within the window while the loss is above its start, or grows along
depth towards the input.  Every record since the previous judgment is scanned, so a blow-up between two
judgments is seen.

Every number is a field of :class:`~gradmon.thresholds.VanishingThresholds` or
:class:`~gradmon.thresholds.ExplodingThresholds`.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation, finite, is_above_start, median, slope, \
    smoothed
from gradmon.thresholds import ExplodingThresholds, VanishingThresholds
from gradmon.vocabulary import SATURATING, sig


def layer_rms(ctx: JudgeContext, last: int | None = None) -> np.ndarray:
    """Median over the last records (``ctx.median_records`` by default) of each layer's gradient RMS per
    weight, shape ``(depth,)``."""
    norms = ctx.medians("grad_norm", last)
    with np.errstate(divide="ignore", invalid="ignore"):
        return norms / np.sqrt(ctx.sizes)


def depth_slope(log_rms: np.ndarray) -> float:
    """Least-squares slope of ``log_rms`` over layer index (decades per layer; > 0 grows to the output)."""
    idx = np.arange(log_rms.size, dtype=float)
    ok = np.isfinite(log_rms)
    if ok.sum() < 2:
        return float("nan")
    return slope(idx[ok], log_rms[ok])


class VanishingGradients(Detector):
    codes = ("vanishing_gradients",)

    def __init__(self, thresholds: VanishingThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else VanishingThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        if ctx.depth < t.min_depth:
            return []
        rms = layer_rms(ctx)
        if not np.isfinite(rms).all() or (rms <= 0).any():
            return []
        log_rms = np.log10(rms)
        top = float(log_rms.max())
        drop = top - float(log_rms[0])
        slope = depth_slope(log_rms)
        if drop < t.min_drop or not slope >= t.min_slope:
            return []
        names = ctx.unit_names()
        top_layer = names[int(np.argmax(log_rms))]
        onset = next((names[j] for j in range(ctx.depth - 1, -1, -1) if log_rms[j] < top - t.onset_drop), names[0])
        saturation = ctx.medians("saturation")
        sat_max = float(np.nanmax(saturation)) if np.isfinite(saturation).any() else float("nan")
        activations = sorted({u.activation for u in ctx.units if u.activation})
        saturating = any(a in SATURATING for a in activations)
        cause = "activation" if saturating and (sat_max >= t.saturation_cause or "sigmoid" in activations) \
            else "initialization"
        if cause == "activation":
            state = f"are {sat_max:.0%} saturated" if sat_max >= t.quoted_saturation else \
                "pass at most a quarter of the gradient"
            why = f"{'/'.join(activations)} units {state}, so each layer shrinks it: the activation is the cause"
        else:
            init = sorted({u.init for u in ctx.units if u.init}) or ["?"]
            why = f"units are not saturated, so the initialization ({'/'.join(init)}) shrinks the signal"
        message = (f"Gradients vanish towards the input: {names[0]}'s are {10 ** -drop:.1e} of {top_layer}'s "
                   f"({slope:+.2f} decades per layer, one decade down by {onset}); {why}.")
        evidence = {
            "log10_grad_rms": {n: sig(v) for n, v in zip(names, log_rms)},
            "drop_decades": sig(drop), "slope_decades_per_layer": sig(slope), "onset_layer": onset,
            "cause": cause, "max_saturation": sig(sat_max), "activations": activations, "depth": ctx.depth,
        }
        severity = "error" if drop >= t.error_drop else "warning"
        return [Observation("vanishing_gradients", onset, severity, message, evidence)]


class ExplodingGradients(Detector):
    codes = ("exploding_gradients",)

    def __init__(self, thresholds: ExplodingThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else ExplodingThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        norms = ctx.window.scalar("grad_norm")
        ok = finite(norms)
        if ok.size < t.min_records:
            return []
        window_median = median(ok)
        series = ok.size >= t.min_series
        early = ctx.initial_grad_norm
        # every record since the previous judgment: a blow-up that came and went in between still counts
        fresh = norms[-max(t.min_fresh, min(ctx.new_records, norms.size)):]
        fresh = fresh[np.isfinite(fresh)]
        loss = ctx.window.scalar("loss")
        smooth_loss = smoothed(loss, ctx.smooth)
        above_start = is_above_start(smooth_loss, ctx.initial_loss, factor=t.above_start_factor,
                                     margin=t.above_start_margin)
        evidence: dict = {}  # the numbers behind each reason; the common ones are added if there is a finding
        reasons = []
        open_after = None
        peak = float(np.max(fresh)) if fresh.size else float(ok[-1])
        # far above the early level, and either orders of magnitude above the window's median (sudden) or with
        # the loss above where it started: gradients grown from a tiny initialisation, whose batches differ
        # tenfold once the loss is near zero, are learning, not exploding
        sudden = peak > t.blowup_factor * window_median
        if np.isfinite(early) and early > 0 and peak > t.blowup_factor * early and (sudden or above_start):
            at = int(ctx.window.steps[np.flatnonzero(norms == peak)[-1]])
            reasons.append(f"the global norm reached {peak:.3g} at step {at}, {peak / early:.3g}x its early level")
            evidence["blowup_factor"] = sig(peak / early)
            evidence["peak_norm"], evidence["peak_step"] = sig(peak), at
            if peak > t.open_at_once * t.blowup_factor * early:
                open_after = 1  # orders of magnitude within a few steps: no time to wait
        # a spike stands out from the window's own spread (its 90th percentile): per-example gradient norms of
        # small batches are heavy-tailed, and one example 20x the median is noise, not an explosion
        spread = float(np.sort(ok)[int(t.spread_quantile * (ok.size - 1))])
        spikes = int(np.sum(fresh > t.spike_factor * spread))
        if series and spikes >= t.min_spikes and np.isfinite(early) and peak > t.early_factor * early \
                and "blowup_factor" not in evidence:
            reasons.append(f"the global norm spiked {spikes} times, up to {peak:.3g} ({peak / window_median:.3g}x "
                           f"its median over the window)")
            evidence["spike_norm"], evidence["spikes"] = sig(peak), spikes
        block = max(t.growth_min_block, int(ok.size * t.growth_block_fraction))
        head, tail = median(ok[:block]), median(ok[-block:])
        if series and "blowup_factor" not in evidence and head > 0 and tail > 0 and above_start and \
                np.log10(tail / head) >= t.growth_decades and \
                (not np.isfinite(early) or tail > t.early_factor * early):
            reasons.append(f"the global norm grew {tail / head:.0f}x within {ok.size} records")
            evidence["growth_factor"] = sig(float(tail / head))
        layer = None
        if ctx.depth >= t.min_depth:
            rms = layer_rms(ctx)
            if np.isfinite(rms).all() and (rms > 0).all():
                log_rms = np.log10(rms)
                slope = depth_slope(log_rms)
                growth = float(log_rms[0] - log_rms[-1])
                if growth >= t.depth_drop and slope <= -t.depth_slope:
                    reasons.append(f"gradients grow {10 ** growth:.0f}x from the output layer to the input "
                                   f"({slope:+.2f} decades per layer)")
                    evidence["log10_grad_rms"] = {u.name: sig(v) for u, v in zip(ctx.units, log_rms)}
                    evidence["slope_decades_per_layer"] = sig(slope)
                    layer = ctx.units[0].name
        if not reasons:
            return []
        evidence = {"median_norm": sig(window_median), "early_norm": sig(early), "last_norm": sig(float(ok[-1])),
                    **evidence}
        if np.isfinite(ctx.suggested_clip_norm):
            evidence["suggested_clip_norm"] = sig(ctx.suggested_clip_norm, 2)
        diverging = np.isfinite(ctx.initial_loss) and smooth_loss > t.diverging_loss * ctx.initial_loss
        catastrophic = np.isfinite(early) and early > 0 and peak > t.catastrophe_factor * early
        severity = "error" if diverging or catastrophic or not np.isfinite(smoothed(norms, t.nonfinite_records)) \
            else "warning"
        message = "Exploding gradients: " + "; ".join(reasons) + (
            ", and the loss is climbing" if diverging else "") + "."
        return [Observation("exploding_gradients", layer, severity, message, evidence, open_after=open_after)]
