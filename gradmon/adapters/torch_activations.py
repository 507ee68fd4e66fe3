"""Activations of a PyTorch model: which activation follows which unit (traced once), and capturing them.

**The trace** (:class:`Tracer`, the first forward pass with gradients after ``watch()``) sees every torch
function call through torch's function-override mechanism (a ``TorchFunctionMode``) and every call of a
module owning parameters through forward hooks.  It follows the data: a tensor comes from the unit whose
parameters produced it (``F.linear(x, W, b)`` comes from the Linear holding ``W``; a module's output from
that module), and keeps that origin through parameter-free operations (dropout, pooling, reshapes, an added
residual: the first input with a known origin).  An activation function or module (:data:`~gradmon.adapters.
torch_layout.ACTIVATION_FUNCTIONS`, ``F.relu``, ``torch.sigmoid``, ``nn.GELU``...) is attributed to the unit
whose output it consumes; a unit keeps the first activation applied to its output.  The trace also gives
the order of units (first use of their parameters) and which units feed a BatchNorm.

**Capture** (:class:`Capture`), on the steps the monitor measures, keeps the outputs of the attributed
activations of the first training forward pass after a step, by call order as traced:

- with forward hooks on the activation modules, when every attributed activation is a module (no cost on
  other modules, none at all when the step is not measured);
- with a ``TorchFunctionMode`` counting activation function calls, when some are functional (``F.relu``
  inside ``forward``): pushed for that one forward pass only.

A captured tensor that was changed in place afterwards (its version counter moved) or whose shape differs
from the traced one (a forward pass that takes another path) is dropped: no statistic rather than a wrong
one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradmon.adapters.torch_layout import ACTIVATION_FUNCTIONS, Candidate, activation_kind, call_name, \
    function_kind, last_layer
from gradmon.quantities.activations import channel_max
from gradmon.vocabulary import RECTIFIERS


@dataclass
class ActivationCall:
    """One activation applied in the traced forward pass: its family, the candidate whose output it
    consumed (None: unknown origin), the activation module it ran in (its qualified name and the index of
    that module's call; None for a functional call) and its output shape."""

    index: int
    kind: str
    source: str | None
    module: str | None
    module_call: int
    shape: tuple[int, ...]
    output: torch.Tensor | None = None


def _tensors(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    """The tensors among a call's arguments (and one level inside lists and tuples: ``torch.cat([a, b])``,
    the flat weights of a recurrent kernel)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield b


def _outputs(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            if isinstance(o, torch.Tensor):
                yield o


class Tracer(TorchFunctionMode):
    """The first forward pass, op by op: unit order, activation attribution, units that feed a BatchNorm.

    ``cands`` are the model's candidate units; ``names`` the display names of its modules.  Use as a
    context manager around one forward pass (``install(model)`` first for the module hooks, ``remove()``
    after)."""

    def __init__(self, cands: Sequence[Candidate], names: Mapping[str, str]) -> None:
        super().__init__()
        self.cands = list(cands)
        self.names = names
        holders: dict[int, list[str]] = {}
        for c in self.cands:
            for _, p in c.params:
                holders.setdefault(id(p), []).append(c.key)
        # a parameter tells where data comes from only when one unit holds it (a tied one is ambiguous)
        self.owner = {pid: keys[0] for pid, keys in holders.items() if len(set(keys)) == 1}
        self.events = 0
        self.first_use: dict[str, int] = {}    # candidate -> event of the first use of its own parameters
        self.started: dict[str, int] = {}      # candidate -> event its module's forward started
        # id(tensor) -> (candidate, a weak reference to the tensor: an id may be reused once it is freed, and
        # the trace must not keep the forward pass's temporaries alive)
        self.origin: dict[int, tuple[str, weakref.ref]] = {}
        self.calls: list[ActivationCall] = []
        #: where each candidate's output went first: ("into", unit) when another unit consumed it, ("merge",
        #: unit) when it was added (or joined) to another unit's output, e.g. a residual sum
        self.flows: dict[str, tuple[str, str]] = {}
        self._inside: list[tuple[str, int]] = []  # activation modules being called (qualified name, call)
        self._module_calls: dict[str, int] = {}
        self._handles: list[Any] = []
        self.failed: str | None = None
        self.active = False                    # inside the traced forward pass
        self.done = False                      # a forward pass was traced

    def begin(self) -> None:
        """The traced forward pass begins (the function mode is pushed)."""
        self.active = True
        self.__enter__()

    def end(self) -> None:
        """The traced forward pass ended (or raised)."""
        if self.active:
            self.active = False
            self.done = True
            self.__exit__(None, None, None)

    # -- module hooks -----------------------------------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        """Forward hooks on the candidate and activation modules (removed by :meth:`remove`)."""
        by_module: dict[int, list[Candidate]] = {}
        for c in self.cands:
            by_module.setdefault(id(c.module), []).append(c)
        for qual, module in model.named_modules():
            group = by_module.get(id(module))
            if group:
                self._handles.append(module.register_forward_pre_hook(self._unit_pre(group), with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._unit_post(group, qual), always_call=True))
            if activation_kind(module) is not None:  # (a PReLU is both: a unit and an activation)
                self._handles.append(module.register_forward_pre_hook(self._act_pre(qual)))
                self._handles.append(module.register_forward_hook(self._act_post, always_call=True))

    def remove(self) -> None:
        self.end()
        for h in self._handles:
            h.remove()
        self._handles = []
        self.origin.clear()
        for call in self.calls:
            call.output = None

    def _unit_pre(self, group: list[Candidate]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if torch.compiler.is_compiling() or not self.active:
                return
            for c in group:
                self.started.setdefault(c.key, self._event())
            src = self._source(args, kwargs, data_only=True)
            if src is not None and src != group[0].key:
                self.flows.setdefault(src, ("into", group[0].key))
        return hook

    def _unit_post(self, group: list[Candidate], qual: str):
        key = last_layer(group, qual) if group[0].recurrent and len(group) > 1 else group[0].key

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if torch.compiler.is_compiling() or not self.active:
                return
            first = next(_outputs(output), None)  # a module's (first) output comes from it
            if first is not None:
                self.origin[id(first)] = (key, weakref.ref(first))
        return hook

    def _act_pre(self, qual: str):
        def hook(module: nn.Module, args: Any) -> None:
            if torch.compiler.is_compiling() or not self.active:
                return
            call = self._module_calls.get(qual, 0)
            self._module_calls[qual] = call + 1
            self._inside.append((qual, call))
        return hook

    def _act_post(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling() or not self.active:
            return
        if self._inside:
            self._inside.pop()

    # -- functions ---------------------------------------------------------------------------------------------
    def _event(self) -> int:
        self.events += 1
        return self.events

    def _origins(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str | None, list[str]]:
        """The unit of the first parameter among a call's arguments (None if none), and the origins of its
        data inputs, in argument order."""
        param, data = None, []
        for t in _tensors(args, kwargs):
            key = self.owner.get(id(t))
            if key is not None:
                param = key if param is None else param
                continue
            origin = self.origin_of(t)
            if origin is not None:
                data.append(origin)
        return param, data

    def origin_of(self, t: torch.Tensor) -> str | None:
        """The candidate a tensor of the traced pass came from (None: unknown)."""
        hit = self.origin.get(id(t))
        return hit[0] if hit is not None and hit[1]() is t else None

    def _source(self, args: Sequence[Any], kwargs: Mapping[str, Any], data_only: bool = False) -> str | None:
        """Where the output of a call with these arguments comes from: the unit of the first parameter
        among them, else the origin of the first input with a known one."""
        param, data = self._origins(args, kwargs)
        if param is not None and not data_only:
            return param
        return data[0] if data else None

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._see(func, args, kwargs, out)
        except Exception as exc:  # the trace must never break the user's forward pass
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
        return out

    def _see(self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> None:
        for t in _tensors(args, kwargs):
            key = self.owner.get(id(t))
            if key is not None and key not in self.first_use:
                self.first_use[key] = self._event()
        param, data = self._origins(args, kwargs)
        source = param if param is not None else (data[0] if data else None)
        for origin in data:  # data that goes into another unit's operation, or joins another unit's data
            if origin != source and source is not None:
                self.flows.setdefault(origin, ("into" if param is not None else "merge", source))
        if func in ACTIVATION_FUNCTIONS:
            kind = function_kind(func, args, kwargs)
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            consumed = self.origin_of(x) if x is not None else None
            module, call = self._inside[-1] if self._inside else (None, 0)
            if isinstance(out, torch.Tensor):
                self.calls.append(ActivationCall(len(self.calls), kind or "", consumed, module, call,
                                                 tuple(out.shape), out.detach()))
        if source is not None:
            for t in _outputs(out):
                self.origin[id(t)] = (source, weakref.ref(t))

    # -- results -----------------------------------------------------------------------------------------------
    @property
    def feeds_batchnorm(self) -> set[str]:
        """Candidates whose output a BatchNorm normalises first."""
        bn = {c.key for c in self.cands if isinstance(c.module, nn.modules.batchnorm._BatchNorm)}
        return {src for src, (how, target) in self.flows.items() if how == "into" and target in bn}

    def rank(self) -> dict[str, float]:
        """Candidate key -> position in the forward pass (the first use of its own parameters, else the
        start of its module's forward); candidates never called are absent.  The layers of a recurrent
        module keep their registration order."""
        out: dict[str, float] = {}
        for c in self.cands:
            event = self.first_use.get(c.key, self.started.get(c.key))
            if event is not None:
                out[c.key] = float(event)
        return out


@dataclass
class Plan:
    """What to capture: ``layers[key]`` is ``(activation layer name, ndim, channel axis, width, rectifier)``
    for a module call key ``(qualified name, call)`` (``modules`` strategy) or a function call index
    (``functions``): an output is kept when its number of dimensions and its width along the unit's channel
    axis are the traced ones; a rectifier's largest output per unit is reduced at once, while the output is
    fresh in memory.  ``attributed[candidate] = (layer, family, width)``."""

    strategy: str
    layers: dict[Any, tuple[str, int, int, int, bool]]
    attributed: dict[str, tuple[str, str, int | None]]


def plan_capture(tracer: Tracer, units: Sequence[Candidate], names: Mapping[str, str]) -> Plan:
    """Attribute the traced activations to ``units`` (the first activation consuming each unit's output)
    and choose the cheapest capture that sees them all."""
    by_key = {c.key: c for c in units}
    attributed: dict[str, tuple[str, str, int | None]] = {}
    chosen: list[tuple[ActivationCall, str]] = []
    taken: set[str] = set()
    for call in tracer.calls:
        unit = by_key.get(call.source) if call.source is not None else None
        if unit is None or not call.kind or unit.key in attributed:
            continue
        if call.module is not None:
            layer = call_name(names.get(call.module, call.module), call.module_call)
        else:
            layer = f"{unit.name}.{call.kind}"
        while layer in taken:
            layer += "'"
        taken.add(layer)
        if not call.shape:  # a scalar: nothing to judge per unit
            continue
        axis = unit.channel_axis % len(call.shape)
        width = int(call.shape[axis])
        attributed[unit.key] = (layer, call.kind, width)
        chosen.append((call, (layer, len(call.shape), axis, width, call.kind in RECTIFIERS)))
    if all(call.module is not None for call, _ in chosen):
        return Plan("modules", {(call.module, call.module_call): what for call, what in chosen}, attributed)
    return Plan("functions", {call.index: what for call, what in chosen}, attributed)


class _FunctionCapture(TorchFunctionMode):
    """Counts activation function calls in one forward pass and keeps the planned ones' outputs."""

    def __init__(self, capture: "Capture") -> None:
        super().__init__()
        self.capture = capture
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in ACTIVATION_FUNCTIONS:
            index = self.count
            self.count = index + 1
            self.capture.keep(index, out)
        return out


class Capture:
    """Keeps the planned activation outputs of one training forward pass per measured step.

    ``armed`` says whether the coming forward pass is captured (set by the watcher before each step);
    :meth:`taken` returns what was kept (layer -> output), dropping tensors changed in place since."""

    def __init__(self, plan: Plan, model: nn.Module) -> None:
        self.plan = plan
        self.armed = False
        self.batch = 0                          # examples in the last captured forward pass
        self._kept: dict[str, tuple[torch.Tensor, int]] = {}
        self._alive: dict[str, torch.Tensor] = {}   # rectifier layers: each unit's largest output
        self._calls: dict[str, int] = {}
        self._mode: _FunctionCapture | None = None
        self._handles: list[Any] = []
        if plan.strategy == "modules":
            wanted = {qual for qual, _ in plan.layers}
            for qual, module in model.named_modules():
                if qual in wanted:
                    self._handles.append(module.register_forward_hook(self._module_hook(qual)))

    @property
    def functional(self) -> bool:
        return self.plan.strategy == "functions" and bool(self.plan.layers)

    def arm(self, on: bool) -> None:
        """Capture the next training forward pass (or not); forgets what was kept."""
        self.armed = on and bool(self.plan.layers)
        self._kept, self._alive = {}, {}
        self._calls = {}

    def seed(self, tracer: Tracer) -> None:
        """Keep the planned activations of the traced forward pass (the first step's)."""
        for call in tracer.calls:
            key = (call.module, call.module_call) if self.plan.strategy == "modules" else call.index
            if call.output is not None:
                self.keep(key, call.output)
        if self._kept:
            self.armed = False

    def keep(self, key: Any, out: Any) -> None:
        planned = self.plan.layers.get(key)
        if planned is None or not isinstance(out, torch.Tensor):
            return
        layer, ndim, axis, width, rectifier = planned
        if layer in self._kept or out.dim() != ndim or out.shape[axis] != width:
            return
        self._kept[layer] = (out, out._version)  # (read under no_grad: no detach needed)
        if rectifier:
            self._alive[layer] = channel_max(out.detach(), axis)
        self.batch = int(out.shape[0])

    def _module_hook(self, qual: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if torch.compiler.is_compiling() or not self.armed or not torch.is_grad_enabled():
                return
            call = self._calls.get(qual, 0)
            self._calls[qual] = call + 1
            self.keep((qual, call), output)
        return hook

    # -- one forward pass (functional strategy) -------------------------------------------------------------------
    def begin_forward(self) -> None:
        """The model's forward pass begins: push the function mode if this pass is captured."""
        if self.armed and self.functional and self._mode is None and torch.is_grad_enabled():
            self._mode = _FunctionCapture(self)
            self._mode.__enter__()

    def end_forward(self) -> None:
        """The model's forward pass ended (or raised): pop the mode; later passes of this step are not
        captured (a step's activations are those of its first training forward pass)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            self.armed = False
        elif self.armed and self._kept:
            self.armed = False

    def taken(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        """Layer -> captured output, without the ones changed in place after the capture, and rectifier layer
        -> each unit's largest output (Nones when nothing was captured)."""
        if not self._kept:
            return None, None
        return {layer: t for layer, (t, version) in self._kept.items() if t._version == version}, self._alive

    def remove(self) -> None:
        self.end_forward()
        for h in self._handles:
            h.remove()
        self._handles = []
