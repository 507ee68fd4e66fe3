"""``gradmon doctor``: validate suggested fixes by short forked trials, and health-aware search trials.

(A little over 450 lines: the trials, their ranking against the baseline and their table are one concept, and
``gradmon tune``'s health-aware trial shares them.)

The baseline runs the spec with the monitor for a budget of steps.  Every suggestion attached to its
warning and error findings (and a combination of the two best fixes) becomes a trial: the same spec with the
suggestion's patch, the same seed and the same budget; the first trial is the first fix of the baseline's root
cause (:mod:`gradmon.diagnosis`), the one the console, the report and ``gradmon check`` name, and the table
says how it measured.  Trials run in parallel processes.

What is measured, for the baseline and every trial alike (:func:`measure`):

- ``loss``: the validation loss on the spec's held-out split after the budget, or, when the spec has no
  held-out split, the mean training loss over the last :data:`TRAIN_LOSS_WINDOW` steps.  A run that stopped
  on a non-finite value diverged: its loss is ``inf`` (``null`` in JSON, where ``diverged`` says why).
- ``accuracy`` (classification): validation accuracy, or the training accuracy of the last epoch.

Each trial is compared with the baseline (``delta_loss`` is the relative change of the loss, see
:func:`gradmon.report.text.loss_change`; ``delta_accuracy`` the difference in accuracy): ``worse`` when its
loss is more than :data:`LOSS_TOLERANCE` (relative) above the baseline's or its accuracy more than
:data:`ACCURACY_TOLERANCE` below; ``better`` when it is not worse, its loss or accuracy improved beyond the
same margins, and it leaves no error finding open (a run that is still broken did not get better, whatever
its loss); ``same`` otherwise.  The ranking puts every ``better`` trial first (by loss to three significant
digits, then accuracy, then more findings closed), then ``same`` (no error left open first, then most
findings closed), then ``worse`` (by loss).

    result = doctor(load_spec("gradmon/scenarios/vanishing.toml"), budget_steps=200,
                    source="gradmon/scenarios/vanishing.toml")
    print(render_doctor(result))
"""

from __future__ import annotations

import math
import os
import shlex
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.files import atomic_write_text
from core.progress import LineProgress, StepLines, progress_bar, progress_or_lines, write_line
from core.tune import json_safe
from gradmon.report.text import DOCTOR_COLUMNS, cli_value, doctor_rows, format_loss, loss_change, patch_to_cli
from gradmon.vocabulary import sig

SCHEMA = "gradmon.doctor/1"

#: a trial's loss differs from the baseline's only beyond this relative margin (±10 %)
LOSS_TOLERANCE = 0.10
#: a trial's accuracy differs from the baseline's only beyond this absolute margin (±2 points)
ACCURACY_TOLERANCE = 0.02
#: steps averaged for the training-loss measure (used when the spec has no held-out split)
TRAIN_LOSS_WINDOW = 20

VERDICTS = ("better", "same", "worse")


@dataclass
class TrialOutcome:
    """A run of the spec with one patch (or none, for the baseline), as measured (see :func:`measure`).

    ``loss`` is the ranking loss (``inf`` when the run diverged; ``null`` in JSON, with ``diverged``);
    ``train_loss`` the mean training loss over the last :data:`TRAIN_LOSS_WINDOW` steps; ``findings`` the
    codes of its warning and error findings; ``closed`` the baseline's findings this trial does not have;
    ``stopped`` why it ended before its budget; ``verdict`` and the deltas compare it with the baseline
    (``better``, ``same`` or ``worse``; ``delta_loss`` the relative change of the loss,
    :func:`~gradmon.report.text.loss_change`, ``delta_accuracy`` trial minus baseline).
    """

    suggestions: list[str]
    patch: dict[str, Any]
    loss: float
    accuracy: float | None
    train_loss: float
    findings: list[str]
    errors: int
    stopped: str | None
    diverged: bool = False
    closed: list[str] = field(default_factory=list)
    rank: int = 0
    verdict: str = ""
    delta_loss: float | None = None
    delta_accuracy: float | None = None
    label: str = ""
    root_cause: dict[str, Any] | None = None   #: the run's root cause (code, layer), as its report names it
    first_fix: dict[str, Any] | None = None    #: that root's first fix (code, patch)

    def __post_init__(self) -> None:
        self.diverged = self.diverged or math.isinf(self.loss)  # an infinite loss is how divergence is measured

    def sort_key(self) -> tuple:
        """Order within the trial's verdict group (see the module docstring)."""
        if self.verdict == "better":
            return (0, sig(self.loss), -(self.accuracy or 0.0), -len(self.closed), len(self.findings))
        if self.verdict == "same":
            return (1, self.errors > 0, -len(self.closed), len(self.findings), self.loss)
        return (2, self.loss, -(self.accuracy or 0.0))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "suggestions": self.suggestions, "patch": self.patch,
                               "final_loss": self.loss, "findings": self.findings, "closed": self.closed,
                               "label": self.label or "+".join(self.suggestions), "verdict": self.verdict,
                               "delta_loss": self.delta_loss, "train_loss": self.train_loss,
                               "diverged": self.diverged}
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
            out["delta_accuracy"] = self.delta_accuracy
        if self.stopped:
            out["stopped"] = self.stopped
        return json_safe(out)

    def is_fix(self, fix: Mapping[str, Any] | None) -> bool:
        """Whether this trial ran exactly the patch of ``fix`` (a suggestion dict)."""
        return fix is not None and dict(fix.get("patch") or {}) == self.patch and bool(self.patch)


