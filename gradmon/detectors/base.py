"""Detector base: observations judged over windows, and the hysteresis that turns them into findings.

A detector looks at a :class:`JudgeContext` (the recent window of records and what is known about the run)
and returns the conditions that hold *now*, as :class:`Observation` objects.  The :class:`FindingTracker`
opens a finding only after a condition held for ``open_after`` consecutive judgments and closes it after
``close_after`` judgments without it, so a finding opens and closes rather than firing every step.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.callbacks import RunInfo
from gradmon.findings import Finding, severity_rank
from gradmon.history import LAYER_QUANTITIES, Window
from gradmon.layout import Unit
from gradmon.quantities.inputs import InputScale
from gradmon.thresholds import JudgingThresholds
from gradmon.vocabulary import sig  # noqa: F401  (re-exported: the one rounding, from gradmon.vocabulary)

#: the monitor's default judging numbers (the defaults of the tracker and of the context below)
_JUDGING = JudgingThresholds()

#: findings that starve layers of gradient, and so explain a stalled loss or frozen layers
STARVING: tuple[str, ...] = ("vanishing_gradients", "dead_units", "saturated_activations")


@dataclass
class Observation:
    """A condition that holds at the current judgment."""

    code: str
    layer: str | None
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    open_after: int | None = None  # overrides the tracker's default (1 = open at once)


@dataclass
class JudgeContext:
    """What detectors may read.

    ``window`` holds recent records (oldest first).  Loss levels are smoothed over ``smooth`` records, enough
    for a few hundred examples whatever the batch size (single-example losses are noise): ``initial_loss``
    is the loss at the start (the first records, at least 32 examples), ``best_loss`` the lowest smoothed
    loss so far.  ``new_records`` counts the records since the previous judgment (a detector looking for
    short events scans them all).  ``sizes`` is the number of weights per unit; ``curvature`` the curvature
    measurements so far (dicts).  ``open`` maps the ``(code, layer)`` of findings open before this judgment
    to their severity, and ``observations`` holds what earlier detectors observed in it, so a detector can
    defer to a finding that already explains what it sees.  ``suggested_clip_norm`` is a gradient norm
    typical of the calm part of the run (NaN before there is one).  ``median_records`` is how many of the
    latest records :meth:`medians` summarises by default.
    """

    step: int
    window: Window
    units: Sequence[Unit]
    run: RunInfo
    initial_loss: float
    best_loss: float
    initial_grad_norm: float
    sizes: np.ndarray
    curvature: Sequence[Mapping[str, Any]] = ()
    smooth: int = 5
    new_records: int = 1
    open: Mapping[tuple[str, str | None], str] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    suggested_clip_norm: float = float("nan")
    median_records: int = _JUDGING.median_records
    early: Mapping[str, np.ndarray] = field(default_factory=dict)
    peak_loss: float = float("nan")
    peak_step: int = -1
    low_since_peak: float = float("nan")
    inputs: InputScale | None = None
    _medians: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def is_open(self, code: str, layer: str | None = None, any_layer: bool = False, severity: str = "info") -> bool:
        """Whether a ``code`` finding for ``layer`` (any layer with ``any_layer``) was open before this
        judgment, at ``severity`` or worse: a confirmed condition, not one noisy judgment."""
        floor = severity_rank(severity)
        return any(c == code and (any_layer or lay == layer) and severity_rank(sev) >= floor
                   for (c, lay), sev in self.open.items())

    def observed(self, code: str, layer: str | None = None, any_layer: bool = False) -> bool:
        """Whether ``code`` holds for ``layer`` (any layer with ``any_layer``): an open finding, or an
        observation of an earlier detector in this judgment."""
        return self.is_open(code, layer, any_layer) or any(
            o.code == code and (any_layer or o.layer == layer) for o in self.observations)

    def medians(self, quantity: str, last: int | None = None) -> np.ndarray:
        """Per-layer median of ``quantity`` over the last ``last`` records (``median_records`` by default),
        shape ``(depth,)``.  The medians of every layer quantity over those records are computed together,
        once per judgment, however many detectors ask."""
        last = self.median_records if last is None else last
        if last not in self._medians:
            block = self.window.layers(last=last)  # (n, quantities, layers)
            flat = column_medians(block.reshape(block.shape[0], block.shape[1] * block.shape[2]))
            flat = flat.reshape(block.shape[1:])
            self._medians[last] = dict(zip(LAYER_QUANTITIES, flat))
        return self._medians[last][quantity]

    @property
    def lr(self) -> float:
        """The learning rate at the latest record (schedules change it), else the run's."""
        return latest_lr(self.window, self.run.lr)

    @property
    def depth(self) -> int:
        return len(self.units)

    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]


