"""The health report as Markdown (for CI summaries, pull requests and TensorBoard's text tab).

Every string from a spec, a model, a finding or its evidence goes through :func:`md_text` (running text and
table cells) or :func:`md_code` (code spans), so a layer named ``<img onerror=...>`` or ``a`b|c`` renders as
those characters and cannot inject HTML, break a table or end a code span early.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gradmon import diagnosis
from gradmon.findings import HealthReport
from gradmon.report.text import DOCTOR_COLUMNS, doctor_rows, entry, patch_to_cli, trace_error, where_phrase
from gradmon.vocabulary import count_phrase, severity_counts

#: Shown where a quantity does not apply (saturation of a ReLU layer) or was not measured.
NOT_APPLICABLE = "–"

#: Characters with inline meaning in Markdown, escaped with a backslash wherever they appear.
_INLINE = set("\\`*_[]|~")
#: A heading or list marker at the start of a line (followed by a space or the end).
_BLOCK_START = re.compile(r"^(\s*)(#{1,6}|[-+]|\d{1,9}[.)])(?=\s|$)")
#: A line of only ``-`` or ``=``: a thematic break or a setext heading underline.
_RULE = re.compile(r"^(\s*)([-=])(?=[-=\s]*$)")


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits, ``–`` for a missing or NaN value, ``inf``/``-inf`` as such;
    dicts and lists element by element; everything else as text."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if math.isnan(v):
            return NOT_APPLICABLE
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def _one_line(value: Any) -> str:
    return " ".join(str(value).splitlines())


def md_text(value: Any) -> str:
    """``value`` as literal Markdown text on one line: ``& < >`` as HTML entities, inline metacharacters
    (``\\ ` * _ [ ] | ~``) backslash-escaped, and a leading ``#``, ``-``, ``+``, ``1.`` or ``---`` escaped so
    the text cannot start a heading, a list or a rule."""
    text = _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = "".join("\\" + c if c in _INLINE else c for c in text)
    text = _RULE.sub(lambda m: m.group(1) + "\\" + m.group(2), text, count=1)
    return _BLOCK_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text, count=1)


def md_code(value: Any) -> str:
    """``value`` as one inline code span, literal whatever it contains: the fence is one backtick longer
    than the longest run of backticks inside, and padded with spaces when the text starts or ends with one.
    (Not for table cells: a ``|`` in a code span still splits a GFM table row; use :func:`cell` there.)"""
    text = _one_line(value)
    if not text.strip():
        return md_text(repr(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) \
        else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(value: Any) -> str:
    """A table cell: the formatted value escaped like :func:`md_text` (pipes included)."""
    return md_text(fmt(value))


def _code_fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text`` (at least three)."""
    return "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


def _diagnosis(report: HealthReport) -> list[str]:
    """The root cause, the one fix to try first, and what the root explains (:mod:`gradmon.diagnosis`)."""
    root = report.root_cause
    if root is None:
        return []
    located = where_phrase(root, code=md_code, text=md_text)
    out = ["## Diagnosis", "", f"**Root cause:** {md_code(root.code)}{located} ({diagnosis.severity(root, report.findings)}, from step "
           f"{root.first_step}): {md_text(root.message)}", ""]
    fix = report.primary_fix
    if fix is not None:
        out += [f"**First fix:** {md_text(fix.text)}" + (f" {md_code(patch_to_cli(fix.patch))}" if fix.patch else ""),
                ""]
    explains = diagnosis.consequences(root, report.findings)
    if explains:
        out += ["It explains: " + ", ".join(md_code(diagnosis.name(f.code, f.layer)) for f in explains) + ".", ""]
    others = diagnosis.roots(report.findings)[1:]
    if others:
        out += ["Other problems: " + ", ".join(md_code(diagnosis.name(f.code, f.layer)) for f in others) + ".", ""]
    return out


def render_markdown(report: HealthReport, history: Any = None) -> str:
    """The report as Markdown: status, findings with evidence and suggestions, layer and curvature tables,
    the doctor's trials and the spec.  ``history`` is accepted for symmetry with HTML (no plots here)."""
    counts = severity_counts(f.severity for f in report.findings)
    out = [f"# gradmon health report: {report.status.upper()}", "",
           f"{report.steps} steps, ended: {md_text(report.ended)}; findings: "
           f"{', '.join(count_phrase(n, sev) for sev, n in counts.items())}.", ""]
    out += _diagnosis(report)
    if report.findings:
        out += ["## Findings", ""]
        for f in report.worst("info"):
            located = where_phrase(f, code=md_code, text=md_text)
            cause = diagnosis.cause_of(f)
            because = f" — a consequence of {md_code(diagnosis.name(*cause))}" if cause else ""
            out.append(f"### {f.severity.upper()}: {md_code(f.code)}{located} (steps {f.first_step}–{f.last_step})"
                       f"{because}")
            out += ["", md_text(f.message), ""]
            if f.evidence:
                out += ["| evidence | value |", "| --- | --- |"]
                out += [f"| {cell(k)} | {cell(v)} |" for k, v in f.evidence.items()]
                out.append("")
            for s in f.suggestions:
                out.append(f"- **{md_text(s.code)}**: {md_text(s.text)}"
                           + (f" {md_code(patch_to_cli(s.patch))}" if s.patch else ""))
            out.append("")
    if report.layers:
        out += ["## Layers", "", "| layer | activation | grad norm (first → last) | activation std (first → last) "
                "| update ratio (median) | saturation (median) | dead fraction (median) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for layer in report.layers:
            g, a = entry(layer, "grad_norm"), entry(layer, "act_std")
            out.append(f"| {cell(layer.get('name'))} | {cell(layer.get('activation'))} | "
                       f"{cell(g.get('first'))} → {cell(g.get('last'))} | "
                       f"{cell(a.get('first'))} → {cell(a.get('last'))} | "
                       f"{cell(entry(layer, 'update_ratio').get('median'))} | "
                       f"{cell(entry(layer, 'saturation').get('median'))} | "
                       f"{cell(entry(layer, 'dead_fraction').get('median'))} |")
        out.append("")
    if report.curvature:
        out += ["## Curvature", "", "| step | λmax | stability bound | trace | ± (1 s.e.) | HVPs |",
                "| --- | --- | --- | --- | --- | --- |"]
        for c in report.curvature:
            out.append(f"| {cell(c.get('step'))} | {cell(c.get('lambda_max'))} | {cell(c.get('threshold'))} | "
                       f"{cell(c.get('trace'))} | {cell(trace_error(c))} | {cell(c.get('hvps'))} |")
        out.append("")
    if report.extra.get("doctor"):
        doc = report.extra["doctor"]
        out += ["## Doctor: fixes tried", "", f"loss: {md_text(doc.get('loss_measure', ''))}", "",
                "| " + " | ".join(DOCTOR_COLUMNS) + " |", "|" + " --- |" * len(DOCTOR_COLUMNS)]
        out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in doctor_rows(doc)]
        out.append("")
    spec = json.dumps(report.spec, indent=2, default=str)
    fence = _code_fence(spec)
    for key, title in (("notes", "Notes"), ("sink_errors", "Outputs that failed")):
        if report.extra.get(key):
            out += [f"## {title}", "", *(f"- {md_text(e)}" for e in report.extra[key]), ""]
    out += ["## Spec", "", f"{fence}json", spec, fence, ""]
    return "\n".join(out)
