"""``gradmon check``: the findings of a run as text, JSON or Markdown, and the exit code a CI job gates on."""

from __future__ import annotations

import json

from gradmon import diagnosis
from gradmon.findings import HealthReport
from gradmon.report.markdown import render_markdown
from gradmon.report.text import patch_to_cli, where
from gradmon.vocabulary import SEVERITIES

FORMATS = ("text", "json", "markdown")


def _check_fail_on(fail_on: str) -> None:
    if fail_on not in SEVERITIES:
        raise ValueError(f"unknown --fail-on {fail_on!r}; use one of {', '.join(SEVERITIES)}")


def exit_code(report: HealthReport, fail_on: str = "error") -> int:
    """1 when a finding is at or above ``fail_on`` (info < warning < error), else 0."""
    _check_fail_on(fail_on)
    return 1 if report.worst(fail_on) else 0


def render_check(report: HealthReport, fmt: str = "text", fail_on: str = "error") -> str:
    """The findings of a run as ``text``, ``json`` or ``markdown``."""
    _check_fail_on(fail_on)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    failed = bool(exit_code(report, fail_on))
    if fmt == "json":
        return json.dumps({"status": report.status, "fail_on": fail_on, "failed": failed, "steps": report.steps,
                           "diagnosis": report.to_dict()["diagnosis"],
                           "findings": [f.to_dict() for f in report.worst("info")]}, indent=2)
    if fmt == "markdown":
        return render_markdown(report)
    lines = []
    for f in report.worst("info"):
        cause = diagnosis.cause_of(f)
        because = f"  (a consequence of {diagnosis.name(*cause)})" if cause else ""
        lines.append(f"{f.severity.upper():<8}{f.code:<27}{where(f):<10} steps {f.first_step}-{f.last_step}  "
                     f"{f.message}{because}")
        for s in f.suggestions:
            lines.append(f"          fix: {s.text}" + (f"  ({patch_to_cli(s.patch)})" if s.patch else ""))
    root, fix = report.root_cause, report.primary_fix
    if root is not None:
        lines.append(f"root cause: {diagnosis.name(root.code, root.layer)}"
                     + (f"; fix: {fix.text}" + (f"  ({patch_to_cli(fix.patch)})" if fix.patch else "")
                        if fix is not None else ""))
    verdict = "FAIL" if failed else "ok"
    lines.append(f"status: {report.status} after {report.steps} steps ({report.ended}); "
                 f"{len(report.findings)} findings; --fail-on {fail_on}: {verdict}")
    return "\n".join(lines)
