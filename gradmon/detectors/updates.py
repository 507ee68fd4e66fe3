"""Update-to-weight ratio: ``||ΔW|| / ||W||`` per layer, median over the window.

A rule of thumb puts healthy ratios near 1e-3.  Above ``too_large`` each step rewrites a fifth of the
weights, which is overshooting unless the loss is still falling fast (halving within the window); below
``too_small`` while the loss is still high, the layer is effectively frozen.
"""

from __future__ import annotations

import numpy as np

from gradmon.detectors.base import Detector, JudgeContext, Observation, median, sig, smoothed


class UpdateRatio(Detector):
    codes = ("update_ratio",)
    too_large = 0.2
    too_small = 1e-6
    high_loss = 0.5     # "still high": above this fraction of the initial loss

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        ratios = ctx.medians("update_ratio")
        loss_now = smoothed(ctx.window.scalar("loss"))
        still_high = np.isfinite(ctx.initial_loss) and loss_now > self.high_loss * ctx.initial_loss
        # large steps that still pay off (the loss halves within the window) are not a problem
        recent = ctx.window.scalar("loss", last=50)
        recent = recent[np.isfinite(recent)]
        improving = recent.size >= 10 and median(recent[-5:]) < 0.5 * median(recent[:5])
        out = []
        for unit, r in zip(ctx.units, ratios):
            if not np.isfinite(r):
                continue
            if r > self.too_large and not improving:
                message = (f"{unit.name}'s updates are {r:.2g} of its weights per step (healthy is near 1e-3): "
                           f"each step rewrites the layer, so training overshoots.")
                out.append(Observation("update_ratio", unit.name, "warning", message,
                                       {"update_ratio": sig(float(r)), "direction": "too_large",
                                        "lr": sig(ctx.run.lr)}))
            elif r < self.too_small and still_high:
                message = (f"{unit.name}'s updates are only {r:.2g} of its weights per step while the loss is "
                           f"still {loss_now:.3g}: the layer is effectively frozen.")
                out.append(Observation("update_ratio", unit.name, "warning", message,
                                       {"update_ratio": sig(float(r)), "direction": "too_small",
                                        "lr": sig(ctx.run.lr)}))
        return out
