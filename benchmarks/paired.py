"""The overhead of a timed variant against a bare baseline, from timings taken in adjacent pairs.

The shared machine switches between a fast and a slow state every few seconds, so the benchmarks time the
bare and the instrumented loop right after each other (in alternating order) and compare within each pair;
the best-against-best ratio is reported too (noise only ever adds time).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_overhead(times: Sequence[float], bare: Sequence[float]) -> dict[str, float | list[float]]:
    """Overhead of ``times`` against ``bare``, where ``times[i]`` and ``bare[i]`` were timed next to each other:
    ``paired_median`` the median over pairs of ``times[i] / bare[i] - 1``, ``paired_iqr`` its quartiles,
    ``best_vs_best`` ``min(times) / min(bare) - 1`` (all fractions: 0.05 is 5 %)."""
    if len(times) != len(bare) or not len(times):
        raise ValueError(f"need as many timings as bare ones (and some): got {len(times)} and {len(bare)}")
    ratios = np.asarray(times, dtype=float) / np.asarray(bare, dtype=float) - 1.0
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"paired_median": float(np.median(ratios)), "paired_iqr": [float(q1), float(q3)],
            "best_vs_best": min(times) / min(bare) - 1.0}
