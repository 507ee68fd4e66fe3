"""What the PyTorch watcher settles at the start of a run: the units (from the traced forward pass), how
activations are captured, what is not measured and why, and the run's description for the monitor.

:func:`lay_out` turns the trace of the first forward pass (:class:`~gradmon.adapters.torch_activations.Tracer`,
None when none could be traced: a compiled model) into a :class:`Start`; :func:`notes` words what the run
does not measure (frozen, unused and tied parameters, units without activation statistics), once, for the
report and the console; :func:`run_info` describes the run in core's terms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from core.callbacks import RunInfo
from gradmon.adapters.torch_activations import Plan, Tracer, plan_capture
from gradmon.adapters.torch_layout import HIDDEN, Candidate, Layout, build_layout, candidates, coverage, \
    display_names, layer_infos, make_units
from gradmon.adapters.torch_optim import GroupRates
from gradmon.layout import Unit
from gradmon.outputs import spec_from_run

#: loss names (as core spells them) of common torch losses, for the run description
LOSS_NAMES: dict[Any, str] = {
    F.cross_entropy: "cross_entropy", nn.CrossEntropyLoss: "cross_entropy", F.nll_loss: "cross_entropy",
    nn.NLLLoss: "cross_entropy", F.mse_loss: "mse", nn.MSELoss: "mse",
    F.binary_cross_entropy: "binary_cross_entropy", nn.BCELoss: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy", nn.BCEWithLogitsLoss: "binary_cross_entropy",
}


@dataclass
class Start:
    """A run's layout: the candidate units and module names (after lazy modules materialised), the units,
    the capture plan, and per unit without activation statistics ``(HIDDEN or ABSENT, why, why for it)``."""

    cands: list[Candidate]
    names: dict[str, str]
    layout: Layout
    units: list[Unit]
    plan: Plan
    cover: dict[str, tuple[str, str, str]]


def lay_out(model: nn.Module, tracer: Tracer | None, compiled: bool,
            optimizer: torch.optim.Optimizer | None = None) -> Start:
    """The units of ``model`` in the order the traced forward pass used them, with the activations it saw
    attributed; without a usable trace, every module owning trainable parameters in registration order,
    with no activation statistics (and the reason).  With an ``optimizer``, the parameters it does not hold
    are not trained: set aside like frozen ones."""
    traced = tracer is not None and tracer.done and tracer.failed is None
    untraced = None
    if compiled:
        untraced = "the model runs under torch.compile, whose compiled code runs no hooks"
    elif tracer is not None and tracer.failed:
        untraced = f"the forward pass could not be traced ({tracer.failed})"
    elif not traced:
        untraced = ("no forward pass with gradients ran eagerly before the first step (a model under "
                    "torch.compile runs no hooks)")
    cands, names = candidates(model), display_names(model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]} if optimizer is not None else None
    trained = (lambda p: id(p) in held) if held is not None else None
    layout = build_layout(model, cands, tracer.rank() if traced else None, trained)
    if not layout.units:  # trainable parameters the traced pass never used (or the optimizer's): watch them
        layout = build_layout(model, cands, None, trained)
    if not layout.units:
        layout = build_layout(model, cands, None)
    plan = plan_capture(tracer, layout.units, names) if traced else Plan("modules", {}, {})
    cover = coverage(layout, plan.attributed, tracer.flows if traced else {}, {c.key: c.name for c in cands},
                     untraced)
    units = make_units(layout, plan.attributed, tracer.feeds_batchnorm if traced else set(),
                       {k: mine for k, (_, _, mine) in cover.items()})
    return Start(cands, names, layout, units, plan, cover)


def notes(start: Start, rates: GroupRates) -> list[tuple[str, bool]]:
    """Sentences for the report on what the run does not measure, each with whether the console says it
    too (what the user may not expect: frozen or unused parameters, activations gradmon cannot see)."""
    layout, out = start.layout, []
    if layout.frozen:
        out.append((f"frozen (requires_grad=False), not monitored: {listing(layout.frozen)}", True))
    if layout.idle:
        out.append((f"outside the optimizer's parameter groups (not updated), not monitored: "
                    f"{listing(layout.idle)}", True))
    if layout.unused:
        out.append((f"never called in the traced forward pass, not monitored: {listing(layout.unused)}", True))
    out.extend((f"tied: {line}", False) for line in layout.tied)
    if rates.several:
        out.append(("parameter groups with different learning rates: each unit's rate is in the report's layers; "
                    "curvature is compared with the binding group's bound", False))
    names = {c.key: c.name for c in layout.units}
    by_reason: dict[tuple[str, str], list[str]] = {}
    for key, (kind, why, _) in start.cover.items():
        by_reason.setdefault((kind, why), []).append(names[key])
    out.extend((f"no activation statistics for {listing(units)}: {why}", kind == HIDDEN)
               for (kind, why), units in by_reason.items())
    return out


def run_info(model: nn.Module, layout: Layout, units: list[Unit], rates: GroupRates, *, loss: str, name: str,
             expected_steps: int, probe: Callable | None) -> RunInfo:
    """The run in core's terms (layers, optimizer and hyperparameters of the binding parameter group, frozen
    parameters), with a spec-like description for reports."""
    optimizer, hyper = rates.hyperparams()
    run = RunInfo(layers=tuple(layer_infos(model, units)), loss=loss, optimizer=optimizer, hyperparams=hyper,
                  batch_size=0, batch_mode="mini-batch", n_train=0, epochs=1, steps_per_epoch=expected_steps,
                  probe=probe, framework="torch",
                  frozen=(*layout.frozen, *(f"{entry} outside the optimizer" for entry in layout.idle)))
    return dataclasses.replace(run, spec={"name": name, **spec_from_run(run)})


def listing(names: list[str], most: int = 6) -> str:
    """``a, b, c`` (and ``and N more`` past ``most``)."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
