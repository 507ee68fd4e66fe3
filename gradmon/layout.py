"""The monitored units of a network, in input-to-output order.

A unit is a layer that owns parameters (a Dense layer in core; any parameterised module in PyTorch), with
the activation applied to its outputs (the next activation layer, past any BatchNorm or Dropout).
Gradient norms, weight norms and update ratios belong to a unit's parameters; saturation and dead
fractions to its activation.  Reports and detectors speak of the unit's name (``dense0``...).

Core's layers become units by :func:`units_from_run`: each Dense layer with the activation that follows
it.  Other loops describe their units themselves (``LayerInfo.kind`` other than an activation, with
``params``) and get the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.callbacks import LayerInfo, RunInfo

#: layer kinds that sit between a unit and its activation without owning the unit (they never start one)
PASS_THROUGH = ("batchnorm", "dropout")


@dataclass(frozen=True)
class Unit:
    """One monitored layer: ``index`` counts units from the input (0) to the output.

    ``params`` are all its parameter keys (gradient norms); ``weights`` the ones whose norms and update
    ratios describe how fast the layer moves (matrices and kernels; all of them when it has none);
    ``bias`` its bias vector (its mean tells whether rectifiers are pushed off); ``units`` its output width
    (channels for convolutions).  ``frozen`` units are listed but have no gradient statistics.
    """

    name: str
    index: int
    params: tuple[str, ...]
    weights: tuple[str, ...]
    bias: str | None = None
    activation_layer: str | None = None
    activation: str | None = None
    init: str | None = None
    units: int | None = None
    batchnorm: bool = False
    bias_init: float | None = None
    kind: str = "dense"

    @property
    def weight(self) -> str:
        """The main weight key (the first of ``weights``): its histogram represents the layer."""
        return self.weights[0]


def _split(params: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``(weights, bias)`` of a layer's parameter keys: a key ending in ``bias`` is the bias; everything
    else is a weight (all keys when that leaves none)."""
    bias = next((p for p in params if p.rsplit(".", 1)[-1] == "bias"), None)
    weights = tuple(p for p in params if p != bias) or params
    return weights, bias


def units_from_run(run: RunInfo) -> list[Unit]:
    """Monitored units in input-to-output order, from a run's layer list: every layer with parameters that is
    not a pass-through normalisation (core's BatchNorm belongs to the Dense layer before it), paired with the
    first activation after it (before the next unit)."""
    layers: list[LayerInfo] = list(run.layers)
    out: list[Unit] = []
    for i, info in enumerate(layers):
        if not info.params or info.kind in PASS_THROUGH or info.activation is not None:
            continue
        weights, bias = _split(info.params)
        act_layer = act = None
        batchnorm = False
        for nxt in layers[i + 1:]:
            if nxt.params and nxt.kind not in PASS_THROUGH and nxt.activation is None:
                break
            if nxt.kind == "batchnorm":
                batchnorm = True
            if nxt.activation is not None:
                act_layer, act = nxt.name, nxt.activation
                break
        out.append(Unit(name=info.name, index=len(out), params=tuple(info.params), weights=weights, bias=bias,
                        activation_layer=act_layer, activation=act, init=info.init, units=info.units,
                        batchnorm=batchnorm, bias_init=info.bias_init, kind=info.kind))
    if not out:
        raise ValueError("the model has no layer with trainable parameters to monitor")
    return out
