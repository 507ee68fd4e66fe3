"""A run's files: the checks before a run writes anything, and ``history.npz`` plus ``report.<fmt>`` at its end.

Each file is written independently (atomically, through a temp file and a rename): one that cannot be
written (a full disk, a renderer failing on odd input) is reported and the others are still written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from core.callbacks import RunInfo
from gradmon.findings import HealthReport
from gradmon.history import History


def spec_from_run(run: RunInfo) -> dict[str, Any]:
    """A spec-like description of a run that did not come from a spec (Python API, other loops)."""
    return {
        "model": {"layers": [{"name": l.name, "kind": l.kind} for l in run.layers]},
        "train": {"loss": run.loss, "optimizer": run.optimizer, **{k: v for k, v in run.hyperparams.items()},
                  "batch_size": run.batch_size, "epochs": run.epochs,
                  "clip_norm": run.clip_norm or 0, "l2": run.l2},
        "framework": run.framework,
    }


def write_run_files(target: Path, report: HealthReport, history: History | None, formats: Sequence[str],
                    sink_errors: list[str], on_failure: Callable[[str], None]) -> list[Path]:
    """Write ``history.npz`` and ``report.<fmt>`` for each of ``formats`` into ``target``; returns the files
    written.  A file that fails is reported through ``on_failure(message)`` (which adds to ``sink_errors``)
    and the others are still written; report.json comes last, so that its ``sink_errors`` list them."""
    written: list[Path] = []

    def attempt(name: str, write: Any) -> None:
        try:
            written.append(write())
        except Exception as exc:  # one output failing must not cost the others
            on_failure(f"could not write {name}: {type(exc).__name__}: {exc}")

    if history is not None:
        attempt("history.npz", lambda: history.save(target / "history.npz"))
    for fmt in formats:
        if fmt != "json":
            attempt(f"report.{fmt}", lambda: report.save(target / f"report.{fmt}", history=history))
    if "json" in formats:
        if sink_errors:
            report.extra["sink_errors"] = list(sink_errors)
        attempt("report.json", lambda: report.save(target / "report.json"))
    return written


def check_writable(logdir: Path) -> None:
    """A clear error before training when ``logdir`` cannot be created or written."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / ".gradmon-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to logdir {str(logdir)!r} ({exc.strerror or exc}); "
                      f"choose another --logdir") from None
