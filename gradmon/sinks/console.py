"""Console sink: findings as they open, and a closing summary, written through tqdm so progress bars
stay intact."""

from __future__ import annotations

import sys
from typing import TextIO

from gradmon.findings import Finding, HealthReport
from gradmon.report.text import patch_to_cli

_LABEL = {"info": "info", "warning": "WARNING", "error": "ERROR"}


def format_finding(f: Finding) -> str:
    where = f" in {f.layer}" if f.layer else ""
    return f"[gradmon] {_LABEL[f.severity]} {f.code}{where} at step {f.first_step}: {f.message}"


class ConsoleSink:
    """Writes one line per opened finding (and its first fix) to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled

    def _write(self, line: str, force: bool = False) -> None:
        if not (self.enabled or force):
            return
        from tqdm import tqdm

        tqdm.write(line, file=self.stream or sys.stderr)

    def failure(self, line: str) -> None:
        """A part of the monitor failed (an output, the curvature measurement): printed even when quiet,
        because it means something the user asked for will be missing."""
        self._write(line, force=True)

    def finding(self, f: Finding) -> None:
        """Warnings and errors as they open (information stays in the report and TensorBoard)."""
        if f.severity == "info":
            return
        self._write(format_finding(f))
        if f.suggestions:
            s = f.suggestions[0]
            self._write(f"          fix: {s.text}" + (f"  ({patch_to_cli(s.patch)})" if s.patch else ""))

    def summary(self, report: HealthReport, where: str | None = None) -> None:
        counts = {sev: sum(1 for f in report.findings if f.severity == sev) for sev in ("error", "warning", "info")}
        parts = [f"{n} {sev}{'s' if n != 1 else ''}" for sev, n in counts.items() if n]
        line = f"[gradmon] {report.status.upper()} after {report.steps} steps" + (
            f" ({', '.join(parts)})" if parts else "") + (f"; report: {where}" if where else "")
        self._write(line)
