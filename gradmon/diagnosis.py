"""A run's diagnosis: its root cause and the one fix to try first, read from linked findings.

The jury links findings (:mod:`gradmon.causes`): a finding another one explains carries
``evidence["caused_by"] = {"code": ..., "layer": ...}`` and is a *consequence*; a finding nothing explains is
a *root*, and lists what it explains in ``evidence["consequences"]``.  This module only reads those links, so
every presentation (console, ``report.json``, HTML, Markdown, TensorBoard, ``gradmon check``, ``gradmon
doctor``, ``gradmon demo``) names the same root and the same first fix:

>>> root = primary(report.findings)            # doctest: +SKIP
>>> fix = primary_fix(report.findings)         # root.suggestions[0]   # doctest: +SKIP

The primary root is, among the warning and error findings that no other explains, the most severe; between
equally severe roots the one earlier in :data:`ROOT_ORDER` (a cause upstream of the others: the data before the
step size, the step size before the network's shape), then the earliest.  Plain data: it imports nothing
but the vocabulary, and works on anything shaped like :class:`gradmon.findings.Finding`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from gradmon.vocabulary import SEVERITIES, severity_rank

#: finding codes in the order roots of equal severity are ranked: causes upstream of others first
ROOT_ORDER: tuple[str, ...] = (
    "unscaled_inputs", "nonfinite_values", "sharpness_above_stability", "loss_divergence", "exploding_gradients",
    "vanishing_gradients", "saturated_activations", "dead_units", "loss_oscillation", "update_ratio",
    "loss_plateau",
)


def cause_of(finding: Any) -> tuple[str, str | None] | None:
    """``(code, layer)`` of the finding that explains ``finding`` (None for a root)."""
    link = (getattr(finding, "evidence", None) or {}).get("caused_by")
    if isinstance(link, Mapping) and isinstance(link.get("code"), str):
        layer = link.get("layer")
        return link["code"], layer if isinstance(layer, str) else None
    return None


def name(code: str, layer: str | None) -> str:
    """``"dead_units in dense4"``, or the bare code for a model-wide finding."""
    return f"{code} in {layer}" if layer else code


def severity(f: Any, findings: Sequence[Any] = ()) -> str:
    """How grave ``f`` is as a cause: the worst of its own severity and of what it explains (a sharpness
    finding that is only information by itself is an error when it explains a divergence)."""
    worst = max([severity_rank(f.severity)] + [severity_rank(c.severity) for c in consequences(f, findings)])
    return SEVERITIES[worst]


def root_rank(f: Any, findings: Sequence[Any] = ()) -> tuple:
    """Sort key of roots: most severe (with what they explain) first, then :data:`ROOT_ORDER`, then the
    earliest."""
    order = ROOT_ORDER.index(f.code) if f.code in ROOT_ORDER else len(ROOT_ORDER)
    return (-severity_rank(severity(f, findings)), order, int(f.first_step))


def roots(findings: Sequence[Any]) -> list[Any]:
    """The findings that no other explains and that are a warning or an error, by themselves or through what
    they explain; primary first."""
    chosen = [f for f in findings if cause_of(f) is None and severity_rank(severity(f, findings)) >= 1]
    return sorted(chosen, key=lambda f: root_rank(f, findings))


def primary(findings: Sequence[Any]) -> Any | None:
    """The root cause: the first of :func:`roots` (None when there is no warning or error)."""
    found = roots(findings)
    return found[0] if found else None


def primary_fix(findings: Sequence[Any]) -> Any | None:
    """The one fix to try first: the root cause's first suggestion (None without a root or a suggestion)."""
    root = primary(findings)
    return root.suggestions[0] if root is not None and root.suggestions else None


def consequences(root: Any, findings: Sequence[Any]) -> list[Any]:
    """The findings ``root`` explains, directly or through another consequence."""
    out: list[Any] = []
    frontier = [(root.code, root.layer)]
    seen = {(root.code, root.layer)}
    while frontier:
        key = frontier.pop()
        for f in findings:
            if cause_of(f) == key and (f.code, f.layer) not in seen:
                seen.add((f.code, f.layer))
                out.append(f)
                frontier.append((f.code, f.layer))
    return out


def summary(findings: Sequence[Any]) -> dict[str, Any] | None:
    """The diagnosis as plain data (``report.json``'s ``diagnosis``): ``root`` (code, layer, severity, first
    step, message), ``fix`` (the primary fix as a suggestion dict, or None), ``consequences`` and
    ``other_roots`` (code and layer of each).  None when there is no warning or error."""
    found = roots(findings)
    if not found:
        return None
    root = found[0]
    fix = root.suggestions[0] if root.suggestions else None
    return {
        "root": {"code": root.code, "layer": root.layer, "severity": severity(root, findings),
                 "first_step": int(root.first_step), "message": root.message},
        "fix": {"code": fix.code, "text": fix.text, "patch": dict(fix.patch)} if fix is not None else None,
        "consequences": [{"code": f.code, "layer": f.layer} for f in consequences(root, findings)],
        "other_roots": [{"code": f.code, "layer": f.layer} for f in found[1:]],
    }
