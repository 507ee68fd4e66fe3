"""``gradmon doctor``: validate suggested fixes by short forked trials, and health-aware search trials.

The baseline runs the spec with the monitor for a budget of steps.  Every suggestion attached to its
warning and error findings (and sensible combinations: the first fix of each finding together) becomes a
trial: the same spec with the suggestion's patch, the same seed and the same budget.  Trials run in parallel
processes and are ranked by measured effect: findings that stay open (errors first), then the findings of
the baseline that closed, then the loss reached (validation loss when there is a test split).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.progress import progress_bar
from gradmon.report.text import cli_value, patch_to_cli

SCHEMA = "gradmon.doctor/1"


@dataclass
class TrialOutcome:
    """A run of the spec with one patch (or none, for the baseline)."""

    suggestions: list[str]
    patch: dict[str, Any]
    final_loss: float
    val_loss: float | None
    accuracy: float | None
    findings: list[str]
    errors: int
    stopped: str | None
    closed: list[str] = field(default_factory=list)
    rank: int = 0

    @property
    def loss(self) -> float:
        value = self.val_loss if self.val_loss is not None else self.final_loss
        return value if value is not None and math.isfinite(value) else math.inf

    def sort_key(self) -> tuple:
        return (self.errors, len(self.findings), -len(self.closed), self.loss)

    def to_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "suggestions": self.suggestions, "patch": self.patch,
               "final_loss": _num(self.final_loss), "findings": self.findings, "closed": self.closed}
        if self.val_loss is not None:
            out["val_loss"] = _num(self.val_loss)
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.stopped:
            out["stopped"] = self.stopped
        return out


@dataclass
class DoctorResult:
    spec: dict[str, Any]
    budget_steps: int
    baseline: TrialOutcome
    trials: list[TrialOutcome]

    @property
    def nothing_to_fix(self) -> bool:
        return not self.baseline.findings

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "budget_steps": self.budget_steps,
                "baseline": {"final_loss": _num(self.baseline.final_loss), "findings": self.baseline.findings,
                             **({"val_loss": _num(self.baseline.val_loss)} if self.baseline.val_loss is not None
                                else {}),
                             **({"accuracy": self.baseline.accuracy} if self.baseline.accuracy is not None
                                else {})},
                "trials": [t.to_dict() for t in self.trials]}


def _num(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def run_trial(spec: Mapping[str, Any], patch: Mapping[str, Any], suggestions: list[str], budget_steps: int,
              logdir: str | None = None) -> tuple[TrialOutcome, list[dict[str, Any]]]:
    """Run ``spec`` + ``patch`` for ``budget_steps`` steps; returns the outcome and the findings (dicts)."""
    from core.spec import apply_patch
    from gradmon.run import run_spec

    trial_spec = apply_patch(spec, patch) if patch else dict(spec)
    result = run_spec(trial_spec, logdir, progress=False, console=False, max_steps=budget_steps)
    th = result.train_history
    findings = [f for f in result.report.findings if f.severity in ("warning", "error")]
    outcome = TrialOutcome(suggestions=suggestions, patch=dict(patch), final_loss=result.final_loss,
                           val_loss=float(th["val_loss"][-1]) if th.get("val_loss") else None,
                           accuracy=result.final_accuracy, findings=sorted({f.code for f in findings}),
                           errors=sum(f.severity == "error" for f in findings),
                           stopped=th.get("stopped") if not str(th.get("stopped", "")).startswith("step budget")
                           else None)
    return outcome, [f.to_dict() for f in result.report.findings]


def _trial_job(args: tuple) -> TrialOutcome:
    spec, patch, codes, budget, logdir = args
    return run_trial(spec, patch, codes, budget, logdir)[0]


def candidate_fixes(findings: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Distinct patches from the suggestions of the warning and error findings, in table order."""
    out: list[tuple[list[str], dict[str, Any]]] = []
    seen: set[str] = set()
    for f in findings:
        if f["severity"] not in ("warning", "error"):
            continue
        for s in f["suggestions"]:
            key = repr(sorted(s["patch"].items()))
            if s["patch"] and key not in seen:
                seen.add(key)
                out.append(([s["code"]], dict(s["patch"])))
    return out


def combination(ranked: list[TrialOutcome], baseline: TrialOutcome) -> tuple[list[str], dict[str, Any]] | None:
    """The two best single fixes together, when both measurably helped and touch different spec keys
    (ReLU + He init + batch normalization, say)."""
    helped = [t for t in ranked if t.closed and t.errors == 0 and t.loss <= baseline.loss]
    if len(helped) < 2 or set(helped[0].patch) & set(helped[1].patch):
        return None
    return helped[0].suggestions + helped[1].suggestions, {**helped[0].patch, **helped[1].patch}


def _run_jobs(jobs: list[tuple], workers: int | None, bar: Any) -> list[TrialOutcome]:
    outcomes: list[TrialOutcome] = []
    n = workers or min(len(jobs), os.cpu_count() or 1)
    if n > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n) as pool:
            for outcome in pool.map(_trial_job, jobs):
                outcomes.append(outcome)
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            outcomes.append(_trial_job(job))
            if bar is not None:
                bar.update(1)
    return outcomes


def _rank(outcomes: list[TrialOutcome], baseline: TrialOutcome) -> None:
    for t in outcomes:
        t.closed = sorted(set(baseline.findings) - set(t.findings))
    outcomes.sort(key=TrialOutcome.sort_key)
    for i, t in enumerate(outcomes, start=1):
        t.rank = i


