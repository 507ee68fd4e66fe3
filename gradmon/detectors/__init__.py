"""Detectors: one per pathology family; each reads windows of history and emits observations.

``DETECTORS`` maps a name to a detector class; :func:`default_detectors` builds one of each.
Non-finite values are judged by the monitor at the step they appear (no window), see
:mod:`gradmon.monitor`.
"""

from __future__ import annotations

from gradmon.detectors.activations import DeadUnits, SaturatedActivations
from gradmon.detectors.base import Detector, FindingTracker, JudgeContext, Observation
from gradmon.detectors.gradients import ExplodingGradients, VanishingGradients
from gradmon.detectors.loss import LossDivergence, LossOscillation, LossPlateau
from gradmon.detectors.sharpness import SharpnessAboveStability
from gradmon.detectors.updates import UpdateRatio

DETECTORS: dict[str, type[Detector]] = {
    "vanishing_gradients": VanishingGradients,
    "exploding_gradients": ExplodingGradients,
    "saturated_activations": SaturatedActivations,
    "dead_units": DeadUnits,
    "sharpness_above_stability": SharpnessAboveStability,
    "loss_divergence": LossDivergence,
    "loss_oscillation": LossOscillation,
    "loss_plateau": LossPlateau,
    "update_ratio": UpdateRatio,
}


def default_detectors(names: list[str] | None = None) -> list[Detector]:
    """One detector per name (all by default); ValueError listing the valid names for an unknown one."""
    chosen = list(DETECTORS) if names is None else names
    out = []
    for name in chosen:
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")
        out.append(DETECTORS[name]())
    return out


__all__ = ["DETECTORS", "Detector", "FindingTracker", "JudgeContext", "Observation", "default_detectors"]
