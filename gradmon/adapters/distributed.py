"""Data-parallel runs (``torch.distributed``): every rank measures locally, rank 0 aggregates.

Under DDP the gradients are already averaged over ranks, so gradient statistics (and weights, update
ratios, the learning rate, curvature) agree everywhere.  The loss and the activation statistics differ:
each rank sees its own shard, and each rank judges its own activation health.  At ``close()``
:func:`merge_ranks` (a collective: every rank calls it) gathers every rank's report and history on rank 0:

- the history keeps rank 0's rows, with the rank-dependent series (:data:`RANK_SCALARS`,
  :data:`RANK_LAYER_QUANTITIES`) replaced by their mean over ranks, step by step.  ``history.npz``, the
  report's plots and its layer table are drawn from it, so they show the rank average;
- a finding that only some ranks raised names those ranks (``evidence["ranks"]`` and the message);
- TensorBoard (rank 0 only): :class:`RankAverageTensorBoard` holds the rank-dependent scalars back during
  training and writes their rank average at the same steps at the end, so no chart shows one rank's shard
  as if it were the run.  Alerts raised live by rank 0 say so; findings from other ranks are added at the end.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import numpy as np

from gradmon.history import LAYER_QUANTITIES, SCALARS, History
from gradmon.sinks.tensorboard import TensorBoardSink

#: history series that differ between ranks (everything else is computed from DDP-averaged gradients)
RANK_SCALARS = ("loss",)
RANK_LAYER_QUANTITIES = ("saturation", "dead_fraction", "act_mean", "act_std")
#: the rank-dependent per-layer quantities the monitor writes to TensorBoard, and the tag prefixes of all
#: rank-dependent scalars there (``loss/train`` and ``<quantity>/<layer>``)
RANK_TB_QUANTITIES = ("saturation", "dead_fraction")
RANK_TAG_PREFIXES = ("loss/", *(f"{q}/" for q in RANK_TB_QUANTITIES))


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable) on rank 0, index = rank; None on the other ranks.  Collective."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered if dist.get_rank() == 0 else None


def history_arrays(history: History) -> dict[str, np.ndarray]:
    """The rank-dependent series of a history as plain arrays: ``steps`` ``(n,)``, ``scalar/<name>``
    ``(n,)`` and ``layer/<name>`` ``(n, n_layers)`` (small: a few kB per rank)."""
    out = {"steps": np.array(history.steps, dtype=np.int64)}
    for name in RANK_SCALARS:
        out[f"scalar/{name}"] = np.array(history.scalar(name), dtype=np.float64)
    for name in RANK_LAYER_QUANTITIES:
        out[f"layer/{name}"] = np.array(history.layer(name), dtype=np.float64)
    return out


def _rank_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite values (NaN where no rank has one)."""
    finite = np.isfinite(stack)
    count = finite.sum(axis=0)
    total = np.where(finite, stack, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def merge_histories(per_rank: Sequence[Mapping[str, np.ndarray]], base: History) -> History:
    """Rank 0's ``base`` history with the rank-dependent series averaged over ranks.

    ``per_rank[r]`` is :func:`history_arrays` of rank ``r``.  Rows are matched by step (ranks step in
    lockstep under DDP; a step some rank did not record is averaged over the ranks that did).
    """
    steps = np.array(base.steps, dtype=np.int64)
    aligned: list[np.ndarray] = []  # per rank: the row of each base step, or -1
    for arrays in per_rank:
        theirs = np.asarray(arrays["steps"], dtype=np.int64)
        order = np.argsort(theirs, kind="stable")
        pos = np.searchsorted(theirs[order], steps)
        pos = np.minimum(pos, max(len(theirs) - 1, 0))
        rows = order[pos] if len(theirs) else np.zeros(len(steps), dtype=np.int64)
        ok = (theirs[rows] == steps) if len(theirs) else np.zeros(len(steps), dtype=bool)
        aligned.append(np.where(ok, rows, -1))

    def mean_of(key: str, own: np.ndarray) -> np.ndarray:
        stack = np.full((len(per_rank),) + own.shape, np.nan)
        for r, (arrays, rows) in enumerate(zip(per_rank, aligned)):
            found = rows >= 0
            stack[r][found] = np.asarray(arrays[key])[rows[found]]
        return _rank_mean(stack)

    scalars = {name: np.array(base.scalar(name), dtype=np.float64) for name in SCALARS}
    layers = {name: np.array(base.layer(name), dtype=np.float64) for name in LAYER_QUANTITIES}
    for name in RANK_SCALARS:
        scalars[name] = mean_of(f"scalar/{name}", scalars[name])
    for name in RANK_LAYER_QUANTITIES:
        layers[name] = mean_of(f"layer/{name}", layers[name])
    merged = History(base.layer_names, capacity=base.capacity)
    for i, step in enumerate(steps):
        merged.append(int(step), {k: float(v[i]) for k, v in scalars.items()}, {k: v[i] for k, v in layers.items()})
    merged.stride = base.stride
    return merged


def merge_findings(base: Mapping[str, Any], reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rank 0's report dict ``base`` (built from the rank-averaged history) with the findings of every rank
    (``reports``, index = rank): a finding only some ranks raised names them (``evidence["ranks"]`` and the
    message)."""
    merged = copy.deepcopy(dict(base))
    world = len(reports)
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


class RankAverageTensorBoard(TensorBoardSink):
    """Rank 0's TensorBoard sink under ``torch.distributed``: the rank-dependent scalars (tags starting
    with :data:`RANK_TAG_PREFIXES`) are held back while training and written at :meth:`close`, from the
    rank-averaged history, at the steps they would have had.  Live alerts (rank 0's own judgment) carry
    ``[seen by rank 0 of N]``; findings only other ranks raised are alerted at the end."""

    def __init__(self, logdir: Any, world: int, **options: Any) -> None:
        super().__init__(logdir, **options)
        self.world = int(world)
        self.held_steps: list[int] = []   # steps whose rank-dependent scalars were held back
        self.alerted: set[tuple[str, Any]] = set()
        self._averaging = False
        self.alert_suffix = f" [seen by rank 0 of {self.world}]"

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self._averaging:
            kept = {k: v for k, v in values.items() if not k.startswith(RANK_TAG_PREFIXES)}
            if len(kept) < len(values):
                self.held_steps.append(int(step))
            values = kept
        if values:
            super().scalars(step, values)

    def finding(self, finding: Any) -> None:
        self.alerted.add((finding.code, finding.layer))
        super().finding(finding)

    def close(self, report: Any = None, history: History | None = None, written: Sequence[Any] = ()) -> None:
        """The held-back scalars from the merged ``history``, alerts for the merged findings that rank 0 did
        not raise itself, then the report text, hyperparameters and the end of the event file."""
        self._write_unwritten()  # (their rank-dependent scalars are held back too)
        if history is not None:
            self._write_rank_average(history)
        for f in (report.findings if report is not None else []):
            if (f.code, f.layer) not in self.alerted:
                self.alert(f.first_step, f.code, f.severity, f.layer, f.message)
        super().close(report, history, written)

    def _write_rank_average(self, history: History) -> None:
        rows = {int(s): i for i, s in enumerate(history.steps)}
        loss = history.scalar("loss")
        per_layer = {q: history.layer(q) for q in RANK_TB_QUANTITIES}
        self._averaging = True
        for step in sorted(set(self.held_steps)):
            i = rows.get(step)
            if i is None:  # thinned out of a long history
                continue
            values = {"loss/train": float(loss[i])}
            for q, arr in per_layer.items():
                for j, name in enumerate(history.layer_names):
                    v = float(arr[i, j])
                    if math.isfinite(v):
                        values[self.unit_tag(q, j)] = v
            self.scalars(step, values)
        self._averaging = False


def merge_ranks(monitor: Any) -> None:
    """At the end of a data-parallel run (collective: every rank calls it, after judging): rank 0 gathers
    every rank's report and history and hands the monitor the rank-averaged history and a report holding
    every rank's findings (:meth:`gradmon.monitor.Monitor.adopt_merged`), which its sinks and report files
    then show."""
    report = monitor.report().to_dict()
    gathered = gather_objects({"report": report, "history": history_arrays(monitor.history)})
    if gathered is None:  # not rank 0
        return
    monitor.adopt_merged(merge_histories([g["history"] for g in gathered], monitor.history))
    # rank 0's report from the averaged history (layer table, loss series), with every rank's findings
    monitor.adopt_merged(monitor.history, merge_findings(monitor.report().to_dict(), [g["report"] for g in gathered]))