class Detector:
    """Base class: override ``judge``; ``codes`` lists the finding codes a detector can emit.

    gradmon's detectors take their numbers as a frozen table at construction (``self.t``, see
    :mod:`gradmon.thresholds`) and set ``min_records`` from it."""

    codes: tuple[str, ...] = ()
    #: records the window must hold before this detector judges
    min_records: int = 20

    def judge(self, ctx: JudgeContext) -> list[Observation]:
        raise NotImplementedError


def layer_rms(ctx: JudgeContext, last: int | None = None) -> np.ndarray:
    """Median over the last records (``ctx.median_records`` by default) of each layer's gradient RMS per
    weight, shape ``(depth,)``."""
    norms = ctx.medians("grad_norm", last)
    with np.errstate(divide="ignore", invalid="ignore"):
        return norms / np.sqrt(ctx.sizes)


def trained(ctx: JudgeContext, rms: np.ndarray) -> np.ndarray:
    """Boolean ``(depth,)``: the layers that take part in a depth profile, those with a positive finite
    gradient RMS (``rms``) that the user did not freeze.  A frozen or zero-gradient layer says nothing about
    how the signal travels through the others."""
    frozen = np.array([bool(getattr(u, "frozen", False)) for u in ctx.units], dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(rms) & (rms > 0) & ~frozen


def theil_sen(y: np.ndarray) -> float:
    """Median of the pairwise slopes of ``y`` against its index (a straight-line fit that one odd layer
    cannot tilt); NaN with fewer than two points.  ``(n,) -> float``"""
    n = y.size
    if n < 2:
        return float("nan")
    i, j, gap = _pairs(n)
    return median((y[j] - y[i]) / gap)


@functools.lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index pairs ``i < j`` of a series of ``n`` points and their gaps ``j - i`` (made once per ``n``:
    ``np.triu_indices`` costs a hundred microseconds, the depth profiles ask at every judgment)."""
    i, j = np.triu_indices(n, 1)
    return i, j, (j - i).astype(float)


def rank_correlation(y: np.ndarray) -> float:
    """Spearman's rank correlation between ``y`` and its index, in [-1, 1] (NaN when constant or shorter than
    three): 1 for a series that only rises."""
    n = y.size
    if n < 3:
        return float("nan")
    ranks = np.empty(n)
    ranks[np.argsort(y, kind="stable")] = np.arange(n)
    idx = np.arange(n, dtype=float)
    a, b = ranks - ranks.mean(), idx - idx.mean()
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def latest_lr(window: Window, default: float) -> float:
    """The learning rate of the latest record that has a usable one (finite, positive), else ``default``."""
    lrs = window.scalar("lr")
    lrs = lrs[np.isfinite(lrs) & (lrs > 0)]
    return float(lrs[-1]) if lrs.size else default


def is_above_start(level: float, start: float, *, factor: float, margin: float) -> bool:
    """A loss level clearly above where the run started: above ``factor`` times ``start`` and by more than
    ``margin`` (loss units, so that rounding of a loss near zero does not count)."""
    return bool(np.isfinite(start) and level > factor * start and level > start + margin)


def finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def median(x: np.ndarray | Sequence[float]) -> float:
    """Median of a short series (NaN when empty or when it holds NaN); ``np.median`` without its overhead,
    which dominates on the few dozen values detectors look at."""
    s = np.sort(np.asarray(x, dtype=float), axis=None)
    n = s.size
    if n == 0 or np.isnan(s[-1]):
        return float("nan")
    return 0.5 * float(s[(n - 1) // 2]) + 0.5 * float(s[n // 2])


def block_medians(x: np.ndarray, k: int) -> np.ndarray:
    """Medians of consecutive blocks of ``k`` values ending at the last one (a leftover at the start is
    dropped). ``(n,) -> (n // k,)``"""
    n = (x.size // k) * k
    if n == 0:
        return np.zeros(0)
    blocks = np.sort(x[x.size - n:].reshape(-1, k), axis=1)
    return 0.5 * blocks[:, (k - 1) // 2] + 0.5 * blocks[:, k // 2]


def column_medians(data: np.ndarray) -> np.ndarray:
    """Median of each column over its finite entries (NaN for an all-NaN column). ``(n, k) -> (k,)``"""
    finite = np.isfinite(data)
    ordered = np.sort(np.where(finite, data, np.inf), axis=0)  # non-finite sort last
    count = finite.sum(axis=0)
    if not ordered.shape[0]:
        return np.full(data.shape[1], np.nan)
    cols = np.arange(data.shape[1])
    lo, hi = np.maximum(count - 1, 0) // 2, count // 2
    with np.errstate(invalid="ignore"):
        out = 0.5 * ordered[lo, cols] + 0.5 * ordered[np.minimum(hi, ordered.shape[0] - 1), cols]
    out[count == 0] = np.nan
    return out


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against ``x`` (closed form; NaN with fewer than two points).  The series
    here are a few dozen values at most, where plain Python beats numpy's per-call overhead."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    denom = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / denom if denom > 0 else float("nan")


def smoothed(x: np.ndarray, k: int = 5) -> float:
    """Median of the last ``k`` finite values (NaN if none)."""
    return median(finite(x)[-k:])


def _extend(finding: Finding, obs: Observation, step: int) -> None:
    """``obs`` held again: the finding lasts until ``step``.  Its severity is the worst seen, and its message
    and evidence are those of the latest observation at that severity (they always justify it)."""
    finding.last_step = step
    if severity_rank(obs.severity) >= severity_rank(finding.severity):
        finding.severity = obs.severity
        finding.message, finding.evidence = obs.message, obs.evidence


class FindingTracker:
    """Hysteresis over observations: opens, updates and closes :class:`Finding` objects.

    ``on_open(finding)`` is called once when a finding opens (sinks print and log it there).  At the final
    judgment of a run that had fewer than ``short_run`` judgments, a condition that held on the last two
    opens even without ``open_after`` of them.  The defaults are those of
    :class:`gradmon.thresholds.JudgingThresholds`.
    """

    def __init__(self, open_after: int = _JUDGING.open_after, close_after: int = _JUDGING.close_after,
                 on_open: Callable[[Finding], None] | None = None, short_run: int = _JUDGING.short_run) -> None:
        if open_after < 1 or close_after < 1 or short_run < 1:
            raise ValueError("open_after, close_after and short_run must be >= 1")
        self.open_after = open_after
        self.close_after = close_after
        self.short_run = short_run
        self.on_open = on_open
        self.findings: list[Finding] = []           # every finding ever opened, in order
        self._open: dict[tuple[str, str | None], Finding] = {}
        self._closed: dict[tuple[str, str | None], Finding] = {}
        self._streak: dict[tuple[str, str | None], tuple[int, int]] = {}  # key -> (count, first step)
        self._quiet: dict[tuple[str, str | None], int] = {}
        self.judgments = 0  # full judgments so far

    def update(self, step: int, observations: Sequence[Observation], judged_codes: Sequence[str],
               final: bool = False, full: bool = True) -> list[Finding]:
        """Feed one judgment; ``judged_codes`` are the codes whose detectors ran.  Returns newly opened.

        ``final`` marks the last judgment of a run (see the class docstring for short runs).  ``full=False``
        marks a partial one (a single code, e.g. after a curvature measurement): it does not count towards
        :attr:`judgments`, so it does not make a short run look long.
        """
        if full:
            self.judgments += 1
        opened: list[Finding] = []
        seen = set()
        for obs in observations:
            key = (obs.code, obs.layer)
            seen.add(key)
            self._quiet.pop(key, None)
            current = self._open.get(key)
            if current is not None:
                _extend(current, obs, step)
                continue
            count, first = self._streak.get(key, (0, step))
            count += 1
            self._streak[key] = (count, first)
            need = obs.open_after if obs.open_after is not None else self.open_after
            if final and self.judgments < self.short_run:
                need = min(need, 2)  # a run too short for open_after judgments still reports what held twice
            if count >= need:
                self._streak.pop(key, None)
                earlier = self._closed.pop(key, None)
                if earlier is not None:  # the same condition again: one finding, extended
                    _extend(earlier, obs, step)
                    self._open[key] = earlier
                    continue
                finding = Finding(code=obs.code, severity=obs.severity, layer=obs.layer, first_step=first,
                                  last_step=step, message=obs.message, evidence=obs.evidence)
                self._open[key] = finding
                self.findings.append(finding)
                opened.append(finding)
                if self.on_open is not None:
                    self.on_open(finding)
        judged = set(judged_codes)
        for key in list(self._streak):
            if key not in seen and key[0] in judged:
                del self._streak[key]
        for key in list(self._open):
            if key in seen or key[0] not in judged or key[0] == "nonfinite_values":
                continue
            quiet = self._quiet.get(key, 0) + 1
            if quiet >= self.close_after:
                self._closed[key] = self._open.pop(key)
                self._quiet.pop(key, None)
            else:
                self._quiet[key] = quiet
        return opened

    def open_severities(self) -> dict[tuple[str, str | None], str]:
        """``(code, layer) -> severity`` of the findings open now."""
        return {key: f.severity for key, f in self._open.items()}

    def is_open(self, code: str, layer: str | None = None) -> bool:
        return (code, layer) in self._open
