"""Unscaled inputs: the first layer's input features on scales that differ by orders of magnitude, or far
from 1.

A feature's scale is the root mean square of its non-zero values over the examples measured
(:mod:`gradmon.quantities.inputs`): a sparse feature (a border pixel, a rare category) is as large as its
values, not as small as its rarity; features that are always zero are left out.  The first layer's gradient
is proportional to its inputs, so a feature a thousand times larger than another gets a thousand times the
gradient: no learning rate suits both, and a scale far from 1 (raw pixel values, prices in dollars) puts the largest stable
step far from the usual ones.  Standardising each feature (subtract its mean, divide by its standard
deviation, with the training set's statistics) removes both.  The numbers are in
:class:`~gradmon.thresholds.UnscaledInputThresholds`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation, median
from gradmon.quantities.inputs import InputScale
from gradmon.thresholds import UnscaledInputThresholds
from gradmon.vocabulary import sig


class UnscaledInputs(Detector):
    codes = ("unscaled_inputs",)

    def __init__(self, thresholds: UnscaledInputThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else UnscaledInputThresholds()
        self.min_records = self.t.min_records
        self._last: tuple[tuple, list[Observation]] | None = None  # (what the scale was, its observations)

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        scale = ctx.inputs
        if scale is None or scale.examples < self.t.min_examples or not scale.features:
            return []
        # the scale stops changing once measured (the first examples only): judged again only when it moved
        key = (id(scale), scale.examples, scale.features, ctx.units[0].name if ctx.units else None)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._judge(ctx, scale))
        return [dataclasses.replace(o, evidence=dict(o.evidence)) for o in self._last[1]]

    def _judge(self, ctx: JudgeContext, scale: InputScale) -> list[Observation]:
        t = self.t
        rms = scale.scale
        used = np.flatnonzero(np.isfinite(rms) & (rms > 0))
        if not used.size:
            return []
        logs = np.log10(rms[used])
        lo, hi = int(used[np.argmin(logs)]), int(used[np.argmax(logs)])
        spread = float(logs.max() - logs.min())
        centre = median(logs)
        reasons = []
        if spread > t.max_spread:
            reasons.append(f"their scales (root mean square of their values) range over {spread:.1f} decades, "
                           f"from {rms[lo]:.2g} (feature {lo}) to {rms[hi]:.2g} (feature {hi})")
        if abs(centre) > t.max_offset:
            reasons.append(f"their typical scale is {10 ** centre:.2g}, {abs(centre):.1f} decades from 1")
        if not reasons:
            return []
        worst = max(spread, abs(centre))
        severity = "error" if worst >= t.error_decades else "warning"
        first = ctx.units[0].name if ctx.units else "the first layer"
        message = (f"The inputs of {first} are not standardised: " + "; ".join(reasons) + ".  The first layer's "
                   "gradient scales with its inputs, so no single learning rate suits every feature.")
        evidence = {"features": int(scale.features), "measured_features": int(used.size),
                    "examples": int(scale.examples), "spread_decades": sig(spread),
                    "median_scale": sig(10 ** centre), "min_scale": sig(float(rms[lo])), "min_feature": lo,
                    "max_scale": sig(float(rms[hi])), "max_feature": hi,
                    "max_abs_mean": sig(float(np.max(np.abs(scale.mean[used]))))}
        return [Observation("unscaled_inputs", None, severity, message, evidence, open_after=1)]
