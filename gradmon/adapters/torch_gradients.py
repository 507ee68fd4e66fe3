"""Gradients of a PyTorch model as the watcher reads them: before any clipping, once per ``backward()``,
in one fused reduction on their device.

A post-accumulate-grad hook on every unit parameter notes that a ``backward()`` is running; at its end
(after DDP has written the rank-averaged gradients) :class:`GradientReader` computes the norm of every
``p.grad`` with one ``torch._foreach_norm`` (:func:`gradmon.quantities.xp.norms`) and keeps the version
counters of the gradient tensors.  At the optimizer step it hands out those norms (pre-clip; with gradient
accumulation, of the accumulated gradient) and the clip coefficient ``‖g now‖ / ‖g after backward‖``, which
costs nothing when no version counter moved in between (no clipping, no unscaling).  Under a ``GradScaler``
the scale is divided out on the device.  Nothing is read on the steps the monitor does not measure.
"""

from __future__ import annotations

import operator
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from gradmon.quantities.xp import norms

_ENGINE = torch.autograd.Variable._execution_engine


class Gradients(Mapping):
    """``key -> p.grad`` of the unit parameters, read when asked (zeros for a parameter without a gradient:
    torch's meaning of None).  Costs nothing per step until a value is looked up."""

    def __init__(self, keys: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
        self._keys = tuple(keys)
        self._where = {k: i for i, k in enumerate(self._keys)}
        self._tensors = list(tensors)
        self._zeros: dict[int, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        p = self._tensors[self._where[key]]
        g = p.grad
        if g is None:
            g = self._zeros.get(id(p))
            if g is None or g.shape != p.shape or g.device != p.device:
                g = self._zeros[id(p)] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return g

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class GradientReader:
    """Reads the gradients of ``tensors`` (keyed ``keys``) at the end of every ``backward()`` that the
    coming step will measure (``measured()``).  ``scaler``: a ``GradScaler`` whose scale to divide out;
    ``on_error(exc)``: what to do when reading fails (the watcher stops watching)."""

    def __init__(self, keys: Sequence[str], tensors: Sequence[torch.Tensor], *, measured: Callable[[], bool],
                 on_error: Callable[[BaseException], None], scaler: Any = None) -> None:
        self.keys, self.tensors = tuple(keys), list(tensors)
        self.grads = Gradients(keys, tensors)
        self.measured, self.on_error, self.scaler = measured, on_error, scaler
        self.backwards = 0          # backward passes seen
        self.seconds = 0.0          # wall time spent reading gradients
        self.paused = False         # curvature probes run their own backward passes
        self._queued = False
        self._read: tuple[list[Any], list[int], Any] | None = None
        self._handles = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in self.tensors]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- during backward ---------------------------------------------------------------------------------------
    def _grad_ready(self, param: torch.Tensor) -> None:
        """A parameter's ``.grad`` was accumulated: read every gradient once this backward is over."""
        if self._queued or self.paused:
            return
        self._queued = True
        # queued twice: DDP queues its own end-of-backward callback (which writes the averaged gradients
        # into p.grad) during the backward pass; a callback queued by a callback runs after it
        _ENGINE.queue_callback(self._queue_read)

    def _queue_read(self) -> None:
        _ENGINE.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        self._queued = False
        self.backwards += 1
        t0 = time.perf_counter()
        try:
            if not self.measured():  # the coming step is not measured: nothing to read
                self._read = None
                return
            grads = [p.grad for p in self.tensors]
            values = self.norms(grads)
            if self.scaler is not None and self.scaler.is_enabled():
                scale = getattr(self.scaler, "_scale", None)  # on the device (get_scale() would synchronise)
                values = values / (scale.to(values.device) if isinstance(scale, torch.Tensor)
                                   else self.scaler.get_scale())
            self._read = (grads, [g._version if g is not None else -1 for g in grads], values)
        except Exception as exc:  # a monitor never breaks training
            self._read = None
            self.on_error(exc)
        finally:
            self.seconds += time.perf_counter() - t0

    def norms(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The norm of each gradient, one vector on their device (0 for a parameter without one)."""
        present = [g for g in grads if g is not None]
        if len(present) == len(grads):
            return norms(present)
        out = torch.zeros(len(grads), device=self.tensors[0].device)
        if present:
            got = norms(present)
            out = out.to(got.dtype)
            out[[i for i, g in enumerate(grads) if g is not None]] = got.to(out.device)
        return out

    # -- at the step -------------------------------------------------------------------------------------------
    def take(self, measured: bool) -> tuple[Mapping[str, torch.Tensor], Any, Any]:
        """The gradients, their squared norms as read at the end of the last backward (pre-clip; read now if
        no backward was seen; None for a step not ``measured``) as one vector on their device, and the clip
        coefficient (1.0 when no gradient changed since)."""
        read, self._read = self._read, None
        self._queued = False  # (a backward that raised never ran its end-of-backward callback)
        if not measured:
            return self.grads, None, 1.0
        now = [p.grad for p in self.tensors]
        if read is None:
            values = self.norms(now)
            return self.grads, values * values, 1.0
        grads, versions, values = read
        same = all(map(operator.is_, now, grads)) and versions == [g._version if g is not None else -1 for g in now]
        clip_coef: Any = 1.0
        if not same:  # clipped or unscaled in between: how much the step's gradient differs, on the device
            current = self.norms(now)
            total_pre, total_now = torch.linalg.vector_norm(values), torch.linalg.vector_norm(current)
            clip_coef = torch.where(torch.isfinite(total_pre) & (total_pre > 0), total_now / total_pre,
                                    torch.ones_like(total_pre))
        return self.grads, values * values, clip_coef