@dataclass
class DoctorResult:
    """The baseline, the ranked trials (rank 1 first) and what ``loss`` means for all of them."""

    spec: dict[str, Any]
    budget_steps: int
    baseline: TrialOutcome
    trials: list[TrialOutcome]
    loss_measure: str = ""
    logdir: str | None = None
    source: str | None = None   #: the spec's path: makes the table's "best fix" line a command
    overrides: list[str] = field(default_factory=list)   #: the ``--set`` arguments the spec was loaded with
    reports: list[Path] = field(default_factory=list)   #: the baseline's report files written with the ranking

    @property
    def nothing_to_fix(self) -> bool:
        return not self.baseline.findings

    def to_dict(self) -> dict[str, Any]:
        """The ``gradmon.doctor/1`` document (strict JSON: a non-finite number is ``null``; the loss of a run
        that diverged is null and its ``diverged`` is true)."""
        b = self.baseline
        baseline: dict[str, Any] = {"final_loss": b.loss, "findings": b.findings, "train_loss": b.train_loss,
                                    "diverged": b.diverged}
        if b.accuracy is not None:
            baseline["accuracy"] = b.accuracy
        if b.stopped:
            baseline["stopped"] = b.stopped
        if b.root_cause is not None:
            baseline["root_cause"] = b.root_cause
            baseline["first_fix"] = b.first_fix
        return json_safe({"schema": SCHEMA, "budget_steps": self.budget_steps, "loss_measure": self.loss_measure,
                          "tolerance": {"loss_relative": LOSS_TOLERANCE, "accuracy": ACCURACY_TOLERANCE},
                          "deltas": {"loss": "relative", "accuracy": "absolute"},
                          "baseline": baseline, "trials": [t.to_dict() for t in self.trials]})


class _LossTail:
    """Keeps the training loss of the last ``n`` steps (a hook-protocol callback)."""

    def __init__(self, n: int) -> None:
        self.losses: deque[float] = deque(maxlen=n)

    def on_after_backward(self, state: Any) -> None:
        self.losses.append(float(state.loss))

    def mean(self) -> float:
        return float(sum(self.losses) / len(self.losses)) if self.losses else math.nan


def loss_measure(n_validation: int) -> str:
    """What ``loss`` and ``accuracy`` mean in the doctor's table and JSON, in words."""
    if n_validation:
        return (f"validation loss (and accuracy) on the {n_validation} held-out examples after the budget; "
                "none for a run that diverged")
    return (f"mean training loss over the last {TRAIN_LOSS_WINDOW} steps (accuracy: last epoch's training "
            "accuracy); none for a run that diverged")


def measure(result: Any, tail: _LossTail) -> tuple[float, float | None, bool]:
    """``(loss, accuracy, diverged)`` of a finished run (a :class:`gradmon.run.RunResult`): a run that ended
    before its budget, or whose loss is not finite, diverged (its loss is ``inf``)."""
    th = result.train_history
    diverged = result.stopped_early is not None
    if result.n_validation and th.get("val_loss"):
        loss = float(th["val_loss"][-1])
        acc = th.get("val_accuracy")
    else:
        loss = tail.mean()
        acc = th.get("accuracy")
    accuracy = float(acc[-1]) if acc else None
    if diverged or not math.isfinite(loss):
        return math.inf, None, True
    return loss, accuracy, False


