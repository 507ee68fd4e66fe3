"""The recorder: per-step measurement, from a training step's payload to one row of history.

At ``on_after_backward`` :meth:`Recorder.measure` computes the step's statistics with the quantities of
:mod:`gradmon.quantities` where the arrays live (numpy in core, a tensor's device in PyTorch) and stages
them; at ``on_step_end`` :meth:`Recorder.commit` adds the update ratios, brings every staged value to the
host in one small transfer (one value per tensor or unit), and appends the finished :class:`Record` to the
run's :class:`History` (bounded, the whole run) and :class:`Window` (the recent records the jury reads).

Cadences: every ``every`` steps the cheap statistics (gradient norms, saturation, dead units); every
``weight_every`` records the slow ones (weight norms, update ratios, mean biases, activation moments: weights
move slowly, and these cost as much again).  The first layer's inputs (``StepState.inputs``, when the loop
gives them) are measured per feature over the first ``input_examples`` examples only
(:class:`~gradmon.quantities.inputs.InputScale`): the data does not change.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from core.callbacks import RunInfo, StepState
from gradmon.history import LAYER_QUANTITIES, SCALARS, History, Record, Window
from gradmon.layout import Unit
from gradmon.quantities import activations as actq
from gradmon.quantities import gradients as gradq
from gradmon.quantities.inputs import InputScale, feature_sums
from gradmon.quantities.xp import Array, all_finite, is_torch, namespace, to_host
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.vocabulary import RECTIFIERS, SATURATING

_HOST_TYPES = (float, int, np.ndarray, np.generic)
_LOSS, _GRAD_NORM, _CLIP, _LR = (SCALARS.index(k) for k in ("loss", "grad_norm", "clip_coef", "lr"))


class Staged:
    """Values of one step on their way to the host, each with its place in a host array.  Host values are
    written at once; device values (0-d or 1-d arrays) wait for :meth:`flush`, which concatenates them,
    moves them in a single transfer and writes each to its place."""

    def __init__(self) -> None:
        self._device: list[tuple[Any, np.ndarray, int | slice]] = []

    def put(self, value: Any, target: np.ndarray, index: int | slice) -> None:
        """``target[index] = value``, now for host values, at :meth:`flush` for device ones (None: nothing)."""
        if value is None:
            return
        if isinstance(value, _HOST_TYPES):
            target[index] = value
        else:
            self._device.append((value, target, index))

    def clear(self) -> None:
        self._device.clear()

    def flush(self) -> None:
        if not self._device:
            return
        values = [v for v, _, _ in self._device]
        flat = to_host(_gather(values))
        at = 0
        for value, target, index in self._device:
            n = int(math.prod(value.shape))
            target[index] = flat[at] if isinstance(index, int) else flat[at:at + n]
            at += n
        self._device.clear()


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def _gather(values: list[Any]) -> Any:
    """One flat vector (float32, or float64 if any value is) of 0-d and 1-d device arrays, on the first one's
    device.  Tensors take one ``torch.cat`` (the per-step path pays a few microseconds per torch call)."""
    if is_torch(values[0]):
        import torch

        parts = torch.atleast_1d(*values) if len(values) > 1 else (torch.atleast_1d(values[0]),)
        try:
            flat = torch.cat(parts)
        except RuntimeError:  # several devices (model parallel): gather on the first
            dev = values[0].device
            flat = torch.cat([p.to(dev) for p in parts])
        return flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    xp = namespace(*values)
    wide = xp.float64 if any(v.dtype == xp.float64 for v in values) else xp.float32
    dev = values[0].device
    return xp.concat([xp.reshape(xp.astype(v if v.device == dev else v.to(dev), wide), (-1,)) for v in values])


class Recorder:
    """Turns training steps into records.

    Parameters: ``every`` steps between records; ``weight_every`` records between the slow quantities;
    ``window`` records the jury sees at full resolution; ``capacity`` rows of the whole-run history (even);
    ``dead_pool`` examples a dead-unit verdict needs (small batches are pooled); ``saturation_margin`` the
    distance from an asymptote that counts as saturated.
    """

    def __init__(self, *, every: int = 1, weight_every: int = 10, window: int = 200, capacity: int = 2048,
                 dead_pool: int = 64, saturation_margin: float = 0.01, input_examples: int = 1024) -> None:
        self.every, self.weight_every = int(every), int(weight_every)
        self.window_size, self.capacity = int(window), int(capacity)
        self.dead_pool, self.saturation_margin = int(dead_pool), float(saturation_margin)
        self._schedule: Schedule = every_schedule(self.every)
        self.units: list[Unit] = []
        self.history: History | None = None
        self.window: Window | None = None
        self.records = 0
        self.batch = 0                       # examples per step, from the first measured step
        self.last_tensor_norms: np.ndarray = np.zeros(0)  # host: per gradient tensor, of the last record
        self.grad_keys: tuple[str, ...] = ()  # the gradient keys of the last measured step, in its order
        self.unit_lrs: np.ndarray | None = None  # host: per unit, its learning rate (when parameter groups differ)
        self.loss_staged = False             # the pending record's loss is a device value, on the host at commit
        self._sq_staged = False              # last_tensor_norms holds squared norms until the flush
        self._lrs_seen: Any = None
        self._pending: Record | None = None
        self._slow = False
        self._stage = Staged()
        self._record: Record | None = None
        self._plan: list[tuple[int, str, str | None, actq.DeadUnitTracker | None, int]] = []
        self._rows: dict[str, np.ndarray] = {}
        self._groups: np.ndarray = np.zeros((0, 0))
        self._weight_keys: list[str] = []
        self._weight_tensor_norms = self._update_tensor_norms = np.zeros(0)
        self._weight_groups: np.ndarray = np.zeros((0, 0))
        self._weight_norms: np.ndarray = np.zeros(0)
        self.sizes: np.ndarray = np.zeros(0)
        self.inputs = InputScale(limit=int(input_examples))  # the first layer's inputs, per feature
        self._input_sums: tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None = None  # staged for the pending record

    # -- setup --------------------------------------------------------------------------------------------
    def begin(self, run: RunInfo, units: Sequence[Unit]) -> None:
        """Start a run over ``units`` (state from an earlier run is dropped)."""
        self.units = list(units)
        names = [u.name for u in self.units]
        self.history = History(names, capacity=self.capacity)
        self.window = Window(names, size=self.window_size)
        self._record = Record(len(names))
        self._rows = {q: self._record.layer(q) for q in LAYER_QUANTITIES}  # views: the record is reused
        self.records = self.batch = 0
        self._pending, self._slow = None, False
        self._stage.clear()
        # per unit with an activation: (index, activation layer, activation, rectifier, channel axis); the
        # rectifier units are judged together (their units end to end): one pool, a few reductions in all
        self._plan = [(u.index, u.activation_layer, u.activation, u.activation in RECTIFIERS, u.channel_axis)
                      for u in self.units if u.activation_layer]
        self._dead = actq.DeadUnitTracker(self.dead_pool)
        self._dead_layout: tuple = ()       # (unit indices, widths) of the rectifier units fed last
        self._dead_ends: Any = None          # their last positions end to end, on the activations' device
        self._dead_counts = np.zeros(0)      # host: cumulative dead units at each end (staged)
        self._dead_widths = np.zeros(0)      # host: the units of each rectifier layer
        self._dead_units: list[int] = []     # the units whose dead fractions the pending record holds
        self._weight_keys = [k for u in self.units for k in u.weights]
        self._weight_groups = gradq.groups(self.units, self._weight_keys, weights_only=True)
        self._weight_tensor_norms = np.full(len(self._weight_keys), np.nan)
        self._update_tensor_norms = np.full(len(self._weight_keys), np.nan)
        self._weight_norms = np.full(len(self.units), np.nan)
        self._weighed = False                 # weight norms measured at least once this run
        self.grad_keys, self._groups = (), np.zeros((len(self.units), 0))
        self.sizes = np.zeros(0)
        self.unit_lrs, self._lrs_seen, self.loss_staged, self._sq_staged = None, None, False, False
        self.inputs.reset()
        self._input_sums = None

    # -- cadence ------------------------------------------------------------------------------------------
    def set_every(self, n: int, start: int) -> None:
        """Measure every ``n`` steps from step ``start`` on (loops that adapt their cadence to a cost budget)."""
        self.every = int(n)
        self._schedule = every_schedule(self.every, start)

    def measures(self, step: int) -> bool:
        return self._schedule(step)

    def requests(self, step: int) -> set[str]:
        return {"activations", "grad_norms"} if self._schedule(step) else set()

    def will_record_update(self, step: int) -> bool:
        """Whether the record of ``step`` will hold update ratios (loops that must copy weights to compute
        updates, like the PyTorch adapter, ask first)."""
        return self._schedule(step) and self.records % self.weight_every == 0

    @property
    def pending(self) -> Record | None:
        """The record measured but not yet committed (its step has not ended)."""
        return self._pending

    # -- measuring ----------------------------------------------------------------------------------------
    def measure(self, state: StepState) -> bool:
        """Stage the statistics of ``state`` into a pending record.  Returns False when a saturating unit's
        input holds NaN or Inf (tanh(inf) = 1: neither the loss nor the gradients would show it)."""
        rec = self._record.reset(state.step)
        scalars, rows, stage = rec.scalars, self._rows, self._stage
        self.loss_staged = state.loss_known and not isinstance(state.loss, _HOST_TYPES)
        stage.put(state.loss if state.loss_known else math.nan, scalars, _LOSS)
        scalars[_LR] = state.lr
        if state.lrs is not None and state.lrs is not self._lrs_seen:
            self._unit_lrs(state.lrs)
        keys = tuple(state.grads)
        if keys != self.grad_keys:
            self.grad_keys, self._groups = keys, gradq.groups(self.units, keys)
            self.last_tensor_norms = np.full(len(keys), np.nan)
        sq = state.grad_sq_norms
        self._sq_staged = False
        if sq is None:
            stage.put(gradq.tensor_norms(state.grads, keys), self.last_tensor_norms, slice(None))
        elif isinstance(sq, np.ndarray):
            np.sqrt(sq, out=self.last_tensor_norms)
        else:  # squared norms on the device: their square roots are taken on the host, after the transfer
            stage.put(sq, self.last_tensor_norms, slice(None))
            self._sq_staged = True
        if state.grad_norm is not None:
            scalars[_GRAD_NORM] = state.grad_norm
        self._slow = self.records % self.weight_every == 0 or not self._weighed
        if self._slow:
            stage.put(gradq.tensor_norms(state.params, self._weight_keys), self._weight_tensor_norms, slice(None))
            for j, mean in gradq.bias_means(state.params, self.units):
                stage.put(mean, rows["bias_mean"], j)
        finite = True
        if state.activations is not None:
            finite = self._activations(state)
        inputs = getattr(state, "inputs", None)
        if inputs is not None and not self.inputs.full and self.units:
            self._stage_inputs(inputs)
        if not self.sizes.size:
            self.sizes = np.array([sum(int(math.prod(state.params[k].shape)) for k in u.params if k in state.params)
                                   for u in self.units], dtype=float)
        if not self.batch and state.batch_size:
            self.batch = int(state.batch_size)
        self._pending = rec
        return finite

    def _activations(self, state: StepState) -> bool:
        finite = True
        activations, alive, stage, rows = state.activations, state.alive or {}, self._stage, self._rows
        parts, units, examples = [], [], 0
        for j, layer, activation, rectifier, axis in self._plan:
            y = activations.get(layer)
            if y is None:
                mask = alive.get(layer) if rectifier else None
                if mask is not None:  # (the output changed in place since: what was reduced from it stands)
                    parts.append(mask)
                    units.append(j)
                continue
            if activation in SATURATING:
                sat = actq.saturation_fraction(y, activation, self.saturation_margin)
                stage.put(sat, rows["saturation"], j)
                pre = (state.preactivations or {}).get(layer)
                # an infinite input gives an output at the asymptote: only saturated layers can hide one (a NaN
                # input shows in the output, the loss and the gradients anyway); host arrays only
                if pre is not None and isinstance(sat, _HOST_TYPES) and float(sat) > 0:
                    finite = finite and all_finite(pre)
            if rectifier:
                mask = alive.get(layer)
                parts.append(mask if mask is not None else actq.channel_max(y, axis))
                units.append(j)
                examples = examples or actq.examples_in(y)
            if self._slow:
                mean, std = actq.moments(y)
                stage.put(mean, rows["act_mean"], j)
                stage.put(std, rows["act_std"], j)
        if parts:
            self._dead_units_of(parts, units, examples or int(state.batch_size or 0))
        return finite

    def _dead_units_of(self, parts: list[Any], units: list[int], examples: int) -> None:
        """Stage the dead units of the rectifier ``units`` (``parts``: each one's alive mask or largest output
        per unit) over the pooled examples: one vector end to end, a cumulative count per unit."""
        layout = (tuple(units), tuple(int(p.shape[0]) for p in parts))
        xp = namespace(*parts)
        if layout != self._dead_layout:  # other units than last time: a new pool
            self._dead, self._dead_layout = actq.DeadUnitTracker(self.dead_pool), layout
            self._dead_ends = xp.asarray(np.cumsum(layout[1]) - 1, device=_device(parts[0]))
            self._dead_counts = np.zeros(len(units))
            self._dead_widths = np.asarray(layout[1], dtype=float)
        joined = xp.concat(parts) if len(parts) > 1 else parts[0]
        if examples >= self.dead_pool:  # one batch is enough (no pool): dead where the largest output is <= 0
            self._dead.clear()
            dead = xp.logical_not(joined) if joined.dtype == xp.bool else joined <= 0
        else:
            dead = self._dead.dead(joined > 0, examples)
        if dead is not None:
            self._stage.put(actq.dead_counts(dead, self._dead_ends), self._dead_counts, slice(None))
            self._dead_units = units

    def _stage_inputs(self, x: Array) -> None:
        """Stage the per-feature sums of the first unit's inputs ``x`` (features along the unit's channel axis:
        the last for dense layers, 1 for convolutions)."""
        sums = feature_sums(x, self.units[0].channel_axis)
        if sums is None:
            return
        total, total_sq, nonzero, count = sums
        n = int(math.prod(total.shape))
        buffers = (np.zeros(n), np.zeros(n), np.zeros(n), count, int(x.shape[0]))
        for value, target in zip((total, total_sq, nonzero), buffers):
            self._stage.put(value, target, slice(None))
        self._input_sums = buffers

    def set_loss(self, value: Any) -> None:
        """The loss of the pending step, for loops that learn it after ``on_after_backward`` (a number, or a
        0-d device array staged for the record's one transfer)."""
        if self._pending is None:
            return
        if isinstance(value, _HOST_TYPES):
            self._pending.set_scalar("loss", float(value))
        else:
            self._stage.put(value, self._pending.scalars, _LOSS)
            self.loss_staged = True

    def _unit_lrs(self, lrs: Any) -> None:
        """Each unit's learning rate (that of its first parameter), from the step's per-key rates."""
        self._lrs_seen = lrs
        if self.unit_lrs is None:
            self.unit_lrs = np.full(len(self.units), np.nan)
        for u in self.units:
            self.unit_lrs[u.index] = float(lrs.get(u.params[0], math.nan)) if u.params else math.nan

    def commit(self, state: StepState | None) -> Record | None:
        """Finish the pending record with the step's update and clip coefficient (``state`` is None for loops
        that never send ``on_step_end``), move its staged values to the host and append it.  Returns it."""
        rec, self._pending = self._pending, None
        if rec is None:
            return None
        updates = state is not None and state.update is not None and self._slow \
            and all(k in state.update for k in self._weight_keys)
        if updates:
            self._stage.put(gradq.tensor_norms(state.update, self._weight_keys), self._update_tensor_norms,
                            slice(None))
        self._stage.put(state.clip_coef if state is not None else 1.0, rec.scalars, _CLIP)
        self._stage.flush()
        if self._input_sums is not None:
            self.inputs.add(*self._input_sums)
            self._input_sums = None
        rows = self._rows
        if self._sq_staged:
            np.sqrt(self.last_tensor_norms, out=self.last_tensor_norms)
            self._sq_staged = False
        if self._dead_units:  # cumulative counts -> each unit's dead fraction
            counts = self._dead_counts
            counts[1:] -= counts[:-1].copy()
            rows["dead_fraction"][self._dead_units] = counts / self._dead_widths
            self._dead_units = []
        rows["grad_norm"][:] = gradq.combine(self.last_tensor_norms, self._groups)
        if math.isnan(rec.scalars[_GRAD_NORM]):
            rec.scalars[_GRAD_NORM] = math.sqrt(float(np.dot(self.last_tensor_norms, self.last_tensor_norms)))
        if self._slow:
            self._weighed = True
            self._weight_norms = gradq.combine(self._weight_tensor_norms, self._weight_groups)
            rows["weight_norm"][:] = self._weight_norms
            if updates:
                rows["update_ratio"][:] = gradq.update_ratios(
                    gradq.combine(self._update_tensor_norms, self._weight_groups), self._weight_norms)
        self.history.append_record(rec)
        self.window.append_record(rec)
        self.records += 1
        return rec

    @property
    def slow(self) -> bool:
        """Whether the last measured record holds the slow quantities."""
        return self._slow

    def histograms(self, state: StepState) -> list[tuple[str, Array]]:
        """The arrays whose histograms represent the step: each unit's main weight gradient and its
        activation's output (tags ``gradients/<unit>``, ``activations/<unit>``)."""
        out = []
        for u in self.units:
            if u.weight in state.grads:
                out.append((f"gradients/{u.name}", state.grads[u.weight]))
            if state.activations is not None and u.activation_layer in state.activations:
                out.append((f"activations/{u.name}", state.activations[u.activation_layer]))
        return out
