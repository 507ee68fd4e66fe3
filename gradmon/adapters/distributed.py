"""Data-parallel runs (``torch.distributed``): every rank measures locally, rank 0 aggregates.

Under DDP the gradients are already averaged over ranks, so gradient statistics agree everywhere.
Activations differ (each rank sees its own shard), so each rank judges its own activation health.  At the
end, :func:`gather_reports` collects every rank's report on rank 0 and :func:`merge_reports` combines
them: activation statistics of each layer are averaged over ranks, and a finding that only some ranks
raised names those ranks (``evidence["ranks"]`` and the message).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

ACTIVATION_STATS = ("saturation", "dead_fraction")


def gather_reports(report: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """All ranks' report dicts on rank 0 (None elsewhere).  Collective: every rank must call it."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(report))
    return gathered if dist.get_rank() == 0 else None


def _mean(values: Sequence[Any]) -> float:
    ok = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    return sum(ok) / len(ok) if ok else float("nan")


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One report dict from every rank's (index = rank); the first is the base."""
    merged = copy.deepcopy(dict(reports[0]))
    world = len(reports)
    for i, layer in enumerate(merged.get("layers", [])):
        for q in ACTIVATION_STATS:
            per_rank = [r["layers"][i].get(q, {}) for r in reports if i < len(r.get("layers", []))]
            if per_rank and q in layer:
                layer[q] = {k: _mean([p.get(k) for p in per_rank]) for k in layer[q]}
    by_key: dict[tuple[str, Any], dict[str, Any]] = {}
    ranks: dict[tuple[str, Any], list[int]] = {}
    for rank, report in enumerate(reports):
        for f in report.get("findings", []):
            key = (f["code"], f["layer"])
            ranks.setdefault(key, []).append(rank)
            if key not in by_key:
                by_key[key] = copy.deepcopy(f)
    findings = []
    for key, f in by_key.items():
        where = sorted(set(ranks[key]))
        if len(where) < world:  # the ranks disagree
            f["evidence"]["ranks"] = where
            f["message"] = f"{f['message']} (on rank{'s' if len(where) > 1 else ''} " \
                           f"{', '.join(map(str, where))} of {world})"
        findings.append(f)
    merged["findings"] = sorted(findings, key=lambda f: (f["first_step"], f["code"]))
    merged.setdefault("extra", {})["world_size"] = world
    return merged
