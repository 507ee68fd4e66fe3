"""Text shared by every presentation: spec patches as CLI arguments, where a finding applies, and the
rows of the doctor's table (the console, the reports and ``gradmon check`` use them)."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

from gradmon.findings import Finding


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


def entry(record: Any, key: str) -> Mapping[str, Any]:
    """``record[key]`` when both are objects (a report's per-layer ``grad_norm`` summary, a spec's ``train``
    section), else ``{}``: a report.json with a mistyped field renders what it can instead of failing."""
    value = record.get(key) if isinstance(record, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def location(finding: Finding) -> tuple[str, str]:
    """Where a finding applies, as ``(kind, text)``: ``("layer", name)`` for one layer, ``("model",
    "model")`` for a model-wide finding, and ``("span", text)`` for vanishing gradients: the layers its
    evidence shows more than a decade below the largest one (input side up to the onset layer) with the
    weakest one named, e.g. ``dense0–dense18 (weakest: dense2)``."""
    ev = finding.evidence or {}
    rms, onset = ev.get("log10_grad_rms"), ev.get("onset_layer")
    if isinstance(rms, Mapping) and isinstance(onset, str) and onset in rms:
        names = list(rms)
        span = names[0] if names.index(onset) == 0 else f"{names[0]}–{onset}"
        values = {k: v for k, v in rms.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        weakest = f" (weakest: {min(values, key=values.get)})" if values else ""
        text = f"{span}{weakest}"
        return ("layer" if text == finding.layer else "span"), text
    return ("layer", str(finding.layer)) if finding.layer else ("model", "model")


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
    """A number from a doctor document: ``null`` (a missing or non-finite number) is None."""
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
    null), or an infinite loss (in memory)."""
    x = _number(entry.get("final_loss"))
    return bool(entry.get("diverged")) or (x is not None and math.isinf(x))


def format_loss(value: Any, diverged: bool = False) -> str:
    """A doctor loss for people: ``diverged`` for a diverged run (its loss is null in a document, ``inf`` in
    memory), 4 significant digits otherwise, ``-`` when there is none."""
    x = _number(value)
    if diverged or (x is not None and math.isinf(x)):
        return "diverged"
    return "-" if x is None or math.isnan(x) else f"{x:.4g}"


def _delta_loss(trial: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """The Δ loss cell: the trial's ``delta_loss`` (:func:`loss_change`) as a percentage; ``±0``, ``-∞`` or
    ``+∞`` when the trial, the baseline or both diverged (their ``delta_loss`` is then null or 0)."""
    t_div, b_div = _diverged(trial), _diverged(base)
    if t_div or b_div:
        return "±0" if t_div and b_div else ("+∞" if t_div else "-∞")
    change = _number(trial.get("delta_loss"))
    return "-" if change is None or not math.isfinite(change) else f"{change:+.0%}"


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

    rows = [("base", "baseline (no patch)", format_loss(base.get("final_loss"), _diverged(base)), "",
             acc(base.get("accuracy")), "", "", "", ", ".join(base.get("findings", [])) or "-")]
    for t in doc.get("trials", []):
        rows.append((str(t.get("rank", "")), str(t.get("label") or "+".join(t.get("suggestions", []))),
                     format_loss(t.get("final_loss"), _diverged(t)), _delta_loss(t, base),
                     acc(t.get("accuracy")), dacc(t.get("delta_accuracy")), str(t.get("verdict", "")),
                     ", ".join(t.get("closed", [])) or "-", ", ".join(t.get("findings", [])) or "-"))
    return rows


def trace_error(entry: Mapping[str, Any]) -> Any:
    """The error bar of a curvature entry's trace, for a table cell: one standard error, ``"exact"`` when it
    is 0 (an exact route), None (not applicable) when unknown or without a trace."""
    trace, stderr = _number(entry.get("trace")), _number(entry.get("trace_stderr"))
    if trace is None or not math.isfinite(trace) or stderr is None or math.isnan(stderr):
        return None
    return "exact" if stderr == 0 else stderr
