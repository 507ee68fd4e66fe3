"""Units of a PyTorch model: every module that owns parameters, in the order the forward pass uses them.

- **Candidates.**  Every module owning parameters directly (``named_parameters(recurse=False)``) is a
  candidate unit: ``Linear``, ``Conv*``, ``ConvTranspose*``, ``Embedding*``, normalisations, any custom
  module with parameters of its own.  ``MultiheadAttention`` is one unit (its ``out_proj`` included);
  ``RNN``/``LSTM``/``GRU`` give one unit per layer and direction (``lstm.l0``, ``lstm.l0_reverse``...).
- **Order.**  Candidates are ordered by the first use of their parameters in the traced forward pass
  (:mod:`gradmon.adapters.torch_activations`), else by when their forward started; candidates the traced
  forward never called are not units (their parameters get no gradient): they are listed as unused.
- **Ownership.**  Each parameter belongs to exactly one unit, by identity: a tied or shared tensor is
  counted once, in the first unit (in forward order) that holds it, under torch's own key
  (``model.named_parameters()``); the other names are kept as the unit's ``aliases``.  Frozen parameters
  (``requires_grad=False``) belong to no unit: a module whose parameters are all frozen is listed as
  frozen, never measured (whatever stale ``.grad`` it holds).
- **Names.**  A unit is named after its module's qualified name, with a bare index replaced by the class
  name and index (``Sequential`` index ``0`` -> ``linear0``, ``net.2`` -> ``net.conv2d2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from core.callbacks import LayerInfo
from gradmon.layout import Unit, split_params

# -- activations by module and by function -------------------------------------------------------------------
#: activation modules and the family gradmon judges them as (exact classes; subclasses by their parents)
ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.PReLU: "prelu", nn.LeakyReLU: "leaky_relu", nn.RReLU: "rrelu",
    nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish",
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "hardtanh", nn.Hardsigmoid: "hardsigmoid",
    nn.Softplus: "softplus", nn.Softsign: "softsign",
}

#: functional activations, as ``__torch_function__`` sees them (the module forms call these too)
ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", torch.Tensor.relu: "relu",
    torch.Tensor.relu_: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    F.prelu: "prelu", F.rrelu: "rrelu", F.rrelu_: "rrelu", F.elu: "elu", F.elu_: "elu", F.selu: "selu",
    torch.selu: "selu", torch.selu_: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.mish: "mish",
    torch.sigmoid: "sigmoid", torch.sigmoid_: "sigmoid", torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.sigmoid_: "sigmoid", torch.tanh: "tanh", torch.tanh_: "tanh", torch.Tensor.tanh: "tanh",
    torch.Tensor.tanh_: "tanh", F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh", F.hardsigmoid: "hardsigmoid",
    F.softplus: "softplus", F.softsign: "softsign", torch.clamp: "clamp", torch.Tensor.clamp: "clamp",
    torch.clip: "clamp", torch.Tensor.clip: "clamp", torch.clamp_min: "clamp", torch.Tensor.clamp_min: "clamp",
    torch.Tensor.clamp_: "clamp", torch.Tensor.clamp_min_: "clamp",
}
ACTIVATION_FUNCTIONS = {f: k for f, k in ACTIVATION_FUNCTIONS.items() if f is not None}


def _hardtanh_kind(low: float, high: float) -> str | None:
    """``hardtanh(min, max)`` is ReLU6 for ``min >= 0`` (a rectifier), the saturating hardtanh for the
    default ``(-1, 1)``; other ranges are no family gradmon judges."""
    if low >= 0:
        return "relu6"
    return "hardtanh" if (low, high) == (-1.0, 1.0) else None


def activation_kind(module: nn.Module) -> str | None:
    """The activation family of an activation module (None for any other module)."""
    if isinstance(module, nn.Hardtanh):
        return _hardtanh_kind(float(module.min_val), float(module.max_val))
    for cls in type(module).__mro__:
        kind = ACTIVATION_MODULES.get(cls)
        if kind is not None:
            return kind
    return None


def function_kind(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """The activation family of a torch function call (None when it is not an activation)."""
    kind = ACTIVATION_FUNCTIONS.get(func)
    if kind == "clamp":  # x.clamp(min=0) is a ReLU; other clamps are no activation gradmon judges
        low = kwargs.get("min", args[1] if len(args) > 1 else None)
        high = kwargs.get("max", args[2] if len(args) > 2 else None)
        return "relu" if isinstance(low, (int, float)) and low == 0 and high is None else None
    if kind == "hardtanh":
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        return _hardtanh_kind(float(low), float(high))
    return kind


# -- module kinds -------------------------------------------------------------------------------------------
#: modules whose outputs are ``(batch, channels, *spatial)``: their units are channels along axis 1
CHANNEL_FIRST: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                                   nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LocalResponseNorm)
#: recurrent modules: their activations are applied inside a fused kernel, out of reach of hooks
RECURRENT: tuple[type, ...] = (nn.RNNBase, nn.RNNCellBase)
_RNN_PARAM = re.compile(r"_l(\d+)(_reverse)?$")


def unit_kind(module: nn.Module) -> str:
    """``dense`` for ``nn.Linear`` (as core names it), else the lower-case class name."""
    return "dense" if isinstance(module, nn.Linear) else type(module).__name__.lower()


def recurrent_activation(module: nn.Module) -> str:
    """The saturating family inside a recurrent module (its nonlinearity for ``nn.RNN``: tanh or relu)."""
    return str(getattr(module, "nonlinearity", "tanh"))


def _width(module: nn.Module) -> int | None:
    """The module's output width (features or channels), where its class says it."""
    for attr in ("out_features", "out_channels", "num_features", "embedding_dim", "hidden_size", "embed_dim",
                 "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


# -- names --------------------------------------------------------------------------------------------------
def display_names(model: nn.Module) -> dict[str, str]:
    """Readable names of the model's modules, keyed by qualified name.

    A bare index (what ``nn.Sequential`` and ``nn.ModuleList`` use) becomes the lower-case class name plus
    the index: ``"0"`` -> ``"linear0"``, ``"net.2"`` -> ``"net.relu2"``; other names stay as they are
    (``"fc1"``), and the model itself is named after its class.  When a readable name would collide with
    another module's, the qualified name is kept.
    """
    out: dict[str, str] = {}
    for qual, module in model.named_modules():
        head, _, last = qual.rpartition(".")
        kind = type(module).__name__.lower()
        if not qual:
            name = kind
        elif last.isdigit():
            name = f"{head}.{kind}{last}" if head else f"{kind}{last}"
        else:
            name = qual
        out[qual] = name
    taken = set(out)
    seen: set[str] = set()
    for qual, name in out.items():
        if name != qual and (name in taken or name in seen):
            out[qual] = qual
        seen.add(out[qual])
    return out


def call_name(name: str, call: int) -> str:
    """The name of the ``call``-th call (0-based) of a module within one forward pass: ``name``, then
    ``name#2``, ``name#3``..."""
    return name if call == 0 else f"{name}#{call + 1}"


# -- candidates ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A module (or one layer and direction of a recurrent module) owning parameters.

    ``key`` identifies it (the module's qualified name, plus ``:l0`` / ``:l0_reverse`` for recurrent
    layers); ``params`` are ``(its own key for the parameter, the parameter)`` in registration order."""

    key: str
    qual: str
    name: str
    kind: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]
    channel_axis: int = -1
    width: int | None = None
    recurrent: bool = False


def _prefix(qual: str, local: str) -> str:
    return f"{qual}.{local}" if qual else local


def candidates(model: nn.Module) -> list[Candidate]:
    """Every module owning parameters, in registration order (a module registered twice counts once)."""
    names = display_names(model)
    out: list[Candidate] = []
    absorbed: set[int] = set()  # modules folded into another unit (the out_proj of an attention module)
    for qual, module in model.named_modules():
        if id(module) in absorbed:
            continue
        axis = 1 if isinstance(module, CHANNEL_FIRST) else -1
        common = dict(qual=qual, kind=unit_kind(module), module=module, channel_axis=axis, width=_width(module))
        if isinstance(module, nn.MultiheadAttention):
            for child in module.modules():
                absorbed.add(id(child))
            params = [(_prefix(qual, k), p) for k, p in module.named_parameters()]
            if params:
                out.append(Candidate(key=qual, name=names[qual], params=params, **common))
            continue
        own = [(_prefix(qual, k), p) for k, p in module.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(module, nn.RNNBase):
            layers: dict[str, list[tuple[str, nn.Parameter]]] = {}
            for key, p in own:
                m = _RNN_PARAM.search(key)
                suffix = f"l{m.group(1)}{m.group(2) or ''}" if m else "l0"
                layers.setdefault(suffix, []).append((key, p))
            for suffix, params in layers.items():
                out.append(Candidate(key=f"{qual}:{suffix}", name=f"{names[qual]}.{suffix}", params=params,
                                     recurrent=True, **common))
            continue
        out.append(Candidate(key=qual, name=names[qual], params=own, recurrent=isinstance(module, RECURRENT),
                             **common))
    return out


def last_layer(cands: Sequence[Candidate], qual: str) -> str | None:
    """The candidate key of a recurrent module's last layer (forward direction): where its output sequence
    comes from."""
    keys = [c.key for c in cands if c.qual == qual]
    forward = [k for k in keys if not k.endswith("_reverse")]
    return (forward or keys or [None])[-1]


# -- the layout ---------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """The units of a model, and what is not a unit.

    ``units`` are :class:`Candidate` objects in forward order with their trainable keys (``keys[c.key]``,
    torch's canonical parameter keys) and ``aliases[c.key]`` (other keys of the same tensors);
    ``frozen`` lists ``"name (param, ...)"`` for frozen parameters, ``idle`` for parameters that require
    gradients but that the optimizer does not update; ``unused`` the names of modules with trainable
    parameters that the traced forward pass never called."""

    units: list[Candidate]
    keys: dict[str, tuple[str, ...]]
    aliases: dict[str, tuple[str, ...]]
    frozen: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)

    def parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``(key, parameter)`` of every unit's trainable parameters, in unit order."""
        live = dict(model.named_parameters())
        return [(k, live[k]) for c in self.units for k in self.keys[c.key]]


def build_layout(model: nn.Module, cands: Sequence[Candidate], rank: Mapping[str, float] | None,
                 trained: Callable[[nn.Parameter], bool] | None = None) -> Layout:
    """Units from ``cands`` ordered by ``rank`` (candidate key -> position in the traced forward pass; None:
    no forward was traced, registration order, every candidate used), each parameter in the first unit
    holding it (by identity), frozen parameters and unused modules set aside.  ``trained(p)``: whether the
    optimizer updates ``p`` (a parameter it does not hold is not trained: listed as ``idle``)."""
    canonical = {id(p): k for k, p in model.named_parameters()}
    position = {c.key: i for i, c in enumerate(cands)}
    if rank is None:
        ordered, unused = list(cands), []
    else:
        ordered = sorted((c for c in cands if c.key in rank), key=lambda c: (rank[c.key], position[c.key]))
        unused = [c for c in cands if c.key not in rank]
    owner: dict[int, str] = {}
    keys: dict[str, tuple[str, ...]] = {}
    aliases: dict[str, list[str]] = {}
    frozen: list[str] = []
    idle: list[str] = []
    tied: list[str] = []
    units: list[Candidate] = []
    for c in ordered:
        mine, cold, still = [], [], []
        for local, p in c.params:
            if id(p) in owner:
                first = owner[id(p)]
                aliases.setdefault(first, []).append(local)
                tied.append(f"{local} is {canonical[id(p)]} (counted once, in {_name_of(cands, first)})")
                continue
            owner[id(p)] = c.key
            if not p.requires_grad:
                cold.append(local.rsplit(".", 1)[-1])
            elif trained is not None and not trained(p):
                still.append(local.rsplit(".", 1)[-1])
            else:
                mine.append(canonical[id(p)])
        if cold:
            frozen.append(f"{c.name} ({', '.join(cold)})")
        if still:
            idle.append(f"{c.name} ({', '.join(still)})")
        if mine:
            keys[c.key] = tuple(mine)
            units.append(c)
    unused_names = []
    for c in unused:
        if any(p.requires_grad and id(p) not in owner for _, p in c.params):
            unused_names.append(c.name)
        cold = [local.rsplit(".", 1)[-1] for local, p in c.params if not p.requires_grad and id(p) not in owner]
        if cold:
            frozen.append(f"{c.name} ({', '.join(cold)})")
    return Layout(units=units, keys=keys, aliases={k: tuple(v) for k, v in aliases.items()}, frozen=frozen,
                  unused=unused_names, tied=tied, idle=idle)


def _name_of(cands: Sequence[Candidate], key: str) -> str:
    return next((c.name for c in cands if c.key == key), key)


def make_units(layout: Layout, activations: Mapping[str, tuple[str, str, int | None]],
               feeds_batchnorm: set[str], notes: Mapping[str, str]) -> list[Unit]:
    """gradmon's :class:`~gradmon.layout.Unit` objects for a layout: ``activations[c.key]`` is the
    ``(activation layer, family, width)`` captured for it; ``feeds_batchnorm`` the candidates whose outputs
    a BatchNorm normalises; ``notes[c.key]`` why a unit has no activation statistics."""
    out = []
    for c in layout.units:
        keys = layout.keys[c.key]
        weights, bias = split_params(keys)
        layer, act, width = activations.get(c.key, (None, None, None))
        if act is None and c.recurrent:
            act = recurrent_activation(c.module)
        out.append(Unit(name=c.name, index=len(out), params=keys, weights=weights, bias=bias,
                        activation_layer=layer, activation=act, units=width or c.width,
                        batchnorm=c.key in feeds_batchnorm, kind=c.kind, channel_axis=c.channel_axis,
                        aliases=layout.aliases.get(c.key, ()), note=notes.get(c.key)))
    return out


def layer_infos(model: nn.Module, units: Sequence[Unit] | None = None) -> list[LayerInfo]:
    """The model as core-style :class:`~core.callbacks.LayerInfo` (for the run's description): each unit
    followed by its activation layer.  Without ``units``, every module owning trainable parameters in
    registration order, with no activation."""
    if units is None:
        cands = candidates(model)
        units = make_units(build_layout(model, cands, None), {}, set(), {})
    infos: list[LayerInfo] = []
    for u in units:
        infos.append(LayerInfo(name=u.name, kind=u.kind, params=u.params, units=u.units))
        if u.activation_layer:
            infos.append(LayerInfo(name=u.activation_layer, kind=u.activation, activation=u.activation))
    return infos


# -- coverage -------------------------------------------------------------------------------------------------
#: why a unit has no activation statistics: reasons that hide an activation gradmon cannot see (said on the
#: console), and reasons where there is none to see (said in the report only)
HIDDEN, ABSENT = "hidden", "absent"


def coverage(layout: Layout, attributed: Mapping[str, Any], flows: Mapping[str, tuple[str, str]],
             names: Mapping[str, str], untraced: str | None = None) -> dict[str, tuple[str, str, str]]:
    """Candidate key -> ``(HIDDEN or ABSENT, why in general, why for this unit)`` for each unit without
    activation statistics.

    ``flows[key]`` is where a candidate's output went in the traced pass (``("into", other)``: another unit
    consumed it; ``("merge", other)``: it joined another unit's output, a residual sum); ``names`` the
    candidates' names; ``untraced`` the reason no forward pass could be traced (then no unit has activation
    statistics)."""
    out: dict[str, tuple[str, str, str]] = {}
    last = layout.units[-1].key if layout.units else None
    bn = {c.key for c in layout.units if isinstance(c.module, nn.modules.batchnorm._BatchNorm)}
    for c in layout.units:
        if c.key in attributed:
            continue
        if untraced is not None:
            out[c.key] = (HIDDEN, untraced, untraced)
        elif c.recurrent:
            kind = type(c.module).__name__
            inside = f"{recurrent_activation(c.module)} runs" if kind in ("RNN", "RNNCell") else \
                "tanh and sigmoid gates run"
            why = "the activations of recurrent layers run inside their fused kernel, out of reach of hooks"
            out[c.key] = (HIDDEN, why, f"its {inside} inside the {kind} kernel, out of reach of hooks")
        elif isinstance(c.module, nn.MultiheadAttention):
            why = "attention: the softmax is inside the module, with no elementwise activation"
            out[c.key] = (ABSENT, why, why)
        elif c.key in flows:
            how, target = flows[c.key]
            other = names.get(target, target)
            if how == "into" and target in bn:
                why = "a BatchNorm normalises the output first (the activation after it is measured there)"
                out[c.key] = (ABSENT, why, f"{other} normalises its output first (the activation after it is "
                                           f"measured there)")
            elif how == "into":
                out[c.key] = (ABSENT, "no activation before the next layer",
                              f"no activation between it and {other}")
            else:
                out[c.key] = (ABSENT, "the output joins another layer's (a residual sum) before any activation",
                              f"its output joins {other}'s (a residual sum) before any activation")
        elif c.key == last:
            why = "the network's output: no activation follows it"
            out[c.key] = (ABSENT, why, why)
        else:
            why = "no activation gradmon knows is applied to the output (none, or a custom operation)"
            out[c.key] = (HIDDEN, why, why.replace("the output", "its output"))
    return out
