"""Sharpness above the stability threshold: the top Hessian eigenvalue against ``2/lr``.

Gradient descent on a quadratic with curvature λ is stable only while ``λ < 2/lr`` (``2(1+β)/lr`` with
heavy-ball momentum β).  Full-batch gradient descent typically rises to λmax ≈ 2/lr and hovers there (the
edge of stability) while the loss keeps falling, so sharpness alone is reported as information; it becomes
a warning when the loss oscillates without progress and an error when the loss diverges.  Only plain and
momentum SGD have this bound; adaptive optimizers precondition the curvature and are not judged.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation, sig
from gradmon.detectors.loss import LossOscillation, is_diverging


class SharpnessAboveStability(Detector):
    codes = ("sharpness_above_stability",)
    min_records = 0    # judged at each curvature measurement, from the first step on
    margin = 1.0       # report when lambda_max > margin * threshold
    safety = 0.8       # suggested lr = safety * the largest stable lr

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        if not ctx.curvature or ctx.run.optimizer not in ("sgd", "momentum"):
            return []
        last = ctx.curvature[-1]
        lam = float(last.get("lambda_max", np.nan))
        lr = ctx.run.lr
        momentum = float(ctx.run.hyperparams.get("momentum", 0.0))
        if not np.isfinite(lam) or lam <= 0 or not lr > 0:
            return []
        from gradmon.quantities.curvature import stability_threshold

        threshold = stability_threshold(lr, momentum)
        if lam <= self.margin * threshold:
            return []
        max_lr = (2.0 * (1.0 + momentum)) / lam
        diverging, _ = is_diverging(ctx)
        oscillating = bool(LossOscillation().judge(ctx)) if len(ctx.window) >= LossOscillation.min_records else False
        severity = "error" if diverging else ("warning" if oscillating else "info")
        bound = "2(1+β)/lr" if momentum else "2/lr"
        state = ("and the loss is diverging" if diverging else "and the loss oscillates" if oscillating
                 else "while the loss still falls (the edge of stability)")
        message = (f"The top Hessian eigenvalue {lam:.3g} exceeds {bound} = {threshold:.3g} at step "
                   f"{int(last.get('step', ctx.step))} {state}; a learning rate below {max_lr:.2g} is stable.")
        evidence = {"lambda_max": sig(lam), "threshold": sig(threshold), "lr": sig(lr), "momentum": momentum,
                    "ratio": sig(lam / threshold), "max_stable_lr": sig(max_lr),
                    "suggested_lr": sig(self.safety * max_lr, 2), "measured_at": int(last.get("step", ctx.step))}
        return [Observation("sharpness_above_stability", None, severity, message, evidence, open_after=1)]