def doctor(spec: Mapping[str, Any], budget_steps: int = 300, workers: int | None = None,
           progress: bool | None = None, logdir: str | os.PathLike | None = None) -> DoctorResult:
    """Try the baseline's suggested fixes in short trials and rank them by measured effect."""
    if isinstance(budget_steps, bool) or not isinstance(budget_steps, int) or budget_steps < 1:
        raise ValueError(f"--budget-steps must be a positive integer, got {budget_steps!r}")
    spec = dict(spec)
    root = str(logdir) if logdir is not None else None
    baseline, findings = run_trial(spec, {}, [], budget_steps, os.path.join(root, "baseline") if root else None)
    candidates = candidate_fixes(findings)
    trial_dir = (lambda i: os.path.join(root, f"trial{i}")) if root else (lambda i: None)
    jobs = [(spec, patch, codes, budget_steps, trial_dir(i + 1)) for i, (codes, patch) in enumerate(candidates)]
    outcomes: list[TrialOutcome] = []
    if jobs:
        bar = progress_bar(len(jobs) + 1, progress, "doctor", "trial")
        outcomes = _run_jobs(jobs, workers, bar)
        _rank(outcomes, baseline)
        combo = combination(outcomes, baseline)
        if combo is not None:
            outcomes += _run_jobs([(spec, combo[1], combo[0], budget_steps, trial_dir(len(jobs) + 1))], 1, bar)
            _rank(outcomes, baseline)
        if bar is not None:
            bar.close()
    result = DoctorResult(spec=spec, budget_steps=budget_steps, baseline=baseline, trials=outcomes)
    if root:
        _write_into_report(os.path.join(root, "baseline"), result)
    return result


def _write_into_report(run_dir: str, result: DoctorResult) -> None:
    """Add the ranked trials to the baseline's report files."""
    from pathlib import Path

    from gradmon.findings import HealthReport
    from gradmon.history import History

    path = Path(run_dir)
    report = HealthReport.load(path)
    report.extra["doctor"] = result.to_dict()
    history = History.load(path / "history.npz") if (path / "history.npz").exists() else None
    for name in ("report.json", "report.html"):
        try:
            report.save(path / name, history=history)
        except ImportError:
            pass


def render_doctor(result: DoctorResult) -> str:
    """A table of the trials, best first."""
    b = result.baseline
    lines = [f"baseline ({result.budget_steps} steps): loss {b.loss:.4g}"
             + (f", accuracy {b.accuracy:.1%}" if b.accuracy is not None else "")
             + f", findings: {', '.join(b.findings) or 'none'}"]
    if result.nothing_to_fix:
        lines.append("nothing to fix: the baseline raised no warning or error.")
        return "\n".join(lines)
    lines.append("")
    rows = [(str(t.rank), "+".join(t.suggestions), f"{t.loss:.4g}", f"{t.accuracy:.1%}" if t.accuracy is not None
             else "-", ", ".join(t.closed) or "-", ", ".join(t.findings) or "-") for t in result.trials]
    head = ("rank", "fix", "loss", "acc", "closed", "still open")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if i != 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if result.trials:
        best = result.trials[0]
        lines += ["", f"best fix: {'+'.join(best.suggestions)}  ->  gradmon run SPEC {patch_to_cli(best.patch)}"]
    return "\n".join(lines)


def health_trial(budget_steps: int | None = None):
    """A search trial (for :func:`core.tune.search`) that monitors health and prunes on error findings."""
    return _HealthTrial(budget_steps)


class _HealthTrial:
    def __init__(self, budget_steps: int | None) -> None:
        self.budget_steps = budget_steps

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        from gradmon.run import run_spec

        result = run_spec(spec, None, progress=False, console=False, max_steps=self.budget_steps,
                          stop_on_error=True)
        th = result.train_history
        metrics: dict[str, Any] = {"final_loss": result.final_loss, "steps": th.get("steps", 0),
                                   "status": result.report.status,
                                   "findings": sorted({f.code for f in result.report.worst("warning")})}
        if th.get("val_loss"):
            metrics["val_loss"] = th["val_loss"][-1]
        if result.final_accuracy is not None:
            metrics["accuracy"] = result.final_accuracy
        stopped = th.get("stopped")
        if stopped and not str(stopped).startswith("step budget"):
            metrics["pruned"] = stopped
        return metrics


def render_leaderboard(trials: list) -> str:
    """The search leaderboard with each trial's health."""
    if not trials:
        return "no trials"
    keys = list(trials[0].params)
    head = f"{'rank':<5}" + "".join(f"{k:<18}" for k in keys) + f"{'loss':>10}{'acc':>8}  {'health':<8} notes"
    lines = [head]
    for t in trials:
        m = t.metrics
        loss = m.get("val_loss", m.get("final_loss", math.nan))
        acc = f"{m['accuracy']:.1%}" if m.get("accuracy") is not None else "-"
        note = f"pruned: {m['pruned']}" if m.get("pruned") else ", ".join(m.get("findings", [])) or "-"
        lines.append(f"{t.rank:<5}" + "".join(f"{cli_value(t.params[k]):<18}" for k in keys)
                     + f"{loss:>10.4g}{acc:>8}  {m.get('status', '-'):<8} {note}")
    return "\n".join(lines)

