"""Run a spec end to end with the monitor: the engine behind ``gradmon run``, ``demo`` and ``doctor``."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from gradmon.findings import HealthReport
from gradmon.history import History
from gradmon.monitor import Monitor

#: spec [monitor] keys -> Monitor arguments (``thresholds``: overrides of :mod:`gradmon.thresholds`, whose
#: table and field names the Monitor checks)
MONITOR_KEYS = ("every", "curvature_every", "curvature_budget", "curvature_samples", "thresholds", "tensorboard_every",
                "histogram_every")
#: the report files a monitored run writes into its logdir
REPORT_FILES = ("report.html", "report.json")


@dataclass
class RunResult:
    """What a monitored run produced."""

    spec: dict[str, Any]
    report: HealthReport
    history: History | None
    train_history: dict[str, Any]
    logdir: Path | None
    seconds: float
    n_validation: int = 0   #: examples in the held-out split (0: no validation loss)
    #: why training ended before its epochs (non-finite values, an error finding with ``stop_on_error``);
    #: None when it ran all its epochs or used up its ``max_steps`` budget
    stopped_early: str | None = None

    @property
    def final_loss(self) -> float:
        losses = self.train_history.get("loss") or []
        return float(losses[-1]) if losses else float("nan")

    @property
    def reports(self) -> list[Path]:
        """The report files (:data:`REPORT_FILES`) this run wrote into its logdir: those there that none of
        the report's ``sink_errors`` names (a file that failed may be a stale one in a reused logdir)."""
        if self.logdir is None:
            return []
        failed = self.report.extra.get("sink_errors") or []
        return [self.logdir / name for name in REPORT_FILES
                if (self.logdir / name).exists() and not any(name in str(line) for line in failed)]

    @property
    def final_accuracy(self) -> float | None:
        acc = self.train_history.get("val_accuracy") or self.train_history.get("accuracy")
        return float(acc[-1]) if acc else None


def safe_name(name: Any, default: str = "run") -> str:
    """``name`` as one harmless path component: path separators, ``..``, control, bidi and other unsafe
    characters become ``_``; leading dots and spaces are dropped (no hidden or relative names); at most 80
    characters; ``default`` when nothing is left.

    >>> safe_name("/elsewhere/escaped"), safe_name("../../x"), safe_name("moons\x1b[2J")
    ('elsewhere_escaped', 'x', 'moons_2J')
    """
    text = "".join(ch if ch.isalnum() or ch in "-_.+=@" else "_" for ch in str(name))
    text = re.sub(r"_+", "_", re.sub(r"\.\.+", "_", text)).strip("._ ")
    return text[:80].rstrip("._ ") or default


def default_logdir(spec: Mapping[str, Any], root: str | os.PathLike = "runs") -> Path:
    """Create and return a new directory ``runs/<spec name>-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2``, ... when that
    exists).  The name is made one safe path component (:func:`safe_name`), and the directory is created
    with ``mkdir``, which fails when it exists, so two runs started in the same second never share one."""
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    base = f"{safe_name(spec.get('name') or 'run')}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(10_000):
        path = root_path / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise OSError(f"cannot create a new run directory under {root_path}: {base}-1 to -9999 all exist")


def hparam_keys(*specs: Mapping[str, Any]) -> list[str]:
    """The hyperparameters TensorBoard's HPARAMS should list: the spec keys whose values differ between
    ``specs`` (a group of runs compared side by side), or, for one spec, those that differ from the
    defaults."""
    from core.spec import load_spec
    from gradmon.sinks.dashboard import flat_hparams

    flats = [flat_hparams(s) for s in specs]
    if len(flats) == 1:
        flats.append(flat_hparams(load_spec({})))
    keys = {k for f in flats for k in f}
    return sorted(k for k in keys if len({repr(f.get(k)) for f in flats}) > 1)