def trial_name(index: int, suggestions: Sequence[str]) -> str:
    """A trial's run directory (and TensorBoard run) name: ``trial2-relu+he_init``."""
    return f"trial{index}-{'+'.join(suggestions) or 'baseline'}"


def run_trial(spec: Mapping[str, Any], patch: Mapping[str, Any], suggestions: list[str], budget_steps: int,
              logdir: str | None = None, lines: bool = False) -> tuple[TrialOutcome, list[dict[str, Any]], str]:
    """Run ``spec`` + ``patch`` for ``budget_steps`` steps (``lines``: step progress on stderr).

    Returns the outcome, the run's findings (report dicts) and the loss measure in words.  Its TensorBoard
    run writes no HPARAMS experiment: :func:`doctor` writes one for all trials.
    """
    from core.spec import apply_patch
    from gradmon.run import run_spec

    trial_spec = apply_patch(spec, patch) if patch else dict(spec)
    tail = _LossTail(TRAIN_LOSS_WINDOW)
    extra: list[Any] = [StepLines(f"doctor: {'+'.join(suggestions) or 'baseline'}", budget_steps)] if lines else []
    result = run_spec(trial_spec, logdir, progress=False, console=False, max_steps=budget_steps,
                      callbacks=[tail, *extra], monitor_options={"hparams": ()})
    loss, accuracy, diverged = measure(result, tail)
    findings = [f for f in result.report.findings if f.severity in ("warning", "error")]
    root, fix = result.report.root_cause, result.report.primary_fix
    outcome = TrialOutcome(suggestions=suggestions, patch=dict(patch), loss=loss, accuracy=accuracy,
                           train_loss=tail.mean(), findings=sorted({f.code for f in findings}),
                           errors=sum(f.severity == "error" for f in findings), stopped=result.stopped_early,
                           diverged=diverged,
                           root_cause={"code": root.code, "layer": root.layer} if root is not None else None,
                           first_fix={"code": fix.code, "patch": dict(fix.patch)} if fix is not None else None)
    return outcome, [f.to_dict() for f in result.report.findings], loss_measure(result.n_validation)


def _trial_job(args: tuple) -> TrialOutcome:
    spec, patch, codes, budget, logdir, lines = args
    return run_trial(spec, patch, codes, budget, logdir, lines)[0]


def candidate_fixes(findings: list[dict[str, Any]],
                    first: Mapping[str, Any] | None = None) -> list[tuple[list[str], dict[str, Any]]]:
    """Distinct patches from the suggestions of the warning and error findings, in table order; ``first`` (the
    root cause's first fix, a suggestion dict) leads when it has a patch."""
    out: list[tuple[list[str], dict[str, Any]]] = []
    seen: set[str] = set()
    if first is not None and first.get("patch"):
        seen.add(repr(sorted(first["patch"].items())))
        out.append(([first["code"]], dict(first["patch"])))
    for f in findings:
        if f["severity"] not in ("warning", "error"):
            continue
        for s in f["suggestions"]:
            key = repr(sorted(s["patch"].items()))
            if s["patch"] and key not in seen:
                seen.add(key)
                out.append(([s["code"]], dict(s["patch"])))
    return out


def compare(trial: TrialOutcome, baseline: TrialOutcome) -> None:
    """Set ``trial``'s ``closed``, deltas and ``verdict`` against ``baseline`` (see the module docstring)."""
    trial.closed = sorted(set(baseline.findings) - set(trial.findings))
    b, t = baseline.loss, trial.loss
    trial.delta_loss = loss_change(t, b)
    worse = t > b * (1 + LOSS_TOLERANCE)
    better = t < b * (1 - LOSS_TOLERANCE)
    trial.delta_accuracy = None
    if trial.accuracy is not None and baseline.accuracy is not None:
        trial.delta_accuracy = trial.accuracy - baseline.accuracy
        worse = worse or trial.delta_accuracy < -ACCURACY_TOLERANCE
        better = better or trial.delta_accuracy > ACCURACY_TOLERANCE
    trial.verdict = "worse" if worse else ("better" if better and trial.errors == 0 else "same")


def combination(ranked: list[TrialOutcome], baseline: TrialOutcome) -> tuple[list[str], dict[str, Any]] | None:
    """The two best single fixes together, when both measurably helped, closed findings, left no error open
    and touch different spec keys (ReLU + He init with batch normalization, say)."""
    helped = [t for t in ranked if t.verdict == "better" and t.closed]
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
                _tick(bar, outcome)
    else:
        for job in jobs:
            outcomes.append(_trial_job(job))
            _tick(bar, outcome=outcomes[-1])
    return outcomes


