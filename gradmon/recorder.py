"""The recorder: per-step measurement, from a training step's payload to one row of history.

At ``on_after_backward`` :meth:`Recorder.measure` computes the step's statistics with the quantities of
:mod:`gradmon.quantities` where the arrays live (numpy in core, a tensor's device in PyTorch) and stages
them; at ``on_step_end`` :meth:`Recorder.commit` adds the update ratios, brings every staged value to the
host in one small transfer (one value per tensor or unit), and appends the finished :class:`Record` to the
run's :class:`History` (bounded, the whole run) and :class:`Window` (the recent records the jury reads).

Cadences: every ``every`` steps the cheap statistics (gradient norms, saturation, dead units); every
``weight_every`` records the slow ones (weight norms, update ratios, mean biases, activation moments: weights
move slowly, and these cost as much again).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from core.callbacks import RunInfo, StepState
from gradmon.history import History, Record, Window
from gradmon.layout import Unit
from gradmon.quantities import activations as actq
from gradmon.quantities import gradients as gradq
from gradmon.quantities.xp import Array, all_finite, namespace, to_host
from gradmon.schedules import Schedule, every as every_schedule
from gradmon.vocabulary import RECTIFIERS

_HOST_TYPES = (float, int, np.ndarray, np.generic)


class Staged:
    """Values of one step on their way to the host.  Host values are applied at :meth:`flush` as they are;
    device values (0-d or 1-d arrays) are concatenated and moved in a single transfer, then applied in the
    order they were added."""

    def __init__(self) -> None:
        self._host: list[tuple[Any, Callable[[np.ndarray], None]]] = []
        self._device: list[tuple[Any, Callable[[np.ndarray], None]]] = []

    def add(self, value: Any, apply: Callable[[np.ndarray], None]) -> None:
        if value is None:
            return
        (self._host if isinstance(value, _HOST_TYPES) else self._device).append((value, apply))

    def clear(self) -> None:
        self._host.clear()
        self._device.clear()

    def flush(self) -> None:
        for value, apply in self._host:
            apply(np.asarray(value, dtype=np.float64))
        if self._device:
            values = [v for v, _ in self._device]
            xp = namespace(*values)
            wide = xp.float64 if any(v.dtype == xp.float64 for v in values) else xp.float32
            dev = values[0].device
            flat = to_host(xp.concat([xp.reshape(xp.astype(v if v.device == dev else v.to(dev), wide), (-1,))
                                      for v in values]))
            at = 0
            for value, apply in self._device:
                n = int(math.prod(value.shape))
                apply(flat[at:at + n])
                at += n
        self.clear()


class Recorder:
    """Turns training steps into records.

    Parameters: ``every`` steps between records; ``weight_every`` records between the slow quantities;
    ``window`` records the jury sees at full resolution; ``capacity`` rows of the whole-run history (even);
    ``dead_pool`` examples a dead-unit verdict needs (small batches are pooled); ``saturation_margin`` the
    distance from an asymptote that counts as saturated.
    """

    def __init__(self, *, every: int = 1, weight_every: int = 10, window: int = 200, capacity: int = 2048,
                 dead_pool: int = 64, saturation_margin: float = 0.01) -> None:
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
        self._pending: Record | None = None
        self._slow = False
        self._stage = Staged()
        self._record: Record | None = None
        self._dead: dict[str, actq.DeadUnitTracker] = {}
        self._groups: list[list[int]] = []
        self._weight_keys: list[str] = []
        self._weight_groups: list[list[int]] = []
        self._weight_norms: np.ndarray = np.zeros(0)
        self.sizes: np.ndarray = np.zeros(0)

    # -- setup --------------------------------------------------------------------------------------------
    def begin(self, run: RunInfo, units: Sequence[Unit]) -> None:
        """Start a run over ``units`` (state from an earlier run is dropped)."""
        self.units = list(units)
        names = [u.name for u in self.units]
        self.history = History(names, capacity=self.capacity)
        self.window = Window(names, size=self.window_size)
        self._record = Record(len(names))
        self.records = self.batch = 0
        self._pending, self._slow = None, False
        self._stage.clear()
        self._dead = {u.name: actq.DeadUnitTracker(self.dead_pool) for u in self.units if u.activation in RECTIFIERS}
        self._weight_keys = [k for u in self.units for k in u.weights]
        self._weight_groups = gradq.groups(self.units, self._weight_keys, weights_only=True)
        self._weight_norms = np.full(len(self.units), np.nan)
        self.grad_keys, self._groups = (), []
        self.sizes = np.zeros(0)

    # -- cadence ------------------------------------------------------------------------------------------
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
        rec.set_scalar("loss", float(state.loss) if state.loss_known else math.nan)
        rec.set_scalar("lr", float(state.lr))
        stage = self._stage
        keys = tuple(state.grads)
        if keys != self.grad_keys:
            self.grad_keys, self._groups = keys, gradq.groups(self.units, keys)
        if state.grad_sq_norms is not None:
            sq = state.grad_sq_norms
            norms = np.sqrt(sq) if isinstance(sq, np.ndarray) else namespace(sq).sqrt(sq)
        else:
            norms = gradq.tensor_norms(state.grads, keys)
        stage.add(norms, self._apply_grad_norms)
        if state.grad_norm is not None:
            rec.set_scalar("grad_norm", float(state.grad_norm))
        self._slow = self.records % self.weight_every == 0 or not np.isfinite(self._weight_norms).any()
        if self._slow:
            stage.add(gradq.tensor_norms(state.params, self._weight_keys), self._apply_weight_norms)
            for j, mean in gradq.bias_means(state.params, self.units):
                stage.add(mean, _setter(rec, "bias_mean", j))
        finite = True
        if state.activations is not None:
            finite = self._activations(state, rec, stage)
        if not self.sizes.size:
            self.sizes = np.array([sum(int(math.prod(state.params[k].shape)) for k in u.params if k in state.params)
                                   for u in self.units], dtype=float)
        if not self.batch:
            self.batch = int(state.batch_size or 1)
        self._pending = rec
        return finite

    def _activations(self, state: StepState, rec: Record, stage: Staged) -> bool:
        finite = True
        activations, alive = state.activations, state.alive or {}
        for u in self.units:
            y = activations.get(u.activation_layer) if u.activation_layer else None
            if y is None:
                continue
            sat = actq.saturation_fraction(y, u.activation, self.saturation_margin)
            if sat is not None:
                stage.add(sat, _setter(rec, "saturation", u.index))
                pre = (state.preactivations or {}).get(u.activation_layer)
                # an infinite input gives an output at the asymptote: only saturated layers can hide one (a NaN
                # input shows in the output, the loss and the gradients anyway); host arrays only
                if pre is not None and isinstance(sat, _HOST_TYPES) and float(sat) > 0:
                    finite = finite and all_finite(pre)
            tracker = self._dead.get(u.name)
            if tracker is not None:
                mask = alive.get(u.activation_layer)
                if mask is None:
                    mask = actq.alive_units(y, -1 if u.kind == "dense" else 1)
                stage.add(tracker.add(mask, actq.examples_in(y)), _setter(rec, "dead_fraction", u.index))
            if self._slow:
                mean, std = actq.moments(y)
                stage.add(mean, _setter(rec, "act_mean", u.index))
                stage.add(std, _setter(rec, "act_std", u.index))
        return finite

    def _apply_grad_norms(self, norms: np.ndarray) -> None:
        rec = self._record  # the pending record (one buffer, reused every step)
        self.last_tensor_norms = norms
        rec.set_layer("grad_norm", gradq.combine(norms, self._groups))
        if math.isnan(rec.scalar("grad_norm")):
            rec.set_scalar("grad_norm", float(np.sqrt(np.sum(np.square(norms)))))

    def _apply_weight_norms(self, norms: np.ndarray) -> None:
        self._weight_norms = gradq.combine(norms, self._weight_groups)
        self._record.set_layer("weight_norm", self._weight_norms)

    def set_loss(self, value: float) -> None:
        """The loss of the pending step, for loops that learn it after ``on_after_backward``."""
        if self._pending is not None:
            self._pending.set_scalar("loss", float(value))

    def commit(self, state: StepState | None) -> Record | None:
        """Finish the pending record with the step's update and clip coefficient (``state`` is None for loops
        that never send ``on_step_end``), move its staged values to the host and append it.  Returns it."""
        rec, self._pending = self._pending, None
        if rec is None:
            return None
        update_norms: list[np.ndarray] = []
        if state is not None and state.update is not None and self._slow:
            keys = [k for k in self._weight_keys if k in state.update]
            if len(keys) == len(self._weight_keys):
                self._stage.add(gradq.tensor_norms(state.update, keys), update_norms.append)
        clip = state.clip_coef if state is not None else 1.0
        self._stage.add(clip, lambda v: rec.set_scalar("clip_coef", _scalar(v)))
        self._stage.flush()
        if update_norms:
            rec.set_layer("update_ratio",
                          gradq.update_ratios(gradq.combine(update_norms[0], self._weight_groups), self._weight_norms))
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


def _setter(rec: Record, quantity: str, index: int) -> Callable[[np.ndarray], None]:
    """A function writing a one-value host array into ``rec``'s ``quantity`` at unit ``index``."""
    row = rec.layer(quantity)

    def apply(value: np.ndarray) -> None:
        row[index] = _scalar(value)
    return apply


def _scalar(value: np.ndarray) -> float:
    """The one value of a host array of shape ``()`` or ``(1,)``."""
    return float(np.reshape(value, -1)[0])

