"""The health report as one self-contained HTML file (inline CSS, plots embedded as PNG data URIs).

Every string that comes from a spec, a model, a finding or its evidence is escaped, so a layer named
``<script>`` renders as text.  Stable hooks for tests: ``#status[data-status]``, ``.finding[data-code]``,
``.suggestion``, ``#heatmap``.
"""

from __future__ import annotations

import base64
import json
from html import escape as _escape
from typing import Any

from gradmon import diagnosis
from gradmon.findings import HealthReport
from gradmon.report import plots
from gradmon.report.markdown import NOT_APPLICABLE, fmt
from gradmon.report.plots import HEATMAP_FLOOR
from gradmon.report.text import DOCTOR_COLUMNS, doctor_rows, entry, patch_to_cli, trace_error, where, where_phrase
from gradmon.vocabulary import SEVERITY_TEXT_COLOURS, STATUS_COLOURS, count_phrase, counts_phrase, severity_counts


def escape(value: Any, quote: bool = True) -> str:
    """``value`` as HTML text (a mistyped report.json field, a number where text belongs, renders as text)."""
    return _escape(value if isinstance(value, str) else str(value), quote)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1320px;margin:0 auto;padding:16px 24px}
#status{border-radius:10px;padding:18px 22px;margin:8px 0 18px 0;border:2px solid}
#status h1{margin:0 0 6px 0;font-size:26px}
.counts span{margin-right:14px;font-weight:600}
h2{margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.finding{background:#fff;border-left:6px solid;border-radius:6px;padding:12px 16px;margin:10px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.08)}
.finding h3{margin:0 0 6px 0;font-size:17px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;margin-right:6px;
 vertical-align:middle}
.meta{color:#555;font-size:13px;margin-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
.suggestion{background:#f6f9ff;border:1px solid #d5e2f7;border-radius:6px;padding:6px 10px;margin:6px 0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
pre{background:#f3f3f3;padding:8px;border-radius:4px;overflow-x:auto;white-space:pre-wrap}
.plots{display:flex;flex-wrap:wrap;gap:10px 14px}
.plots figure{margin:0;background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:6px;flex:1 1 520px;
 max-width:100%}
.plots figure.wide{flex-basis:100%}
.plots img{max-width:100%;display:block;margin:0 auto}
.plots figcaption{font-size:12.5px;color:#444;margin:4px 6px}
details summary{cursor:pointer;color:#444}
"""


#: The plots in page order: key, alt text, caption (how to read it), full width or not.
PLOTS = (
    ("heatmap", "gradient norm heatmap",
     "Top: the global gradient norm on a log scale (a steep rise is an explosion, a collapse towards zero is "
     "a stall). Bottom: each layer's gradient relative to the largest layer at the same step, on a fixed "
     f"scale of {-HEATMAP_FLOOR:g} decades (the same in every report); dark rows far below the others are "
     "vanishing, pink cells got exactly zero gradient (dead units), vermilion cells were NaN/Inf.", True),
    ("loss", "training loss", "Training loss; dashed lines mark where findings opened.", False),
    ("curvature", "curvature against the stability threshold",
     "Top Hessian eigenvalue λmax (sharpness). For gradient descent, above the threshold line (shaded) "
     "training cannot be stable at this learning rate. Below, when measured: the Hessian's trace, with a band "
     "of one standard error where it is estimated (none where it is exact).", False),
    ("activations", "saturation and dead units",
     "Fraction of units pinned near ±1 (sigmoid/tanh) or outputting zero for the whole batch (ReLU).", False),
)


def _img(png: bytes, alt: str, ident: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{ident}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(png: bytes, alt: str, ident: str, caption: str, wide: bool) -> str:
    cls = ' class="wide"' if wide else ""
    return f"<figure{cls}>{_img(png, alt, ident)}<figcaption>{escape(caption)}</figcaption></figure>"


def _evidence_table(evidence: dict[str, Any], label: str = "evidence") -> str:
    if not evidence:
        return ""
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(fmt(v))}</td></tr>" for k, v in evidence.items())
    return f'<details><summary>{escape(label)}</summary><table class="evidence">{rows}</table></details>'


def _group(findings: list) -> list[list]:
    """Findings of one code together (a symptom seen in five layers is one card), worst first."""
    groups: dict[str, list] = {}
    for f in findings:
        groups.setdefault(f.code, []).append(f)
    return list(groups.values())


def _finding(group: list) -> str:
    f = group[0]  # the worst (findings arrive sorted worst first)
    colour = SEVERITY_TEXT_COLOURS.get(f.severity, "#555")
    if len(group) == 1:  # its layer, a span of layers (vanishing) or the whole model
        located = where_phrase(f, code=lambda name: f"<code>{escape(name)}</code>", text=escape)
    else:
        located = f" in {', '.join(f'<code>{escape(g.layer)}</code>' for g in group if g.layer)}"
    first, last = min(g.first_step for g in group), max(g.last_step for g in group)
    cause = diagnosis.cause_of(f)
    because = f" · a consequence of <code>{escape(diagnosis.name(*cause))}</code>" if cause else ""
    parts = [f'<div class="finding" data-code="{escape(f.code)}" data-severity="{escape(f.severity)}" '
             f'style="border-color:{colour}">',
             f'<h3><span class="badge" style="background:{colour}">{escape(f.severity.upper())}</span>'
             f'<code>{escape(f.code)}</code>{located}</h3>',
             f'<div class="meta">steps {int(first)}–{int(last)}{because}</div>',
             "".join(f"<p>{escape(g.message)}</p>" for g in group[:3])]
    if len(group) > 3:
        parts.append(f"<p>(and {len(group) - 3} more layers)</p>")
    for s in f.suggestions:
        parts.append(f'<div class="suggestion" data-code="{escape(s.code)}"><b>{escape(s.code)}</b>: '
                     f"{escape(s.text)}")
        if s.patch:
            parts.append(f"<br><code>{escape(patch_to_cli(s.patch))}</code> &nbsp; "
                         f"<code>{escape(json.dumps(s.patch))}</code>")
        parts.append("</div>")
    for g in group:
        label = f"evidence ({g.layer})" if g.layer and len(group) > 1 else "evidence"
        parts.append(_evidence_table(g.evidence, label))
    parts.append("</div>")
    return "".join(parts)


def _summary_table(findings: list) -> str:
    rows = "".join(
        f"<tr><td><span class='badge' style='background:{SEVERITY_TEXT_COLOURS.get(g[0].severity, '#555')}'>"
        f"{escape(g[0].severity)}</span></td><td><code>{escape(g[0].code)}</code></td>"
        f"<td>{escape(', '.join(where(x) for x in g))}</td>"
        f"<td>{int(min(x.first_step for x in g))}–{int(max(x.last_step for x in g))}</td>"
        f"<td>{escape(g[0].suggestions[0].code) if g[0].suggestions else NOT_APPLICABLE}</td></tr>"
        for g in _group(findings))
    return ("<table id='summary'><tr><th>severity</th><th>finding</th><th>where</th><th>steps</th>"
            f"<th>first fix</th></tr>{rows}</table>")


def _layers_table(layers: list[dict[str, Any]]) -> str:
    if not layers:
        return ""
    head = ("<tr><th>layer</th><th>activation</th><th>grad norm first</th><th>last</th><th>median</th>"
            "<th>activation std first</th><th>last</th>"
            "<th>update ratio (median)</th><th>saturation (median)</th><th>dead fraction (median)</th></tr>")
    rows = []
    for l in layers:
        g, a = entry(l, "grad_norm"), entry(l, "act_std")
        rows.append("<tr>" + "".join(f"<td>{escape(fmt(v))}</td>" for v in (
            l.get("name"), l.get("activation") or NOT_APPLICABLE, g.get("first"), g.get("last"),
            g.get("median"), a.get("first"), a.get("last"),
            entry(l, "update_ratio").get("median"), entry(l, "saturation").get("median"),
            entry(l, "dead_fraction").get("median"))) + "</tr>")
    return f'<table id="layers">{head}{"".join(rows)}</table>'


def _curvature_table(curvature: list[dict[str, Any]]) -> str:
    if not curvature:
        return ""
    head = ("<tr><th>step</th><th>λmax</th><th>stability bound</th><th>trace</th><th>± (1 s.e.)</th>"
            "<th>HVPs</th></tr>")
    rows = "".join("<tr>" + "".join(f"<td>{escape(fmt(v))}</td>" for v in (
        c.get("step"), c.get("lambda_max"), c.get("threshold"), c.get("trace"), trace_error(c), c.get("hvps")))
        + "</tr>" for c in curvature)
    return f"<details><summary>{len(curvature)} measurements</summary><table>{head}{rows}</table></details>"


def _doctor(extra: dict[str, Any]) -> str:
    """The fixes ``gradmon doctor`` tried, measured against the baseline, best first."""
    doc = extra.get("doctor")
    if not doc:
        return ""
    patches = [""] + [patch_to_cli(t.get("patch", {})) for t in doc.get("trials", [])]
    head = "".join(f"<th>{escape(c)}</th>" for c in (*DOCTOR_COLUMNS, "patch"))
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row)
                   + f"<td><code>{escape(patch)}</code></td></tr>" for row, patch in zip(doctor_rows(doc), patches))
    measure = f"<p>loss: {escape(str(doc.get('loss_measure', '')))}</p>" if doc.get("loss_measure") else ""
    return f'<h2>Fixes tried (gradmon doctor)</h2>{measure}<table id="doctor"><tr>{head}</tr>{rows}</table>'


def render_html(report: HealthReport, history: Any = None) -> str:

    status = report.status
    bg, fg = STATUS_COLOURS[status]
    counts = severity_counts(f.severity for f in report.findings)
    name = str(report.spec.get("name", "run")) if isinstance(report.spec, dict) else "run"
    headline = {"healthy": "Training looks healthy", "warning": "Training has problems worth fixing",
                "error": "Training is broken"}[status]
    root, fix = report.root_cause, report.primary_fix
    notes = report.worst("info")
    if root is not None:
        located = where_phrase(root, code=lambda name: f"<code>{escape(name)}</code>", text=escape)
        first = (f'<p id="root-cause" data-code="{escape(root.code)}">Root cause: <b>{escape(root.code)}</b>{located}'
                 f" — {escape(root.message)}</p>")
        if fix is not None:
            first += (f'<p id="first-fix" data-code="{escape(fix.code)}">First fix: {escape(fix.text)}'
                      + (f" <code>{escape(patch_to_cli(fix.patch))}</code>" if fix.patch else "") + "</p>")
        explains = diagnosis.consequences(root, report.findings)
        if explains:
            first += ("<p>It explains: " + ", ".join(f"<code>{escape(diagnosis.name(f.code, f.layer))}</code>"
                                                     for f in explains) + ".</p>")
    elif notes:
        first = (f"<p>No warnings or errors. For information: <b>{escape(notes[0].code)}</b> — "
                 f"{escape(notes[0].message)}</p>")
    else:
        first = "<p>No findings: gradients, activations, updates and the loss stayed in healthy ranges.</p>"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gradmon: {escape(name)} — "
             f"{escape(status)}</title><style>{CSS}</style></head><body><main>",
             f'<section id="status" data-status="{escape(status)}" style="background:{bg};border-color:{fg};'
             f'color:{fg}"><h1>{escape(status.upper())}: {escape(headline)}</h1>',
             '<div class="counts">' + "".join(f"<span>{count_phrase(n, sev)}</span>" for sev, n in counts.items())
             + f'<span>{int(report.steps)} steps</span>'
             f"<span>run: {escape(name)}</span><span>ended: {escape(str(report.ended))}</span></div>{first}</section>"]
    findings = report.worst("info")
    if findings:
        parts.append(_summary_table(findings))
    parts.append(_doctor(report.extra))  # measured fixes: what to do next, right under what is wrong
    figures = plots.all_plots(report, history) if plots.matplotlib_available() else None
    parts.append('<h2>Plots</h2><div class="plots">')
    if figures is None:
        parts.append('<p>Plots need matplotlib: <code>pip install "gradmon[report]"</code></p>')
    else:
        for key, alt, caption, wide in PLOTS:
            if key in figures:
                parts.append(_figure(figures[key], alt, key, caption, wide))
        if history is None:
            parts.append("<p>(per-step plots need the run's history.npz)</p>")
    parts.append("</div><h2>Findings</h2>")
    if findings:
        parts.extend(_finding(g) for g in _group(findings))
    else:
        parts.append("<p>No findings: gradients, activations, updates and the loss all stayed in healthy ranges.</p>")
    if report.layers:
        parts.append(f"<h2>Layers</h2>{_layers_table(report.layers)}")
    if report.curvature:
        parts.append(f"<h2>Curvature</h2>{_curvature_table(report.curvature)}")
    for key, title in (("notes", "Notes"), ("sink_errors", "Outputs that failed")):
        if report.extra.get(key):
            items = "".join(f"<li>{escape(str(e))}</li>" for e in report.extra[key])
            parts.append(f'<h2>{title}</h2><ul id="{key}">{items}</ul>')
    parts.append(f"<h2>Spec</h2><pre>{escape(json.dumps(report.spec, indent=2, default=str))}</pre>")
    parts.append("</main></body></html>")
    return "".join(parts)


def render_html_fragment(report: HealthReport) -> str:
    """The report's top as a compact HTML fragment for notebooks (``HealthReport._repr_html_``): the status
    banner, then one row per finding, worst first, with where it is and its first fix.  Inline styles only
    (a notebook keeps no ``<style>`` of ours); every string is escaped."""
    status = report.status
    bg, fg = STATUS_COLOURS[status]
    counts = severity_counts(f.severity for f in report.findings)
    name = str(report.spec.get("name", "run")) if isinstance(report.spec, dict) else "run"
    cell = "border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top"
    rows = []
    for f in report.worst("info"):
        colour = SEVERITY_TEXT_COLOURS.get(f.severity, "#555")
        fix = ""
        if f.suggestions:
            s = f.suggestions[0]
            fix = escape(s.text) + (f"<br><code>{escape(patch_to_cli(s.patch))}</code>" if s.patch else "")
        rows.append(f'<tr class="finding" data-code="{escape(f.code)}"><td style="{cell};color:{colour};'
                    f'font-weight:600">{escape(f.severity.upper())}</td><td style="{cell}"><code>{escape(f.code)}'
                    f'</code></td><td style="{cell}">{escape(where(f))}</td><td style="{cell}">'
                    f'{escape(f.message)}</td><td style="{cell}">{fix}</td></tr>')
    table = ""
    if rows:
        head = "".join(f'<th style="{cell};background:#f0f0f0">{h}</th>'
                       for h in ("severity", "finding", "where", "what was seen", "first fix"))
        table = f'<table style="border-collapse:collapse;font-size:12.5px;margin-top:6px"><tr>{head}</tr>' \
                f'{"".join(rows)}</table>'
    return (f'<div class="gradmon-report" data-status="{escape(status)}" style="font-family:system-ui,sans-serif">'
            f'<div style="background:{bg};color:{fg};border:2px solid {fg};border-radius:8px;padding:8px 12px">'
            f'<b>gradmon: {escape(status.upper())}</b> — {escape(name)}, {int(report.steps)} steps '
            f'({escape(str(report.ended))}); {escape(counts_phrase(counts) or "no findings")}</div>{table}</div>')