def _tick(bar: Any, outcome: TrialOutcome) -> None:
    """One trial done: a terminal's bar moves; a log gets a line naming the trial and its loss."""
    if bar is None:
        return
    if isinstance(bar, LineProgress):
        name = "+".join(outcome.suggestions) or "baseline"
        bar.update(1, f"{name}: loss {format_loss(outcome.loss, outcome.diverged)}"
                      + (f", findings {', '.join(outcome.findings)}" if outcome.findings else ", no findings"))
    else:
        bar.update(1)


def _rank(outcomes: list[TrialOutcome], baseline: TrialOutcome) -> None:
    for t in outcomes:
        compare(t, baseline)
    outcomes.sort(key=TrialOutcome.sort_key)
    for i, t in enumerate(outcomes, start=1):
        t.rank = i
    _label(outcomes)


def _label(outcomes: list[TrialOutcome]) -> None:
    """``relu+he_init``; when several trials share a name, the patch values that tell them apart."""
    names = Counter("+".join(t.suggestions) for t in outcomes)
    for t in outcomes:
        name = "+".join(t.suggestions)
        if names[name] > 1:
            name += " (" + ", ".join(f"{k.split('.')[-1]}={cli_value(v)}" for k, v in t.patch.items()) + ")"
        t.label = name


def doctor(spec: Mapping[str, Any], budget_steps: int = 300, workers: int | None = None,
           progress: bool | None = None, logdir: str | os.PathLike | None = None,
           trial_logs: bool = True, source: str | os.PathLike | None = None,
           overrides: Sequence[str] = ()) -> DoctorResult:
    """Try the baseline's suggested fixes in short trials and rank them by measured effect.

    With ``logdir``, the baseline's run (events, ``report.json`` and ``report.html`` with the ranking) goes
    to ``logdir/baseline``, the table to ``logdir/doctor.txt``, and, with ``trial_logs``, each trial's run to
    ``logdir/trialN``.  The progress bar counts the baseline and every trial.  ``source`` (the spec's path)
    and ``overrides`` (the ``--set`` arguments it was loaded with) only make the table's "best fix" line a
    command that reproduces the fix.
    """
    if isinstance(budget_steps, bool) or not isinstance(budget_steps, int) or budget_steps < 1:
        raise ValueError(f"--budget-steps must be a positive integer, got {budget_steps!r}")
    spec = dict(spec)
    root = str(logdir) if logdir is not None else None
    bar = progress_bar(1, progress, "doctor", "trial")
    lines = bar is None and progress is None  # not a terminal: progress as lines in the log
    if lines:
        write_line(f"doctor: baseline ({budget_steps} steps) ...")
    baseline, findings, measure_text = run_trial(spec, {}, [], budget_steps,
                                                 os.path.join(root, "baseline") if root else None, lines)
    baseline.label = "baseline (no patch)"
    candidates = candidate_fixes(findings, baseline.first_fix)
    trial_dir = ((lambda i, codes: os.path.join(root, trial_name(i, codes))) if root and trial_logs
                 else (lambda i, codes: None))
    jobs = [(spec, patch, codes, budget_steps, trial_dir(i + 1, codes), lines)
            for i, (codes, patch) in enumerate(candidates)]
    may_combine = len(jobs) >= 2
    if lines:
        bar = progress_or_lines(1 + len(jobs) + int(may_combine), None, "doctor", "trial")
        _tick(bar, baseline)
    elif bar is not None:
        bar.total = 1 + len(jobs) + int(may_combine)
        bar.update(1)
    outcomes: list[TrialOutcome] = []
    if jobs:
        outcomes = _run_jobs(jobs, workers, bar)
        _rank(outcomes, baseline)
        combo = combination(outcomes, baseline) if may_combine else None
        if combo is not None:
            outcomes += _run_jobs([(spec, combo[1], combo[0], budget_steps, trial_dir(len(jobs) + 1, combo[0]),
                                    lines)], 1, bar)
            _rank(outcomes, baseline)
        elif bar is not None and may_combine:
            bar.total -= 1
            bar.refresh()
    if bar is not None:
        bar.close()
    result = DoctorResult(spec=spec, budget_steps=budget_steps, baseline=baseline, trials=outcomes,
                          loss_measure=measure_text, logdir=root,
                          source=str(source) if source is not None else None, overrides=list(overrides))
    if root:
        _write_hparams(root, spec, outcomes)
        result.reports = _write_into_report(os.path.join(root, "baseline"), result)
        atomic_write_text(Path(root, "doctor.txt"), render_doctor(result) + "\n")  # never through a planted link
    return result


