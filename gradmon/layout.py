"""The monitored units of a network: each Dense layer with the activation that follows it.

Gradient norms, weight norms and update ratios belong to a Dense layer's parameters; saturation and dead
fractions to the activation applied to its outputs (the next activation layer, past any BatchNorm or
Dropout).  Reports and detectors speak of the Dense layer's name (``dense0``...).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.callbacks import RunInfo


@dataclass(frozen=True)
class Unit:
    """One monitored layer: ``index`` counts Dense layers from the input (0) to the output."""

    name: str
    index: int
    weight: str
    bias: str | None
    activation_layer: str | None
    activation: str | None
    init: str | None
    units: int | None
    batchnorm: bool = False
    bias_init: float | None = None

    @property
    def params(self) -> tuple[str, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)


def units_from_run(run: RunInfo) -> list[Unit]:
    """Monitored units in input-to-output order, from a run's layer list."""
    layers = list(run.layers)
    out: list[Unit] = []
    for i, info in enumerate(layers):
        if info.kind != "dense":
            continue
        weight = next((p for p in info.params if p.endswith(".weight")), None)
        if weight is None:
            continue
        bias = next((p for p in info.params if p.endswith(".bias")), None)
        act_layer = act = None
        batchnorm = False
        for nxt in layers[i + 1:]:
            if nxt.kind == "dense":
                break
            if nxt.kind == "batchnorm":
                batchnorm = True
            if nxt.activation is not None:
                act_layer, act = nxt.name, nxt.activation
                break
        out.append(Unit(name=info.name, index=len(out), weight=weight, bias=bias, activation_layer=act_layer,
                        activation=act, init=info.init, units=info.units, batchnorm=batchnorm,
                        bias_init=info.bias_init))
    if not out:
        raise ValueError("the model has no Dense layer with a weight to monitor")
    return out
