"""Saturated activations (sigmoid/tanh) and dead units (ReLU), per layer over the recent window.

The fractions that make a warning or an error are in :class:`~gradmon.thresholds.SaturationThresholds` and
:class:`~gradmon.thresholds.DeadUnitThresholds`."""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation
from gradmon.thresholds import DeadUnitThresholds, SaturationThresholds
from gradmon.vocabulary import sig


class SaturatedActivations(Detector):
    codes = ("saturated_activations",)

    def __init__(self, thresholds: SaturationThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else SaturationThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        sat = ctx.medians("saturation")
        means = ctx.medians("act_mean")
        stds = ctx.medians("act_std")
        out = []
        for unit, frac in zip(ctx.units, sat):
            if not np.isfinite(frac) or frac < self.t.warn_fraction:
                continue
            severity = "error" if frac >= self.t.error_fraction else "warning"
            message = (f"{frac:.0%} of {unit.name}'s {unit.activation} outputs sit at an asymptote, where the "
                       f"derivative is ~0: those units barely learn and block the gradient to earlier layers.")
            evidence = {"saturation": sig(float(frac)), "activation": unit.activation, "init": unit.init,
                        "act_mean": sig(float(means[unit.index])), "act_std": sig(float(stds[unit.index]))}
            out.append(Observation("saturated_activations", unit.name, severity, message, evidence))
        return out


class DeadUnits(Detector):
    """ReLU units silent for a whole batch; the cause is read from the biases: negative ones (at
    initialisation or pushed there by training) switch units off, otherwise a large step did."""

    codes = ("dead_units",)

    def __init__(self, thresholds: DeadUnitThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else DeadUnitThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        dead = ctx.medians("dead_fraction")
        bias = ctx.medians("bias_mean")
        out = []
        for unit, frac, b in zip(ctx.units, dead, bias):
            if not np.isfinite(frac) or frac < self.t.warn_fraction:
                continue
            severity = "error" if frac >= self.t.error_fraction else "warning"
            n = f" ({round(frac * unit.units)} of {unit.units})" if unit.units else ""
            if unit.bias_init is not None and unit.bias_init < 0:
                cause, why = "bias", f"their biases started at {unit.bias_init:g}, which switches units off"
            elif np.isfinite(b) and b < 0:
                cause, why = "bias", f"training pushed their biases negative (mean {b:.2g})"
            else:
                cause, why = "step", f"a large step (lr {ctx.lr:g} with {ctx.run.optimizer}) pushed them off"
            message = (f"{frac:.0%} of {unit.name}'s ReLU units{n} output zero for every example of a batch: "
                       f"they get no gradient and cannot recover; {why}.")
            out.append(Observation("dead_units", unit.name, severity, message,
                                   {"dead_fraction": sig(float(frac)), "units": unit.units, "cause": cause,
                                    "bias_mean": sig(float(b)), "bias_init": unit.bias_init,
                                    "lr": sig(ctx.lr), "optimizer": ctx.run.optimizer}))
        return out