def run_spec(spec: Mapping[str, Any], logdir: str | os.PathLike | None = None, *, progress: bool | None = None,
             console: bool = True, max_steps: int | None = None, monitor_options: Mapping[str, Any] | None = None,
             stop_on_error: bool = False, callbacks: Sequence[Any] = (), resume: bool = False) -> RunResult:
    """Train the resolved ``spec`` with a :class:`Monitor`; returns the report and histories.

    ``max_steps`` cuts training short (doctor trials); ``stop_on_error`` stops at the first error finding
    (hyperparameter search pruning); ``callbacks`` are added after the monitor (hook-protocol objects).
    With ``logdir=None`` nothing is written.  ``resume``: continue the run whose ``checkpoint.npz`` is in
    ``logdir`` (written by the same spec; ``train.epochs`` may be raised) up to ``train.epochs``: the
    parameters come out bitwise equal to those of a run never interrupted.  The report then covers the
    steps from the checkpoint on (a note says so).
    """
    from core.build import build

    options = {k: spec.get("monitor", {}).get(k) for k in MONITOR_KEYS if k in spec.get("monitor", {})}
    options.update(monitor_options or {})
    if "hparams" not in options:
        options["hparams"] = hparam_keys(spec)
    monitor = Monitor(logdir=logdir, console=console, seed=int(spec.get("seed", 0) or 0), **options)
    stopper = _Stopper(monitor, max_steps, stop_on_error) if max_steps is not None or stop_on_error else None
    note = _Note(monitor)
    all_callbacks: list[Any] = [monitor, note, *callbacks, *([stopper] if stopper is not None else [])]
    run = build(spec, callbacks=all_callbacks, progress=progress)
    run.trainer.spec = dict(run.spec)
    checkpoint = Path(logdir) / "checkpoint.npz" if logdir is not None else None
    epochs = run.epochs
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs the logdir that holds the run's checkpoint.npz")
        epochs = _resume(run, checkpoint)
        note.text = (f"Resumed from {checkpoint} at step {run.trainer.step} (epoch {run.trainer.epoch}): the "
                     f"findings, plots and history cover the steps from there on.")
    t0 = time.perf_counter()
    validation = (run.data.X_test, run.data.y_test) if len(run.data.X_test) else None
    history = run.trainer.fit(run.data.X_train, run.data.y_train, epochs=epochs, validation=validation,
                              checkpoint=checkpoint)
    budget_reached = stopper is not None and stopper.budget_reached
    return RunResult(spec=dict(run.spec), report=monitor.report(), history=monitor.history,
                     train_history=dict(history), logdir=Path(logdir) if logdir is not None else None,
                     seconds=time.perf_counter() - t0, n_validation=len(run.data.X_test),
                     stopped_early=None if budget_reached else (history.get("stopped") or None))


#: spec keys a resumed run may change (the run's length; where the data file is named from; the name)
RESUME_MAY_CHANGE = ("train.epochs", "data.path", "name")


def _resume(run: Any, checkpoint: Path) -> int:
    """Load ``checkpoint`` into ``run``'s trainer; the epochs left to train.  ValueError (one line) when the
    checkpoint is damaged, belongs to another spec, or its run has already trained every epoch."""
    from core.checkpoint import load_checkpoint
    from core.spec import flatten

    meta = load_checkpoint(checkpoint, run.trainer)
    saved = meta.get("spec")
    if isinstance(saved, Mapping):
        before, now = flatten(saved), flatten(json.loads(json.dumps(run.spec, default=str)))
        changed = [k for k in sorted(set(before) | set(now)) if k not in RESUME_MAY_CHANGE
                   and before.get(k) != now.get(k)]
        if changed:
            k = changed[0]
            raise ValueError(f"--resume: {checkpoint} was written by a different spec ({k} = {before.get(k)!r} "
                             f"there, {now.get(k)!r} now); resume with the same spec (only train.epochs may change)")
    left = run.epochs - int(meta["epoch"])
    if left < 1:
        raise ValueError(f"--resume: {checkpoint} is at epoch {meta['epoch']} of {run.epochs}: the run has finished; "
                         f"raise train.epochs (--set train.epochs={2 * run.epochs}) to train on")
    return left


class _Note:
    """Adds ``text`` (when set) to the monitor's report notes once training begins (the monitor starts each
    run's notes afresh)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.text: str | None = None

    def on_train_begin(self, run: Any) -> None:
        if self.text:
            self.monitor.add_note(self.text)


class _Stopper:
    """Stops training after ``max_steps`` steps, or when the monitor opens an error finding.

    ``budget_reached`` says that it stopped training for the budget (the loop stops at the first reason it
    is given, so then that was the reason)."""

    def __init__(self, monitor: Monitor, max_steps: int | None, stop_on_error: bool) -> None:
        self.monitor = monitor
        self.max_steps = max_steps
        self.stop_on_error = stop_on_error
        self.step = 0
        self.budget_reached = False

    def on_step_end(self, state: Any) -> None:
        self.step = state.step + 1

    def should_stop(self) -> str | None:
        if self.max_steps is not None and self.step >= self.max_steps:
            self.budget_reached = True
            return f"step budget of {self.max_steps} reached"
        if self.stop_on_error:
            errors = [f for f in self.monitor.findings if f.severity == "error"]
            if errors:
                return f"{errors[0].code} ({errors[0].message})"
        return None
