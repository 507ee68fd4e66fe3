"""Saturated activations (sigmoid/tanh) and dead units (ReLU), per layer over the recent window.

The fractions that make a warning or an error are in :class:`~gradmon.thresholds.SaturationThresholds` and
:class:`~gradmon.thresholds.DeadUnitThresholds`."""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation
from gradmon.thresholds import DeadUnitThresholds, SaturationThresholds
from gradmon.vocabulary import XAVIER_INITS, sig


class SaturatedActivations(Detector):
    codes = ("saturated_activations",)

    def __init__(self, thresholds: SaturationThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else SaturationThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        sat = ctx.medians("saturation")
        means = ctx.medians("act_mean")
        stds = ctx.medians("act_std")
        early = ctx.early.get("saturation")
        out = []
        for unit, frac in zip(ctx.units, sat):
            if not np.isfinite(frac) or frac < self.t.warn_fraction:
                continue
            severity = "error" if frac >= self.t.error_fraction else "warning"
            at_start = float(early[unit.index]) if early is not None and len(early) == ctx.depth else float("nan")
            cause, why = self._cause(unit, at_start, ctx)
            message = (f"{frac:.0%} of {unit.name}'s {unit.activation} outputs sit at an asymptote, where the "
                       f"derivative is ~0: those units barely learn and block the gradient to earlier layers; "
                       f"{why}.")
            evidence = {"saturation": sig(float(frac)), "activation": unit.activation, "init": unit.init,
                        "act_mean": sig(float(means[unit.index])), "act_std": sig(float(stds[unit.index])),
                        "saturation_at_start": sig(at_start), "cause": cause}
            out.append(Observation("saturated_activations", unit.name, severity, message, evidence))
        return out

    def _cause(self, unit, at_start: float, ctx: JudgeContext) -> tuple[str, str]:
        """``initialization`` (saturated from the start under an initialization not made for tanh/sigmoid),
        ``training`` (not saturated in the run's first records: the steps pushed the units there) or
        ``activation``."""
        if np.isfinite(at_start) and at_start < self.t.warn_fraction:
            return "training", (f"they were {at_start:.0%} saturated in the run's first steps, so training pushed "
                                f"them there (lr {ctx.lr:g} with {ctx.run.optimizer})")
        if unit.init and unit.init not in XAVIER_INITS:
            return "initialization", f"the {unit.init} initialization puts pre-activations deep in the flat tails"
        return "activation", f"the {unit.activation} activation itself saturates"


class DeadUnits(Detector):
    """ReLU units silent for a whole batch; the cause is read from the biases and the run's first records:
    negative initial biases (the user's ``bias_init``) switch units off from the start (cause ``bias``); units
    already dead in the first records died of the initialisation (``initialization``); otherwise the steps of
    training did, pushing biases negative or weights off (``step``).  A forward collapse or a
    blow-up that explains them is linked by the jury (:mod:`gradmon.causes`)."""

    codes = ("dead_units",)

    def __init__(self, thresholds: DeadUnitThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else DeadUnitThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        dead = ctx.medians("dead_fraction")
        bias = ctx.medians("bias_mean")
        early = ctx.early.get("dead_fraction")
        out = []
        for unit, frac, b in zip(ctx.units, dead, bias):
            if not np.isfinite(frac) or frac < self.t.warn_fraction:
                continue
            severity = "error" if frac >= self.t.error_fraction else "warning"
            n = f" ({round(frac * unit.units)} of {unit.units})" if unit.units else ""
            at_start = float(early[unit.index]) if early is not None and len(early) == ctx.depth else float("nan")
            if unit.bias_init is not None and unit.bias_init < 0:
                cause, why = "bias", f"their biases started at {unit.bias_init:g}, which switches units off"
            elif np.isfinite(at_start) and at_start >= self.t.warn_fraction:
                cause, why = "initialization", (f"{at_start:.0%} were already dead in the run's first steps, "
                                                f"before any large step: the network switched them off from its "
                                                f"initialization (a narrow or deep rectifier stack, or a forward "
                                                f"signal too small to cross their biases)")
            elif np.isfinite(b) and b < 0:
                cause, why = "step", (f"the steps of training (lr {ctx.lr:g} with {ctx.run.optimizer}) pushed their "
                                      f"biases negative (mean {b:.2g})")
            else:
                cause, why = "step", (f"they were alive in the run's first steps, so the steps of training (lr "
                                      f"{ctx.lr:g} with {ctx.run.optimizer}) switched them off")
            message = (f"{frac:.0%} of {unit.name}'s ReLU units{n} output zero for every example of a batch: "
                       f"they get no gradient and cannot recover; {why}.")
            out.append(Observation("dead_units", unit.name, severity, message,
                                   {"dead_fraction": sig(float(frac)), "units": unit.units, "cause": cause,
                                    "bias_mean": sig(float(b)), "bias_init": unit.bias_init,
                                    "dead_at_start": sig(at_start),
                                    "lr": sig(ctx.lr), "optimizer": ctx.run.optimizer}))
        return out
