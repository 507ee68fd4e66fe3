"""Plain-text and JSON output for ``gradmon check``, exit codes, spec patches as CLI arguments, and the
rows of the doctor's table (shared by the console and the reports)."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

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


def location(finding: Finding) -> tuple[str, str]:
    """Where a finding applies, as ``(kind, text)``: ``("layer", name)`` for one layer, ``("model",
    "model")`` for a model-wide finding, and ``("span", text)`` for vanishing gradients: the layers its
    evidence shows more than a decade below the largest one (input side up to the onset layer) with the
    weakest one named, e.g. ``dense0–dense18 (weakest: dense2)``."""
    ev = finding.evidence or {}
    rms, onset = ev.get("log10_grad_rms"), ev.get("onset_layer")
    if isinstance(rms, Mapping) and onset in rms:
        names = list(rms)
        span = names[0] if names.index(onset) == 0 else f"{names[0]}–{onset}"
        values = {k: v for k, v in rms.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        weakest = f" (weakest: {min(values, key=values.get)})" if values else ""
        text = f"{span}{weakest}"
        return ("layer" if text == finding.layer else "span"), text
    return ("layer", finding.layer) if finding.layer else ("model", "model")


def where(finding: Finding) -> str:
    """Where a finding applies, in words (the text of :func:`location`): its layer, ``model``, or a span of
    layers for vanishing gradients."""
    return location(finding)[1]


def where_phrase(finding: Finding, code: Callable[[str], str], text: Callable[[str], str]) -> str:
    """The heading's "where" for one finding: `` in <layer>`` (the name through ``code``), `` (model-wide)``,
    or `` in <span>`` (through ``text``).  ``code`` and ``text`` escape for the output format (HTML,
    Markdown)."""
    kind, place = location(finding)
    if kind == "model":
        return " (model-wide)"
    return f" in {code(place) if kind == 'layer' else text(place)}"


#: columns of the doctor's table, in the console, the HTML and the Markdown report
DOCTOR_COLUMNS = ("rank", "fix", "loss", "Δ loss", "acc", "Δ acc", "verdict", "closed", "still open")


def _number(value: Any) -> float | None:
    """A number from a doctor document: ``null`` (a missing or non-finite number) is None; documents
    written before null was used spell non-finite numbers as the strings "inf"/"-inf"/"nan"."""
    if isinstance(value, str):
        return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def loss_change(trial: float, base: float) -> float | None:
    """The doctor's Δ loss: the relative change of the loss against the baseline, ``(trial - base) / base``.
    A diverged run's loss is ``inf``: ``-inf`` when only the baseline diverged, ``+inf`` when only the
    trial did, ``0`` when both did.  None when it is not defined (a baseline loss of 0, a NaN)."""
    if math.isinf(trial) and math.isinf(base):
        return 0.0
    if math.isinf(base) or math.isinf(trial):
        return -math.inf if math.isinf(base) else math.inf
    if math.isnan(trial) or math.isnan(base) or not base > 0:
        return None
    return (trial - base) / base


def _diverged(entry: Mapping[str, Any]) -> bool:
    """Whether a baseline or trial of a doctor document diverged: its ``diverged`` flag (its loss is then
    null), or an infinite loss (documents written before null was used, which said "inf")."""
    x = _number(entry.get("final_loss"))
    return bool(entry.get("diverged")) or (x is not None and math.isinf(x))


def format_loss(value: Any, diverged: bool = False) -> str:
    """A doctor loss for people: ``diverged`` for a diverged run (its loss is null, or ``inf`` in memory and
    in older documents), 4 significant digits otherwise, ``-`` when there is none."""
    x = _number(value)
    if diverged or (x is not None and math.isinf(x)):
        return "diverged"
    return "-" if x is None or math.isnan(x) else f"{x:.4g}"


def _delta_loss(trial: Mapping[str, Any], base: Mapping[str, Any], relative: bool) -> str:
    """The Δ loss cell: the trial's ``delta_loss`` (:func:`loss_change`) as a percentage; ``±0``, ``-∞`` or
    ``+∞`` when the trial, the baseline or both diverged (their ``delta_loss`` is then null or 0).  Documents
    whose ``delta_loss`` is not ``relative`` (written before it was) get it from the two losses."""
    t_div, b_div = _diverged(trial), _diverged(base)
    if t_div or b_div:
        return "±0" if t_div and b_div else ("+∞" if t_div else "-∞")
    if relative:
        change = _number(trial.get("delta_loss"))
    else:
        t, b = _number(trial.get("final_loss")), _number(base.get("final_loss"))
        change = None if t is None or b is None else loss_change(t, b)
    return "-" if change is None or not math.isfinite(change) else f"{change:+.0%}"


def doctor_rows(doc: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The rows of the doctor's table (columns :data:`DOCTOR_COLUMNS`) from a ``gradmon.doctor/1``
    document: the baseline first, then the trials in rank order."""
    base = doc.get("baseline", {})
    relative = (doc.get("deltas") or {}).get("loss") == "relative"

    def acc(x: Any) -> str:
        value = _number(x)
        return "-" if value is None else f"{value:.1%}"

    def dacc(x: Any) -> str:
        value = _number(x)
        return "-" if value is None else f"{value * 100:+.1f}"

    rows = [("base", "baseline (no patch)", format_loss(base.get("final_loss"), _diverged(base)), "",
             acc(base.get("accuracy")), "", "", "", ", ".join(base.get("findings", [])) or "-")]
    for t in doc.get("trials", []):
        rows.append((str(t.get("rank", "")), str(t.get("label") or "+".join(t.get("suggestions", []))),
                     format_loss(t.get("final_loss"), _diverged(t)), _delta_loss(t, base, relative),
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
