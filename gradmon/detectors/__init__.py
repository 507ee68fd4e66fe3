"""Detectors: one per pathology family; each reads windows of history and emits observations.

``DETECTORS`` maps a name to a detector class; :func:`default_detectors` builds one of each, with its
table of :class:`~gradmon.thresholds.Thresholds` (same name).  Non-finite values are judged by the monitor
at the step they appear (no window), see :mod:`gradmon.monitor`.
"""

from __future__ import annotations

from gradmon.detectors.activations import DeadUnits, SaturatedActivations
from gradmon.detectors.base import Detector, FindingTracker, JudgeContext, Observation
from gradmon.detectors.gradients import ExplodingGradients, VanishingGradients
from gradmon.detectors.inputs import UnscaledInputs
from gradmon.detectors.loss import LossDivergence, LossOscillation, LossPlateau
from gradmon.detectors.sharpness import SharpnessAboveStability
from gradmon.detectors.updates import UpdateRatio
from gradmon.thresholds import Thresholds

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
    "unscaled_inputs": UnscaledInputs,
}


def default_detectors(names: list[str] | None = None, thresholds: Thresholds | None = None) -> list[Detector]:
    """One detector per name (all by default), always in :data:`DETECTORS` order: a detector that defers to
    a finding another one explains (an update ratio to dead units, a plateau to vanishing gradients) runs
    after it.  Each gets its table of ``thresholds`` (the defaults when None).  ValueError listing the
    valid names for an unknown one."""
    chosen = set(DETECTORS) if names is None else set(names)
    unknown = [n for n in (names or []) if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector {unknown[0]!r}; use one of {', '.join(DETECTORS)}")
    tables = (thresholds if thresholds is not None else Thresholds()).tables()
    return [cls(tables[name]) for name, cls in DETECTORS.items() if name in chosen]


__all__ = ["DETECTORS", "Detector", "FindingTracker", "JudgeContext", "Observation", "default_detectors"]
