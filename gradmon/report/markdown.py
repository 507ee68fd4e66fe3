"""The health report as Markdown (for CI summaries, pull requests and TensorBoard's text tab)."""

from __future__ import annotations

import json
import math
from typing import Any

from gradmon.findings import HealthReport
from gradmon.report.text import patch_to_cli

def fmt(value: Any) -> str:
    """Numbers to 4 significant digits; everything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def cell(value: Any) -> str:
    """A table cell: pipes and newlines escaped."""
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: HealthReport, history: Any = None) -> str:
    counts = {s: sum(f.severity == s for f in report.findings) for s in ("error", "warning", "info")}
    out = [f"# gradmon health report: {report.status.upper()}", "",
           f"{report.steps} steps, ended: {report.ended}; findings: {counts['error']} errors, "
           f"{counts['warning']} warnings, {counts['info']} info.", ""]
    if report.findings:
        out += ["## Findings", ""]
        for f in report.worst("info"):
            out.append(f"### {f.severity.upper()}: `{f.code}`" + (f" in `{f.layer}`" if f.layer else "")
                       + f" (steps {f.first_step}–{f.last_step})")
            out += ["", f.message, ""]
            if f.evidence:
                out += ["| evidence | value |", "| --- | --- |"]
                out += [f"| {cell(k)} | {cell(v)} |" for k, v in f.evidence.items()]
                out.append("")
            for s in f.suggestions:
                out.append(f"- **{s.code}**: {s.text}" + (f" `{patch_to_cli(s.patch)}`" if s.patch else ""))
            out.append("")
    if report.layers:
        out += ["## Layers", "", "| layer | grad norm (first → last) | update ratio (median) | saturation (median) "
                "| dead fraction (median) |", "| --- | --- | --- | --- | --- |"]
        for layer in report.layers:
            g = layer.get("grad_norm", {})
            out.append(f"| {cell(layer.get('name'))} | {cell(g.get('first'))} → {cell(g.get('last'))} | "
                       f"{cell(layer.get('update_ratio', {}).get('median'))} | "
                       f"{cell(layer.get('saturation', {}).get('median'))} | "
                       f"{cell(layer.get('dead_fraction', {}).get('median'))} |")
        out.append("")
    if report.curvature:
        out += ["## Curvature", "", "| step | λmax | 2/lr bound | trace | HVPs |", "| --- | --- | --- | --- | --- |"]
        for c in report.curvature:
            out.append(f"| {c.get('step')} | {cell(c.get('lambda_max'))} | {cell(c.get('threshold', '-'))} | "
                       f"{cell(c.get('trace'))} | {c.get('hvps')} |")
        out.append("")
    if report.extra.get("doctor"):
        out += ["## Doctor: fixes tried", "", "| rank | fix | loss | closed | still open |",
                "| --- | --- | --- | --- | --- |"]
        for t in report.extra["doctor"].get("trials", []):
            out.append(f"| {t['rank']} | {cell('+'.join(t['suggestions']))} | {cell(t.get('val_loss', t['final_loss']))}"
                       f" | {cell(', '.join(t['closed']) or '-')} | {cell(', '.join(t['findings']) or '-')} |")
        out.append("")
    out += ["## Spec", "", "```json", json.dumps(report.spec, indent=2, default=str), "```", ""]
    return "\n".join(out)
