"""The monitored units of a network, in input-to-output order.

A unit is a layer that owns parameters (a Dense layer in core; any parameterised module in PyTorch), with
the activation applied to its outputs (the next activation layer, past any BatchNorm or Dropout).
Gradient norms, weight norms and update ratios belong to a unit's parameters; saturation and dead
fractions to its activation.  Reports and detectors speak of the unit's name (``dense0``...).

Core's layers become units by :func:`units_from_run`: each Dense layer with the activation that follows
it.  Other loops describe their units themselves, either as layers (``LayerInfo.kind`` other than an
activation, with ``params``), which get the same treatment, or as :class:`Unit` objects directly (the
PyTorch adapter: ``Monitor(units=...)``), when they know more than the order of layers (which activation
consumes which unit's output, tied parameters, the channel axis of convolutions).
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
    (channels for convolutions).  Its activation's units lie along ``channel_axis`` of the activation's
    output (``-1`` for dense and sequence outputs ``(batch, ..., features)``, ``1`` for ``(batch,
    channels, *spatial)``): a unit (channel) is dead when it is zero over the batch and every other axis.

    ``aliases`` names other keys of the same tensors (tied weights: each tensor belongs to one unit, under
    its first owner's key); ``note`` says why the unit has no activation statistics when it has none
    (``activation`` may still name the family, e.g. the tanh inside an LSTM, with ``activation_layer``
    None: not measured, never "not saturated").
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
    channel_axis: int = -1
    aliases: tuple[str, ...] = ()
    note: str | None = None

    @property
    def weight(self) -> str:
        """The main weight key (the first of ``weights``): its histogram represents the layer."""
        return self.weights[0]


def is_bias(key: str) -> bool:
    """Whether a parameter key names a bias: its last part is ``bias``, starts with ``bias`` (``bias_ih_l0``
    of recurrent layers) or ends with ``_bias`` (``in_proj_bias`` of attention)."""
    last = key.rsplit(".", 1)[-1]
    return last.startswith("bias") or last.endswith("_bias")


def split_params(params: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``(weights, bias)`` of a layer's parameter keys: ``bias`` is the key named exactly ``bias`` (else the
    first bias-like key, :func:`is_bias`); the weights are the keys that are not biases (all keys when that
    leaves none)."""
    biases = [p for p in params if is_bias(p)]
    bias = next((p for p in biases if p.rsplit(".", 1)[-1] == "bias"), biases[0] if biases else None)
    weights = tuple(p for p in params if p not in biases) or params
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
        weights, bias = split_params(info.params)
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
