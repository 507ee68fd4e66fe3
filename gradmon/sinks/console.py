"""Console sink: warnings and errors as they open, with their first fix, and a closing summary, written
through tqdm so progress bars stay intact."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence, TextIO

from core.terminal import printable
from gradmon import diagnosis
from gradmon.findings import Finding, HealthReport
from gradmon.history import History
from gradmon.report.text import patch_to_cli
from gradmon.sinks.base import Sink
from gradmon.vocabulary import SEVERITY_LABELS, counts_phrase, severity_counts


def format_finding(f: Finding) -> str:
    where = f" in {f.layer}" if f.layer else ""
    cause = diagnosis.cause_of(f)
    because = f" (a consequence of {diagnosis.name(*cause)})" if cause else ""
    return f"[gradmon] {SEVERITY_LABELS[f.severity]} {f.code}{where}{because} at step {f.first_step}: {f.message}"


def format_diagnosis(report: HealthReport) -> list[str]:
    """The root cause and its first fix, as the closing lines say them (empty for a healthy run)."""
    root = report.root_cause
    if root is None:
        return []
    explains = diagnosis.consequences(root, report.findings)
    lines = [f"[gradmon] root cause: {diagnosis.name(root.code, root.layer)}"
             + (f" (it explains {len(explains)} other finding{'s' if len(explains) != 1 else ''})" if explains else "")]
    fix = report.primary_fix
    if fix is not None:
        lines.append(f"          fix: {fix.text}" + (f"  ({patch_to_cli(fix.patch)})" if fix.patch else ""))
    return lines


class ConsoleSink(Sink):
    """Writes one line per opened warning or error (and its first fix) to ``stream`` (stderr by default);
    :meth:`failure` lines are written even when the sink is disabled."""

    name = "console"

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled

    def _write(self, line: str, force: bool = False) -> None:
        if not (self.enabled or force):
            return
        from tqdm import tqdm

        tqdm.write(printable(line), file=self.stream or sys.stderr)  # names and messages may hold escapes

    def failure(self, line: str) -> None:
        """A part of the monitor failed (an output, the curvature measurement): printed even when quiet,
        because it means something the user asked for will be missing."""
        self._write(line, force=True)

    def note(self, line: str) -> None:
        """Something the user should know once (what was not measured and how to turn it on)."""
        self._write(f"[gradmon] {line}")

    def finding(self, f: Finding) -> None:
        """Warnings and errors as they open (information stays in the report and TensorBoard)."""
        if f.severity == "info":
            return
        self._write(format_finding(f))
        if f.suggestions:
            s = f.suggestions[0]
            self._write(f"          fix: {s.text}" + (f"  ({patch_to_cli(s.patch)})" if s.patch else ""))

    def close(self, report: HealthReport, history: History | None, written: Sequence[Path]) -> None:
        html = next((str(p) for p in written if Path(p).name == "report.html"), None)
        parts = counts_phrase(severity_counts(f.severity for f in report.findings))
        self._write(f"[gradmon] {report.status.upper()} after {report.steps} steps" + (f" ({parts})" if parts else "")
                    + (f"; report: {html}" if html else ""))
        for line in format_diagnosis(report):
            self._write(line)
