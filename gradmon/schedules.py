"""Schedules are values: callables ``step -> bool`` saying whether to measure at that step.

>>> from gradmon.schedules import every, log_spaced, at
>>> [s for s in range(12) if every(5)(s)]
[0, 5, 10]
>>> [s for s in range(40) if log_spaced(base=2)(s)]
[0, 1, 2, 4, 8, 16, 32]
"""

from __future__ import annotations

from typing import Callable, Iterable

Schedule = Callable[[int], bool]


def every(n: int, start: int = 0) -> Schedule:
    """True at ``start, start + n, start + 2n, ...``; ``n = 0`` means never."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"every(n) needs a non-negative integer, got {n!r}")
    if n == 0:
        return lambda step: False
    return lambda step: step >= start and (step - start) % n == 0


def at(steps: Iterable[int]) -> Schedule:
    """True exactly at the given steps."""
    chosen = frozenset(int(s) for s in steps)
    return lambda step: step in chosen


def log_spaced(base: float = 2.0, start: int = 0) -> Schedule:
    """True at 0 and at the steps nearest to ``base**k`` (dense early, sparse late)."""
    if not base > 1:
        raise ValueError(f"log_spaced needs base > 1, got {base}")
    marks: set[int] = {0}
    value = 1.0
    while value < 1e12:
        marks.add(int(round(value)))
        value *= base
    return lambda step: step >= start and (step - start) in marks


def union(*schedules: Schedule) -> Schedule:
    """True where any of ``schedules`` is."""
    return lambda step: any(s(step) for s in schedules)