def _write_hparams(root: str, spec: Mapping[str, Any], outcomes: Sequence[TrialOutcome]) -> None:
    """One HPARAMS experiment for the baseline and the trials: the spec keys the fixes changed (their
    baseline values give the types) and the final metrics."""
    from core.spec import flatten
    from gradmon.sinks.tensorboard import write_experiment

    keys = sorted({k for t in outcomes for k in t.patch})
    flat = flatten(spec)
    try:
        write_experiment(root, {k: flat.get(k, next(t.patch[k] for t in outcomes if k in t.patch)) for k in keys})
    except (OSError, ImportError) as exc:  # the table and reports matter more than the dashboard
        write_line(f"[gradmon] HPARAMS for the doctor's runs not written: {exc}")


def _write_into_report(run_dir: str, result: DoctorResult) -> list[Path]:
    """Add the ranked trials to the baseline's report files; returns the files written."""
    from gradmon.findings import HealthReport
    from gradmon.history import History

    path = Path(run_dir)
    report = HealthReport.load(path)
    report.extra["doctor"] = result.to_dict()
    history = History.load(path / "history.npz") if (path / "history.npz").exists() else None
    written = []
    for name in ("report.json", "report.html"):
        try:
            written.append(report.save(path / name, history=history))
        except ImportError:
            pass
    return written


def render_doctor(result: DoctorResult) -> str:
    """The baseline and the trials, best first, with what was measured and the command of the best fix.

    With the result's ``source`` (the spec's path) and ``overrides`` (the ``--set`` arguments it was loaded
    with), the "best fix" line is a command that reproduces the fix.
    """
    source, overrides = result.source, result.overrides
    b = result.baseline
    lines = [f"doctor: {len(result.trials)} trial(s) of {result.budget_steps} steps each, same seed as the "
             f"baseline", f"loss: {result.loss_measure}"]
    if result.nothing_to_fix:
        lines += [f"baseline: loss {format_loss(b.loss, b.diverged)}"
                  + (f", accuracy {b.accuracy:.1%}" if b.accuracy is not None else ""),
                  "nothing to fix: the baseline raised no warning or error."]
        return "\n".join(lines)
    lines.append(f"verdict against the baseline: better/worse beyond ±{LOSS_TOLERANCE:.0%} loss or "
                 f"±{ACCURACY_TOLERANCE * 100:.0f} points accuracy (never better with an error left open); "
                 "worse trials rank last")
    lines.append("")

    head, rows = DOCTOR_COLUMNS, doctor_rows(result.to_dict())
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {2, 3, 4, 5}
    for r in [head, *rows]:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines += _root_lines(result)
    best = result.trials[0] if result.trials else None
    if best is None:
        lines += ["", "no suggested fix carried a spec patch to try."]
    elif best.verdict != "better":
        lines += ["", f"no trial measurably improved on the baseline; closest: {best.label}  "
                      f"({patch_to_cli(best.patch)})"]
    else:
        if source is not None:
            cmd = " ".join(["gradmon run", shlex.quote(str(source)),
                            *(f"--set {shlex.quote(o)}" for o in overrides), patch_to_cli(best.patch)])
        else:
            cmd = f"apply {patch_to_cli(best.patch)}"
        lines += ["", f"best fix: {best.label}  ->  {cmd}"]
    return "\n".join(lines)


def _root_lines(result: DoctorResult) -> list[str]:
    """The baseline's root cause and how its first fix measured (the fix every other output names)."""
    b = result.baseline
    if b.root_cause is None:
        return []
    where = f" in {b.root_cause['layer']}" if b.root_cause.get("layer") else ""
    line = f"root cause: {b.root_cause['code']}{where}"
    fix = b.first_fix
    if fix is None:
        return ["", line + " (no fix suggested)"]
    trial = next((t for t in result.trials if t.is_fix(fix)), None)
    if trial is None:
        return ["", f"{line}; its first fix, {fix['code']}, has no spec patch to try"]
    return ["", f"{line}; its first fix: {trial.label}  ({patch_to_cli(trial.patch)}) -> rank {trial.rank}, "
                f"{trial.verdict}"]


# the search trials moved to gradmon.search; their names stay importable from here
from gradmon.search import (_HealthTrial, best_trial_line, health_trial, render_leaderboard,  # noqa: E402,F401
                            search_trial_name)
