"""Hyperparameter search trials that watch training health (``gradmon tune``): the trial, its run names,
the leaderboard and the best-trial line.  :func:`core.tune.search` runs them.

    trials = search(spec, {"train.lr": [1e-3, 1e-2]}, trial=health_trial(budget_steps=200))
    print(render_leaderboard(trials)); print(best_trial_line(trials, "spec.toml"))
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.progress import StepLines
from gradmon.report.text import cli_value, patch_to_cli


def health_trial(budget_steps: int | None = None, logdir: str | os.PathLike | None = None,
                 keys: Sequence[str] = (), progress: bool | None = False) -> "_HealthTrial":
    """A search trial (for :func:`core.tune.search`) that monitors health and prunes on error findings.

    With ``logdir`` each trial's run (TensorBoard events, report) goes to ``logdir/<key=value,...>`` (named
    after the grid ``keys``' values), and HPARAMS lists those keys.  ``progress``: True shows each trial's
    step bar (a terminal), None step lines on stderr (a log), False nothing."""
    return _HealthTrial(budget_steps, Path(logdir) if logdir is not None else None, list(keys), progress)


def search_trial_name(spec: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A search trial's run name from its grid values: ``lr=0.01,activation=tanh``."""
    from core.spec import flatten

    flat = flatten(spec)
    return ",".join(f"{k.split('.')[-1]}={cli_value(flat.get(k))}" for k in keys) or "trial"


class _HealthTrial:
    def __init__(self, budget_steps: int | None, logdir: Path | None = None, keys: Sequence[str] = (),
                 progress: bool | None = False) -> None:
        self.budget_steps = budget_steps
        self.logdir, self.keys, self.progress = logdir, list(keys), progress

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        from gradmon.run import run_spec

        name = search_trial_name(spec, self.keys)
        run_dir = self.logdir / name.replace("/", "_") if self.logdir is not None else None
        extra = [StepLines(f"tune: {name}", self.budget_steps)] if self.progress is None else []
        result = run_spec(spec, run_dir, progress=bool(self.progress), console=False, max_steps=self.budget_steps,
                          stop_on_error=True, callbacks=extra, monitor_options={"hparams": self.keys})
        th = result.train_history
        metrics: dict[str, Any] = {"final_loss": result.final_loss, "steps": th.get("steps", 0),
                                   "status": result.report.status,
                                   "findings": sorted({f.code for f in result.report.worst("warning")})}
        if th.get("val_loss"):
            metrics["val_loss"] = th["val_loss"][-1]
        if result.final_accuracy is not None:
            metrics["accuracy"] = result.final_accuracy
        if result.stopped_early:
            metrics["pruned"] = result.stopped_early
        return metrics


def best_trial_line(trials: list, source: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> str:
    """``best: lr=0.01 (val loss 0.12, healthy) -> gradmon run SPEC --set train.lr=0.01``: the first trial that
    was not pruned, as a command when the spec's path is known."""
    best = next((t for t in trials if not t.metrics.get("pruned") and math.isfinite(t.score)), None)
    if best is None:
        return "best: none (every trial was pruned or diverged)"
    m = best.metrics
    what = "val loss" if "val_loss" in m else "loss"
    loss = m.get("val_loss", m.get("final_loss"))
    params = ", ".join(f"{k}={cli_value(v)}" for k, v in best.params.items())
    line = f"best: {params} ({what} {loss:.4g}" + (f", accuracy {m['accuracy']:.1%}" if m.get("accuracy") is not None
                                                   else "") + f", {m.get('status', '-')})"
    if source is not None:
        cmd = " ".join(["gradmon run", shlex.quote(str(source)), *(f"--set {shlex.quote(o)}" for o in overrides),
                        patch_to_cli(best.params)])
        line += f"  ->  {cmd}"
    return line


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
