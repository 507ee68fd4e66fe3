"""Update-to-weight ratio: ``||ΔW|| / ||W||`` per layer, median over the window.

A rule of thumb puts healthy ratios near 1e-3.  Above ``too_large`` each step rewrites a fifth of the
weights, which is overshooting unless the loss is still falling fast (halving within the window); below
``too_small`` while the loss is still high, the layer is effectively frozen — unless dead or saturated units
or vanishing gradients already explain it (their findings carry the fix; a larger step would not help a layer whose
gradient is zero).  A layer the user froze (``Unit.frozen``, a zero gradient, or no update at all: outside the
optimizer) is left alone: it is not moving on purpose.  The numbers are in :class:`~gradmon.thresholds.UpdateRatioThresholds`.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import STARVING, Detector, JudgeContext, Observation, median, smoothed
from gradmon.thresholds import UpdateRatioThresholds
from gradmon.vocabulary import sig


class UpdateRatio(Detector):
    codes = ("update_ratio",)

    def __init__(self, thresholds: UpdateRatioThresholds | None = None) -> None:
        self.t = thresholds if thresholds is not None else UpdateRatioThresholds()
        self.min_records = self.t.min_records

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        t = self.t
        ratios = ctx.medians("update_ratio")
        loss_now = smoothed(ctx.window.scalar("loss"), t.loss_records)
        still_high = np.isfinite(ctx.initial_loss) and loss_now > t.high_loss * ctx.initial_loss
        # large steps that still pay off (the loss halves within the window) are not a problem
        recent = ctx.window.scalar("loss", last=t.improving_window)
        recent = recent[np.isfinite(recent)]
        b = t.improving_block
        improving = recent.size >= t.improving_min_records and \
            median(recent[-b:]) < t.improving_factor * median(recent[:b])
        # dead units, saturated units or vanishing gradients anywhere starve layers of gradient: their findings
        # (judged before this one) explain frozen layers and carry the fix
        starved = any(ctx.observed(code, any_layer=True) for code in STARVING)
        grads = ctx.medians("grad_norm")
        out = []
        for unit, r, g in zip(ctx.units, ratios, grads):
            if not np.isfinite(r) or r == 0 or g == 0 or getattr(unit, "frozen", False):
                continue  # frozen by the user, or without a gradient: not moving on purpose
            if r > t.too_large and not improving:
                message = (f"{unit.name}'s updates are {r:.2g} of its weights per step (healthy is near 1e-3): "
                           f"each step rewrites the layer, so training overshoots.")
                out.append(Observation("update_ratio", unit.name, "warning", message,
                                       {"update_ratio": sig(float(r)), "direction": "too_large",
                                        "lr": sig(ctx.lr)}))
            elif r < t.too_small and still_high and not starved:
                size = "zero" if r == 0 else f"only {r:.2g} of its weights"
                message = (f"{unit.name}'s updates are {size} per step while the loss is still {loss_now:.3g}: "
                           f"the layer is effectively frozen.")
                out.append(Observation("update_ratio", unit.name, "warning", message,
                                       {"update_ratio": sig(float(r)), "direction": "too_small",
                                        "lr": sig(ctx.lr)}))
        return out
