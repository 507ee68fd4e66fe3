"""Plain-text and JSON output for ``gradmon check``, exit codes, spec patches as CLI arguments, and the
rows of the doctor's table (shared by the console and the reports)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from gradmon.findings import SEVERITIES, Finding, HealthReport

FORMATS = ("text", "json", "markdown")


def cli_value(value: Any) -> str:
    """A spec value as the CLI's ``--set`` parser (TOML values, bare strings allowed) reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(cli_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value and all(c.isalnum() or c in "_-." for c in value) else json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def patch_to_cli(patch: Mapping[str, Any]) -> str:
    """``{"train.lr": 0.01}`` -> ``--set train.lr=0.01``."""
    return " ".join(f"--set {k}={cli_value(v)}" for k, v in patch.items())


def where(finding: Finding) -> str:
    """Where a finding applies, in words: its layer, ``model`` for a model-wide finding, and for vanishing
    gradients the layers its evidence shows more than a decade below the largest one (input side up to the
    onset layer) with the weakest one named, e.g. ``dense0–dense18 (weakest: dense2)``."""
    ev = finding.evidence or {}
    rms, onset = ev.get("log10_grad_rms"), ev.get("onset_layer")
    if isinstance(rms, Mapping) and onset in rms:
        names = list(rms)
        span = names[0] if names.index(onset) == 0 else f"{names[0]}–{onset}"
        values = {k: v for k, v in rms.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        weakest = f" (weakest: {min(values, key=values.get)})" if values else ""
        return f"{span}{weakest}"
    return finding.layer or "model"


#: columns of the doctor's table, in the console, the HTML and the Markdown report
DOCTOR_COLUMNS = ("rank", "fix", "loss", "Δ loss", "acc", "Δ acc", "verdict", "closed", "still open")


def _number(value: Any) -> float | None:
    """A number from a doctor document, where non-finite ones are the strings "inf"/"-inf"/"nan"."""
    if isinstance(value, str):
        return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def format_loss(value: Any) -> str:
    """A doctor loss for people: ``diverged`` for an infinite one, 4 significant digits otherwise."""
    x = _number(value)
    return "-" if x is None else ("diverged" if math.isinf(x) else f"{x:.4g}")


def _delta_loss(trial: Any, base: Any) -> str:
    """Relative change of the loss against the baseline (absolute when the baseline is 0)."""
    t, b = _number(trial), _number(base)
    if t is None or b is None:
        return "-"
    if math.isinf(t) and math.isinf(b):
        return "±0"
    if math.isinf(b) or math.isinf(t):
        return "-∞" if math.isinf(b) else "+∞"
    return f"{(t - b) / b:+.0%}" if b > 0 else f"{t - b:+.3g}"


def doctor_rows(doc: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The rows of the doctor's table (columns :data:`DOCTOR_COLUMNS`) from a ``gradmon.doctor/1``
    document: the baseline first, then the trials in rank order."""
    base = doc.get("baseline", {})

    def acc(x: Any) -> str:
        value = _number(x)
        return "-" if value is None else f"{value:.1%}"

    def dacc(x: Any) -> str:
        value = _number(x)
        return "-" if value is None else f"{value * 100:+.1f}"

    rows = [("base", "baseline (no patch)", format_loss(base.get("final_loss")), "", acc(base.get("accuracy")), "", "",
             "", ", ".join(base.get("findings", [])) or "-")]
    for t in doc.get("trials", []):
        rows.append((str(t.get("rank", "")), str(t.get("label") or "+".join(t.get("suggestions", []))),
                     format_loss(t.get("final_loss")), _delta_loss(t.get("final_loss"), base.get("final_loss")),
                     acc(t.get("accuracy")), dacc(t.get("delta_accuracy")), str(t.get("verdict", "")),
                     ", ".join(t.get("closed", [])) or "-", ", ".join(t.get("findings", [])) or "-"))
    return rows


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
                           "findings": [f.to_dict() for f in report.worst("info")]}, indent=2)
    if fmt == "markdown":
        from gradmon.report.markdown import render_markdown

        return render_markdown(report)
    lines = []
    for f in report.worst("info"):
        lines.append(f"{f.severity.upper():<8}{f.code:<27}{where(f):<10} steps {f.first_step}-{f.last_step}  "
                     f"{f.message}")
        for s in f.suggestions:
            lines.append(f"          fix: {s.text}" + (f"  ({patch_to_cli(s.patch)})" if s.patch else ""))
    verdict = "FAIL" if failed else "ok"
    lines.append(f"status: {report.status} after {report.steps} steps ({report.ended}); "
                 f"{len(report.findings)} findings; --fail-on {fail_on}: {verdict}")
    return "\n".join(lines)
