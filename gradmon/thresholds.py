"""PLACEHOLDER (replaced by the thresholds branch at merge)."""
from __future__ import annotations
import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class JudgingThresholds:
    open_after: int = 3
    close_after: int = 5
    short_run: int = 10
    initial_examples: int = 32
    smooth_examples: int = 256
    min_smooth_records: int = 5
    max_smooth_fraction: float = 0.25
    first_norms: int = 5
    tiny_init_ratio: float = 0.01
    judge_every_max: int = 50
    judgments_per_run: int = 20
    adaptive_min: int = 10
    adaptive_fraction: int = 5
    dead_pool: int = 64
    saturation_margin: float = 0.01


@dataclass(frozen=True)
class Thresholds:
    judging: JudgingThresholds = field(default_factory=JudgingThresholds)
    advice: Any = None

    @classmethod
    def coerce(cls, value: Any) -> "Thresholds":
        return value if isinstance(value, Thresholds) else cls()

    def replace_judging(self, **changes: Any) -> "Thresholds":
        return dataclasses.replace(self, judging=dataclasses.replace(self.judging, **changes))
