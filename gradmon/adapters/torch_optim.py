"""A PyTorch optimizer as gradmon describes it: its name, hyperparameters, and the learning rate of each
unit from the parameter group that holds it (schedulers followed, group by group).

With several parameter groups, the run's learning rate (``RunInfo.hyperparams["lr"]``, ``StepState.lr``:
what curvature is compared against) is that of the *binding* group: for SGD the group whose stability bound
``2(1+β)/lr`` (Nesterov: ``2(1+β)/(lr(1+2β))``) is lowest, with that group's momentum and Nesterov flag (a
λmax below it is below every group's bound); for other optimizers the group with the largest learning
rate.  ``StepState.lrs`` gives every parameter's own learning rate when the groups differ.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from gradmon.vocabulary import stability_threshold

#: torch optimizer classes by the name core gives them
OPTIMIZER_NAMES: dict[str, str] = {"SGD": "sgd", "Adam": "adam", "AdamW": "adam", "RMSprop": "rmsprop",
                                   "Adagrad": "adagrad"}


def _number(value: Any, default: float = 0.0) -> float:
    """A group setting as a float (a tensor learning rate, as some schedulers keep it, included)."""
    if value is None:
        return default
    if isinstance(value, torch.Tensor):
        return float(value.detach().reshape(-1)[0])
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _bound(group: Mapping[str, Any]) -> float:
    lr = _number(group.get("lr"), math.nan)
    momentum = _number(group.get("momentum"))
    if not lr > 0 or not 0.0 <= momentum < 1.0:
        return math.inf
    return stability_threshold(lr, momentum, bool(group.get("nesterov", False)))


class GroupRates:
    """The learning rates of an optimizer's parameter groups for the parameters gradmon measures.

    ``keys`` are the parameter keys in the watcher's order and ``tensors`` the parameters themselves (a
    parameter in no group has no learning rate: NaN)."""

    def __init__(self, optimizer: torch.optim.Optimizer | None, keys: Sequence[str],
                 tensors: Sequence[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.keys = tuple(keys)
        groups = optimizer.param_groups if optimizer is not None else []
        where = {id(p): g for g, group in enumerate(groups) for p in group["params"]}
        self.group_of = [where.get(id(t), -1) for t in tensors]
        self.name = "none" if optimizer is None else OPTIMIZER_NAMES.get(type(optimizer).__name__,
                                                                           type(optimizer).__name__.lower())
        used = sorted({g for g in self.group_of if g >= 0}) or list(range(len(groups)))
        if not used:
            self.binding = -1
        elif self.name == "sgd":
            self.binding = min(used, key=lambda g: (_bound(groups[g]), g))
        else:
            self.binding = max(used, key=lambda g: (_number(groups[g].get("lr"), -math.inf), -g))
        self.several = len({g for g in self.group_of}) > 1
        self._raw: tuple[Any, ...] | None = None   # the groups' rates as last seen (floats or tensors)
        self._lr = math.nan
        self._lrs: dict[str, float] | None = None

    def hyperparams(self) -> tuple[str, dict[str, Any]]:
        """The optimizer's name as core spells it (``momentum`` for SGD with momentum) and the binding
        group's settings (``lr``, ``momentum``, ``nesterov``, ``betas``... as numbers)."""
        if self.binding < 0:
            return self.name, {"lr": math.nan}
        group = self.optimizer.param_groups[self.binding]
        name = self.name
        hyper: dict[str, Any] = {"lr": _number(group.get("lr"), math.nan)}
        if "momentum" in group:
            hyper["momentum"] = _number(group.get("momentum"))
            if name == "sgd" and hyper["momentum"] > 0:
                name = "momentum"
        if group.get("nesterov"):
            hyper["nesterov"] = True
        for key in ("weight_decay", "eps", "alpha"):
            if key in group:
                hyper[key] = _number(group.get(key))
        if "betas" in group:
            hyper["beta1"], hyper["beta2"] = (_number(b) for b in group["betas"])
        if self.several:
            hyper["param_groups"] = len(self.optimizer.param_groups)
        return name, hyper

    def now(self) -> tuple[float, Mapping[str, float] | None]:
        """The binding group's learning rate now, and every key's own when the groups' rates differ (None
        when they agree); rebuilt only when a rate changed (schedulers)."""
        if self.binding < 0:
            return math.nan, None
        raw = tuple(group.get("lr") for group in self.optimizer.param_groups)
        if raw is not self._raw and raw != self._raw:
            self._raw = raw
            rates = [_number(r, math.nan) for r in raw]
            self._lr = rates[self.binding]
            mine = [rates[g] if g >= 0 else math.nan for g in self.group_of]
            self._lrs = dict(zip(self.keys, mine)) if len(set(mine)) > 1 else None
        return self._lr, self._lrs
