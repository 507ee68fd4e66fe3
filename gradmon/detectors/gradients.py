"""Vanishing and exploding gradients.

Both read per-layer gradient norms as RMS per weight (``||g|| / sqrt(n)``, so a wide input layer and a
narrow output layer compare fairly) and the global gradient norm, over the recent window.  Depth profiles
hold only the layers that have a gradient (:func:`~gradmon.detectors.base.trained`): a frozen or
zero-gradient layer neither enters one nor stops the others from being judged.

Vanishing: the gradient RMS falls across depth, from the output side to the input side, by at least
``min_drop`` decades (a straight-line fit over the profile that one odd layer cannot tilt, times its span)
and steadily (rank correlation between depth and log RMS of at least ``min_steadiness``).  A deep net whose
gradient loses a seventh of a decade per layer qualifies as surely as a shallow one losing a decade per
layer.  The finding belongs to the input-most layer of the profile (where the gradient is weakest, and a
place that does not move as training goes on); its evidence names the onset, the output-most layer already
``onset_drop`` (a decade) below the top, so the vanishing span runs from the first layer to the onset.

It says which way the signal dies: *forward* when the activations' scale (std) shrinks with depth (each
layer's gradient, proportional to its input, shrinks with it), *backward* when the activations keep their
scale and each layer shrinks the gradient it passes back, or that it is unknown where the activation
statistics were not measured (functional activations in a PyTorch model: the cause there is said to be
unknown, never guessed).  The cause: the activation (saturated or sigmoid units, or tanh units saturated
since the start), the initialisation (its name, or each hidden layer's measured gain ``||W|| / sqrt(fan_out)``,
below what the activation needs: sqrt(2) for the ReLU family, 1 for tanh), training (the profile was healthy
in the run's first records, or the units saturated since: the steps broke it), or depth (the initialisation
already suits the activation).

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

from typing import Any

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation, finite, is_above_start, layer_rms, median, \
    rank_correlation, slope, smoothed, theil_sen, trained
from gradmon.thresholds import ExplodingThresholds, VanishingThresholds
from gradmon.vocabulary import HE_INITS, RECTIFIERS, RELU_FAMILY, SATURATING, XAVIER_INITS, sig

__all__ = ["ExplodingGradients", "VanishingGradients", "depth_slope", "layer_rms"]


def depth_slope(log_rms: np.ndarray) -> float:
    """Least-squares slope of ``log_rms`` over layer index (decades per layer; > 0 grows to the output)."""
    idx = np.arange(log_rms.size, dtype=float)
    ok = np.isfinite(log_rms)
    if ok.sum() < 2:
        return float("nan")
    return slope(idx[ok], log_rms[ok])


def fitted_fall(log_values: np.ndarray) -> float:
    """Decades ``log_values`` rise from its first entry to its last along a robust straight line
    (:func:`~gradmon.detectors.base.theil_sen` times the span), NaN entries left out: the fall towards the
    input of a profile listed input first."""
    ok = log_values[np.isfinite(log_values)]
    return theil_sen(ok) * (ok.size - 1) if ok.size >= 2 else float("nan")


#: the per-layer gain (:func:`weight_gain`) that keeps the signal's scale through an activation family: He's
#: sqrt(2) for the ReLU family (it zeroes half the signal), Xavier's 1 for tanh/sigmoid near zero
NEEDED_GAIN: dict[str, float] = {"rectified": float(np.sqrt(2.0)), "saturating": 1.0}


def weight_gain(ctx: JudgeContext, units: list[Any]) -> float:
    """The median, over ``units``, of each layer's gain ``||W|| / sqrt(fan_out)`` = ``sqrt(fan_in · var(W))``:
    the factor a layer multiplies its input's scale by before the activation (1 for Xavier on square layers,
    sqrt(2) for He).  Read from the weight norms of the run's first records (the initialisation) when known,
    else the latest; NaN without weight norms or widths."""
    norms = ctx.early.get("weight_norm")
    if norms is None or len(norms) != ctx.depth or not np.isfinite(norms).any():
        norms = ctx.medians("weight_norm")
    gains = [float(norms[u.index]) / np.sqrt(u.units) for u in units
             if u.units and np.isfinite(norms[u.index]) and norms[u.index] > 0]
    return median(gains) if gains else float("nan")


def _names(units: list[Any]) -> str:
    """``dense0``, ``dense0 and dense2``, or ``dense0, dense2 ... dense8 (5 layers)``."""
    names = [u.name for u in units]
    if len(names) <= 2:
        return " and ".join(names)
    if len(names) == 3:
        return f"{names[0]}, {names[1]} and {names[2]}"
    return f"{names[0]}, {names[1]} ... {names[-1]} ({len(names)} layers)"


class VanishingGradients(Detector):
    codes = ("vanishing_gradients",)

    def __init__(self, thresholds: VanishingThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else VanishingThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        rms = layer_rms(ctx)
        keep = np.flatnonzero(trained(ctx, rms))
        if keep.size < max(t.min_depth, 2):
            return []
        log_rms = np.log10(rms[keep])
        drop = fitted_fall(log_rms)
        steadiness = rank_correlation(log_rms)
        if not (drop >= t.min_drop and steadiness >= t.min_steadiness):
            return []
        units = [ctx.units[i] for i in keep]
        names = [u.name for u in units]
        top = float(log_rms.max())
        top_layer = names[int(np.argmax(log_rms))]
        onset_at = next((j for j in range(keep.size - 1, -1, -1) if log_rms[j] < top - t.onset_drop), 0)
        onset = names[onset_at]
        span = units[: onset_at + 1]  # the layers whose gradient has vanished, input first
        direction, act_logs, fall = self._direction(ctx, keep)
        cause, why, extra = self._cause(ctx, keep, span)
        ratio = 10 ** (log_rms[0] - top)
        message = (f"Gradients vanish towards the input: {names[0]}'s are {ratio:.1e} of {top_layer}'s, a steady "
                   f"fall of {drop:.1f} decades across {keep.size} layers (one decade down by {onset}); "
                   f"{self._how(direction, act_logs, fall)}; {why}.")
        evidence = {
            "log10_grad_rms": {n: sig(v) for n, v in zip(names, log_rms)},
            "drop_decades": sig(drop), "slope_decades_per_layer": sig(drop / (keep.size - 1)),
            "steadiness": sig(steadiness), "onset_layer": onset, "direction": direction, "cause": cause,
            "activations": sorted({u.activation for u in units if u.activation}),
            "inits": sorted({u.init for u in units if u.init}), "depth": int(keep.size), **extra,
        }
        if act_logs:
            evidence["log10_act_std"] = {n: sig(v) for n, v in act_logs.items()}
            evidence["forward_drop_decades"] = sig(fall)
        left_out = [u.name for i, u in enumerate(ctx.units) if i not in set(keep.tolist())]
        if left_out:
            evidence["left_out"] = left_out  # frozen or without a gradient: not part of the profile
        severity = "error" if drop >= t.error_drop else "warning"
        return [Observation("vanishing_gradients", names[0], severity, message, evidence)]

    def _direction(self, ctx: JudgeContext, keep: np.ndarray) -> tuple[str, dict[str, float], float]:
        """``(direction, {layer: log10 act std}, decades the std falls across depth)``: ``forward`` when it
        falls by ``forward_drop`` or more, ``backward`` when it does not, ``unknown`` when no layer of the
        profile has a measured activation scale, ``too few`` when fewer than three have."""
        stds = ctx.medians("act_std")
        logs: dict[str, float] = {}
        for i in keep:
            u = ctx.units[i]
            v = float(stds[i])
            if u.activation_layer and np.isfinite(v) and v > 0:
                logs[u.name] = float(np.log10(v))
        if len(logs) < 3:
            return ("unknown" if not logs else "too few"), logs, float("nan")
        fall = -fitted_fall(np.array(list(logs.values())))
        return ("forward" if fall >= self.t.forward_drop else "backward"), logs, fall

    @staticmethod
    def _how(direction: str, act_logs: dict[str, float], fall: float) -> str:
        if direction == "forward":
            first, last = next(iter(act_logs)), list(act_logs)[-1]
            return (f"the signal dies in the forward pass: the activations' scale (std) falls {fall:.1f} decades "
                    f"from {first} ({10 ** act_logs[first]:.2g}) to {last} ({10 ** act_logs[last]:.2g}), and each "
                    f"layer's gradient, proportional to its input, shrinks with it")
        if direction == "backward":
            return "the activations keep their scale, so the signal dies on its way back"
        if direction == "too few":
            return "too few layers have an activation to tell which way the signal dies"
        return "which way the signal dies is unknown (activation scales were not measured)"

    def _cause(self, ctx: JudgeContext, keep: np.ndarray, span: list[Any]) -> tuple[str, str, dict[str, Any]]:
        """``(cause, the sentence saying why, evidence)`` for the vanishing span (input side up to the
        onset); see the module docstring for the causes.  The initialisation's scale is read from its name
        where the loop gives one, and measured as each hidden layer's gain (:func:`weight_gain`)."""
        t = self.t
        saturation = ctx.medians("saturation")
        units = [ctx.units[i] for i in keep]
        # what was measured: an activation layer with its health statistic (saturation for tanh/sigmoid, dead
        # fraction for rectifiers, the scale otherwise)
        health = {"saturation": saturation, "dead_fraction": ctx.medians("dead_fraction"),
                  "act_std": ctx.medians("act_std")}

        def seen(u: Any) -> bool:
            kind = "saturation" if u.activation in SATURATING else \
                "dead_fraction" if u.activation in RECTIFIERS else "act_std"
            return bool(u.activation_layer) and bool(np.isfinite(health[kind][u.index]))

        unmeasured = [u for u in span if not seen(u)]
        measured = [u for u in units if u not in unmeasured and u.activation]
        activations = sorted({u.activation for u in measured})
        sat_values = [float(saturation[u.index]) for u in measured if u.activation in SATURATING]
        sat_max = max(sat_values) if sat_values else float("nan")
        inits = sorted({u.init for u in units if u.init})
        gain = weight_gain(ctx, [u for u in units if u.index > 0 and u.activation])
        evidence: dict[str, Any] = {"max_saturation": sig(sat_max), "weight_gain": sig(gain)}
        if unmeasured:
            evidence["unmeasured"] = [u.name for u in unmeasured]
        unknown_part = (f" (activation statistics were not measured for {_names(unmeasured)}: the cause there is "
                        f"unknown)") if unmeasured and len(unmeasured) < len(span) else ""
        if not measured or len(unmeasured) == len(span):
            what = "activation statistics were not measured for " + _names(unmeasured or span)
            return "unknown", (f"{what} (an activation applied as a function, not a module, is not seen), so "
                               f"whether their units are dead, saturated or too small is unknown: the cause is "
                               f"unknown"), evidence
        saturating = [a for a in activations if a in SATURATING]
        rectified = [a for a in activations if a in RELU_FAMILY]
        if saturating and (sat_max >= t.saturation_cause or "sigmoid" in saturating):
            state = f"are {sat_max:.0%} saturated" if sat_max >= t.quoted_saturation else \
                "pass at most a quarter of the gradient"
            early = ctx.early.get("saturation")
            at_start = [float(early[u.index]) for u in measured if u.activation in SATURATING] \
                if early is not None and len(early) == ctx.depth else []
            at_start = [v for v in at_start if np.isfinite(v)]
            if "sigmoid" not in saturating and at_start and max(at_start) < t.saturation_cause:
                return "training", (f"{'/'.join(saturating)} units {state} now but were {max(at_start):.0%} "
                                    f"saturated in the run's first steps: steps of lr {ctx.lr:g} with "
                                    f"{ctx.run.optimizer} pushed them there{unknown_part}"), evidence
            return "activation", (f"{'/'.join(saturating)} units {state}, so each layer shrinks the gradient it passes "
                                  f"back: the activation is the cause{unknown_part}"), evidence
        needed = NEEDED_GAIN["rectified" if rectified else "saturating"]
        evidence["needed_gain"] = needed
        named = bool(inits) and not all(i in (HE_INITS if rectified else XAVIER_INITS) for i in inits)
        small = bool(np.isfinite(gain) and gain < t.small_gain * needed)
        if np.isfinite(gain):
            evidence["gain_suits"] = not small
        if named or small:
            kind = "He (variance 2/fan_in)" if rectified else "Xavier"
            scale = f" (each layer multiplies the signal's scale by {gain:.2g} where {'/'.join(activations)} " \
                    f"needs about {needed:.2g})" if np.isfinite(gain) else ""
            init = "/".join(inits) + " initialization" if inits else "initialization"
            return "initialization", (f"the {init} is too small for {'/'.join(activations)} layers{scale}: it is the "
                                      f"cause, and {kind} is the scale they need{unknown_part}"), evidence
        early = self._early(ctx, keep)
        evidence["early_drop_decades"] = sig(early)
        if np.isfinite(early) and early < t.min_drop:
            return "training", (f"the profile was healthy in the run's first steps (a fall of {early:.1f} "
                                f"decades), so training broke it: steps of lr {ctx.lr:g} with "
                                f"{ctx.run.optimizer} pushed units off{unknown_part}"), evidence
        init = "/".join(inits) + " initialization" if inits else "initialization"
        return "depth", (f"the {init} already suits {'/'.join(activations)} (a gain of {gain:.2g} per layer), so "
                         f"depth itself shrinks the signal{unknown_part}"), evidence

    def _early(self, ctx: JudgeContext, keep: np.ndarray) -> float:
        """The fall across depth of the same layers' gradient RMS in the run's first records (NaN before
        those are known)."""
        norms = ctx.early.get("grad_norm")
        if norms is None or len(norms) != ctx.depth:
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = np.asarray(norms)[keep] / np.sqrt(ctx.sizes[keep])
        ok = np.isfinite(rms) & (rms > 0)
        return fitted_fall(np.log10(rms[ok])) if ok.sum() >= 2 else float("nan")


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
            times = f" ({peak / window_median:.3g}x its median over the window)" if window_median > 0 else ""
            reasons.append(f"the global norm spiked {spikes} times, up to {peak:.3g}{times}")
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
            keep = np.flatnonzero(trained(ctx, rms))
            if keep.size >= t.min_depth:
                log_rms = np.log10(rms[keep])
                slope = depth_slope(log_rms)
                growth = float(log_rms[0] - log_rms[-1])
                if growth >= t.depth_drop and slope <= -t.depth_slope:
                    reasons.append(f"gradients grow {10 ** growth:.0f}x from the output layer to the input "
                                   f"({slope:+.2f} decades per layer)")
                    evidence["log10_grad_rms"] = {ctx.units[i].name: sig(v) for i, v in zip(keep, log_rms)}
                    evidence["slope_decades_per_layer"] = sig(slope)
                    layer = ctx.units[keep[0]].name
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
