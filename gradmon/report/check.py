"""``gradmon check``: the findings of runs as text, JSON, Markdown, JUnit XML or GitHub workflow annotations,
and the exit code a CI job gates on.

A run fails the gate when a finding is at or above ``--fail-on``, or when it did not finish (interrupted,
crashed, stopped on NaN/Inf, or still running when its report was written): a run that never reached its
end has not shown that it is healthy.
"""

from __future__ import annotations

import json
from typing import Sequence
from xml.etree import ElementTree as ET

from gradmon import diagnosis
from gradmon.findings import HealthReport
from gradmon.report.markdown import render_markdown
from gradmon.report.text import patch_to_cli, where
from gradmon.vocabulary import SEVERITIES, severity_rank

FORMATS = ("text", "json", "markdown", "junit", "github")
#: how a run may end and still pass the gate: it ran all its epochs, or its loop stopped it on purpose (a step
#: budget, early stopping); ``nonfinite``, ``interrupted``, ``exception: ...`` and ``running`` fail
FINISHED = ("completed", "stopped")


def _check_fail_on(fail_on: str) -> None:
    if fail_on not in SEVERITIES:
        raise ValueError(f"unknown --fail-on {fail_on!r}; use one of {', '.join(SEVERITIES)}")


def finished(report: HealthReport) -> bool:
    """Whether the run reached its end (see :data:`FINISHED`)."""
    return report.ended == FINISHED[0] or report.ended.startswith(FINISHED[1] + ":")


def exit_code(report: HealthReport, fail_on: str = "error") -> int:
    """1 when a finding is at or above ``fail_on`` (info < warning < error) or the run did not finish,
    else 0."""
    _check_fail_on(fail_on)
    return 1 if report.worst(fail_on) or not finished(report) else 0


def render_check(report: HealthReport, fmt: str = "text", fail_on: str = "error") -> str:
    """The findings of a run as ``text``, ``json`` or ``markdown``."""
    _check_fail_on(fail_on)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    failed = bool(exit_code(report, fail_on))
    if fmt in ("junit", "github"):
        return render_many([("run", report)], fmt, fail_on)
    if fmt == "json":
        return json.dumps({"status": report.status, "fail_on": fail_on, "failed": failed, "steps": report.steps,
                           "ended": report.ended, "finished": finished(report),
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
    lines.append(summary_line(report, fail_on))
    return "\n".join(lines)


def summary_line(report: HealthReport, fail_on: str, name: str = "") -> str:
    """``status: error after 500 steps (completed); 2 findings; --fail-on error: FAIL`` (with why, when the run
    did not finish)."""
    verdict = "FAIL" if exit_code(report, fail_on) else "ok"
    unfinished = "" if finished(report) else " (the run did not finish)"
    return (f"{name + ': ' if name else ''}status: {report.status} after {report.steps} steps ({report.ended}); "
            f"{len(report.findings)} findings; --fail-on {fail_on}: {verdict}{unfinished}")


def render_many(runs: Sequence[tuple[str, HealthReport]], fmt: str, fail_on: str = "error") -> str:
    """Several runs (``(name, report)``, name = the run directory) in one output: ``junit`` (one test
    suite per run, a test case per finding and one for the run's end) or ``github`` (a workflow command
    per finding, ``::error``/``::warning``/``::notice``, and per unfinished run); other formats are each
    run's :func:`render_check` under a heading."""
    _check_fail_on(fail_on)
    if fmt == "junit":
        return render_junit(runs, fail_on)
    if fmt == "github":
        return render_github(runs, fail_on)
    if len(runs) == 1:
        return render_check(runs[0][1], fmt, fail_on)
    if fmt == "json":
        return json.dumps([{"run": name, **json.loads(render_check(r, "json", fail_on))} for name, r in runs], indent=2)
    return "\n\n".join(f"== {name}\n{render_check(r, fmt, fail_on)}" for name, r in runs)


def render_junit(runs: Sequence[tuple[str, HealthReport]], fail_on: str) -> str:
    """JUnit XML: ``<testsuites>`` with a ``<testsuite name=RUN>`` per run; a ``<testcase>`` per finding
    (``classname`` = the code, ``name`` = where), failed when at or above ``fail_on`` (a lower one is
    ``<skipped>`` with its message, so CI shows it without failing), and a ``run finished`` case."""
    root = ET.Element("testsuites", name="gradmon check")
    total_tests = total_failures = 0
    for name, report in runs:
        suite = ET.SubElement(root, "testsuite", name=name)
        tests = failures = 0
        floor = severity_rank(fail_on)
        for f in report.worst("info"):
            case = ET.SubElement(suite, "testcase", classname=f"gradmon.{f.code}",
                                 name=f"{f.code} in {where(f)} (steps {f.first_step}-{f.last_step})")
            fixes = "\n".join(f"fix: {s.text}" + (f"  ({patch_to_cli(s.patch)})" if s.patch else "")
                               for s in f.suggestions)
            if severity_rank(f.severity) >= floor:
                failure = ET.SubElement(case, "failure", type=f.severity, message=f"{f.severity.upper()}: {f.message}")
                failure.text = "\n".join([f.message, fixes]).strip()
                failures += 1
            else:
                ET.SubElement(case, "skipped", message=f"{f.severity}: {f.message}")
            tests += 1
        case = ET.SubElement(suite, "testcase", classname="gradmon.run", name="run finished")
        if not finished(report):
            ET.SubElement(case, "failure", type="unfinished",
                          message=f"the run did not finish: {report.ended}").text = summary_line(report, fail_on)
            failures += 1
        tests += 1
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        total_tests, total_failures = total_tests + tests, total_failures + failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


#: GitHub workflow commands by severity
GITHUB_COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def render_github(runs: Sequence[tuple[str, HealthReport]], fail_on: str) -> str:
    """GitHub Actions workflow commands: one annotation per finding (``::error title=...::message``, the fix
    on the next line of the message), one per unfinished run, and a summary line per run."""
    lines = []
    for name, report in runs:
        for f in report.worst("info"):
            title = _escape_property(f"gradmon {f.code} in {where(f)} ({name})")
            fix = "".join(f"\nfix: {s.text}" + (f" ({patch_to_cli(s.patch)})" if s.patch else "")
                          for s in f.suggestions[:2])
            lines.append(f"::{GITHUB_COMMANDS[f.severity]} title={title}::{_escape_data(f.message + fix)}")
        if not finished(report):
            lines.append(f"::error title={_escape_property(f'gradmon run did not finish ({name})')}::"
                         f"{_escape_data(f'the run ended {report.ended} after {report.steps} steps')}")
        root, fix = report.root_cause, report.primary_fix
        if root is not None:
            text = f"root cause: {diagnosis.name(root.code, root.layer)}" + (
                f"; fix: {fix.text}" + (f" ({patch_to_cli(fix.patch)})" if fix.patch else "") if fix else "")
            lines.append(f"::notice title={_escape_property(f'gradmon root cause ({name})')}::{_escape_data(text)}")
        lines.append(summary_line(report, fail_on, name))
    return "\n".join(lines)
