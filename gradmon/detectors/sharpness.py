"""Sharpness above the stability threshold: the top Hessian eigenvalue against ``2/lr``.

Gradient descent on a quadratic with curvature λ is stable only while ``λ < 2/lr`` (``2(1+β)/lr`` with
heavy-ball momentum β, ``2(1+β)/(lr(1+2β))`` with Nesterov's).  Full-batch gradient descent typically rises
to λmax ≈ 2/lr and hovers there (the edge of stability) while the loss keeps falling, so sharpness alone is
reported as information; it becomes a warning while the loss oscillates without progress and an error while
the loss diverges — both judged, with their own hysteresis, by the loss detectors, so one noisy judgment
does not decide it.  Only plain and momentum SGD have this bound; adaptive optimizers precondition the
curvature and are not judged.

Each measurement is compared with the threshold of the learning rate in force when it was taken (schedules
change it).  The learning rate suggested is set by the sharpest measurement taken while training was still
sane (finite loss, not above twice the initial one): curvature measured on weights that have already blown
up says nothing about the step size that would have kept them from it.  The numbers are in
:class:`~gradmon.thresholds.SharpnessThresholds`.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation
from gradmon.thresholds import SharpnessThresholds
from gradmon.vocabulary import STABILITY_BOUND_OPTIMIZERS, sig, stability_formula


def _finite(entry: dict, key: str) -> float:
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else float("nan")


class SharpnessAboveStability(Detector):
    codes = ("sharpness_above_stability",)

    def __init__(self, thresholds: SharpnessThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else SharpnessThresholds()
        self.min_records = self.t.min_records  # judged at each curvature measurement, from the first step on

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        if ctx.run.optimizer not in STABILITY_BOUND_OPTIMIZERS:
            return []
        # the latest usable measurement (the Lanczos estimate on blown-up weights can be NaN or negative)
        usable = [c for c in ctx.curvature if _finite(c, "lambda_max") > 0 and _finite(c, "threshold") > 0
                  and _finite(c, "lr") > 0]
        if not usable:
            return []
        last = usable[-1]
        lam, threshold, lr = _finite(last, "lambda_max"), _finite(last, "threshold"), _finite(last, "lr")
        if lam <= self.t.margin * threshold:
            return []
        momentum = float(ctx.run.hyperparams.get("momentum", 0.0))
        nesterov = bool(ctx.run.hyperparams.get("nesterov", False))
        reference = self._reference(ctx, usable)
        bound = lr * threshold  # the dimensionless bound: 2, 2(1+β) or 2(1+β)/(1+2β)
        max_lr = bound / reference
        step = int(last.get("step", ctx.step))
        if ctx.is_open("loss_divergence") or ctx.is_open("nonfinite_values", any_layer=True):
            severity, state = "error", "and the loss is diverging"
        elif ctx.is_open("loss_oscillation", severity="warning"):
            severity, state = "warning", "and the loss oscillates without progress"
        else:
            severity, state = "info", "while the loss has not diverged: gradient descent can hover at this edge " \
                                      "of stability and still learn"
        formula = stability_formula(momentum, nesterov)
        when = "at initialisation" if step == 0 else f"at step {step}"
        first = usable[0]
        at_init = int(first.get("step", -1)) == 0 and _finite(first, "lambda_max") > self.t.margin * \
            _finite(first, "threshold")
        if at_init and step != 0:
            when += (f" (and already at initialisation: λmax {_finite(first, 'lambda_max'):.3g} against "
                     f"{_finite(first, 'threshold'):.3g})")
        advice = "a learning rate below" if severity != "info" else \
            "if the loss starts to oscillate or diverge, a learning rate below"
        message = (f"The top Hessian eigenvalue {lam:.3g} exceeds {formula} = {threshold:.3g} {when} "
                   f"{state}; {advice} {max_lr:.2g} is stable"
                   + (f" (set by λmax = {reference:.3g}, the sharpest measured while the loss was sane)"
                      if reference != lam else "") + ".")
        evidence = {"lambda_max": sig(lam), "threshold": sig(threshold), "lr": sig(lr), "momentum": momentum,
                    "nesterov": nesterov, "ratio": sig(lam / threshold), "reference_lambda_max": sig(reference),
                    "max_stable_lr": sig(max_lr), "suggested_lr": sig(self.t.safety * max_lr, 2),
                    "measured_at": step, "above_at_initialisation": at_init}
        return [Observation("sharpness_above_stability", None, severity, message, evidence,
                            open_after=self.t.open_after)]

    def _reference(self, ctx: JudgeContext, usable: list) -> float:
        """The largest λmax among the ``usable`` measurements taken while the loss was not above ``sane_loss``
        times the initial loss (a measurement whose loss is unknown counts; the latest usable one when
        none qualifies)."""
        limit = self.t.sane_loss * ctx.initial_loss if np.isfinite(ctx.initial_loss) else np.inf

        def sane(entry: dict) -> bool:
            loss = entry.get("loss")
            unknown = not isinstance(loss, (int, float)) or np.isnan(loss)
            return unknown or loss <= limit  # an infinite loss is above any limit

        lams = [_finite(c, "lambda_max") for c in usable if sane(c)]
        return max(lams) if lams else _finite(usable[-1], "lambda_max")
