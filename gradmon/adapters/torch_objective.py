"""The loss of a fixed batch of a PyTorch model as a function of its parameters, with exact Hessian-vector
products by double backward (curvature for :mod:`gradmon.quantities.curvature_meter` and
:func:`gradmon.torch.curvature`).

One graph per estimate: :meth:`TorchObjective.linearize` runs the forward pass and builds the gradient once
with ``create_graph=True``; every product of that estimate is then one ``torch.autograd.grad`` of that
gradient (``retain_graph=True``).  The parameters are views of one flat leaf tensor, so the gradient and each
product are flat tensors on the model's device, in the parameters' dtype: a product needs no splitting,
concatenation, conversion or copy to the host.

Evaluating it never changes the model: dropout is off, BatchNorm uses copies of its buffers, the global
RNG state is restored after the forward pass, and a watcher's hooks are paused.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from gradmon.adapters.torch_trace import LayerCapture, gauss_newton_traces, linear_layers, loss_factor


def _owner(owner: Any) -> tuple[nn.Module, Callable[[], Any]]:
    """The model and a context manager that pauses its watcher's hooks (a no-op for a bare model)."""
    if isinstance(owner, nn.Module):
        return owner, contextlib.nullcontext
    return owner.model, owner.paused


class TorchObjective:
    """The loss of a fixed batch as a function of the parameters, with exact HVPs by double backward.

    ``owner`` is the model, or a watcher (``.model`` and ``.paused()``, whose hooks then ignore the passes).
    ``x`` is the model's positional arguments (a tensor or a tuple), ``kwargs`` its keyword arguments, ``y``
    the targets of ``loss_fn(model(*x, **kwargs), y)``.  :meth:`grad` and :meth:`hvp` (the hook protocol's
    ``Objective``) take and return numpy dicts keyed like ``model.named_parameters()``; :meth:`linearize`
    gives the operator a curvature estimate uses.
    """

    def __init__(self, owner: Any, x: Any, y: Any, loss_fn: Callable,
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.watcher = owner
        self.model, self.paused = _owner(owner)
        self.args = tuple(x) if isinstance(x, tuple) else (x,)
        self.kwargs = dict(kwargs or {})
        self.y, self.loss_fn = y, loss_fn
        self.n_hvp = 0

    def linearize(self, params: Mapping[str, np.ndarray] | None = None,
                  create_graph: bool = True) -> "TorchOperator":
        """The Hessian at ``params`` (the live parameters when None) as an operator on flat tensors."""
        return TorchOperator(self, params, create_graph)

    def grad(self, params: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """``(loss, grads)`` at ``params`` (the live parameters when None); grads are float64 arrays."""
        op = self.linearize(params, create_graph=False)
        return float(op.value), {n: g.detach().double().cpu().numpy() for n, g in zip(op.names, op.grads)}

    def hvp(self, vec: Mapping[str, np.ndarray],
            params: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The Hessian-vector product ``H(params) @ vec`` by double backward, keyed like ``vec`` (one product:
        for many at the same point use :meth:`linearize`)."""
        op = self.linearize(params)
        flat = np.concatenate([np.asarray(vec[n], dtype=np.float64).ravel() for n in op.names])
        out = op.hvp(op.vector(flat)).double().cpu().numpy()
        return {n: out[op.offsets[i]:op.offsets[i + 1]].reshape(op.shapes[i]) for i, n in enumerate(op.names)}


class TorchOperator:
    """The Hessian of a :class:`TorchObjective` at fixed parameters, on flat tensors of length ``dim``
    (parameters in ``named_parameters()`` order) of the parameters' dtype (``dtype``, float32 at least) on the
    model's device.

    Built once per estimate: the forward pass and the gradient graph (``create_graph=True``); :meth:`hvp` is
    one ``torch.autograd.grad`` of the gradient with ``retain_graph=True``.  ``value`` is the loss (a tensor).
    :meth:`exact_trace` is the trace by :mod:`gradmon.adapters.torch_trace` where that route applies.
    """

    #: how :meth:`exact_trace` gets the trace
    trace_method = "exact (Gauss-Newton)"

    def __init__(self, objective: TorchObjective, params: Mapping[str, np.ndarray] | None,
                 create_graph: bool = True) -> None:
        model = objective.model
        live = dict(model.named_parameters())
        self.objective = objective
        self.names = list(live)
        if not self.names:
            raise ValueError("the model has no parameters: there is no curvature to measure")
        self.shapes = [tuple(live[n].shape) for n in self.names]
        self.offsets = np.cumsum([0] + [live[n].numel() for n in self.names]).tolist()
        self.dim = int(self.offsets[-1])
        first = live[self.names[0]]
        self.device = first.device
        values = [live[n].detach() if params is None else
                  torch.as_tensor(np.asarray(params[n]), dtype=live[n].dtype, device=live[n].device)
                  for n in self.names]
        self.dtypes = [v.dtype for v in values]
        #: the vectors' dtype: the parameters' (float32 at least), so a product needs no conversion
        self.dtype = torch.float32
        for d in self.dtypes:
            self.dtype = torch.promote_types(self.dtype, d)
        # one flat leaf; the parameters are views of it, so the gradient and every product are one flat tensor
        self.flat = torch.cat([v.reshape(-1).to(self.dtype) for v in values]).requires_grad_(True)
        sizes = [int(b - a) for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        devices = sorted({v.device.index for v in values if v.device.type == "cuda"})
        layers = linear_layers(model) if create_graph else None
        if layers is not None and sum(p.numel() for _, m in layers for p in m.parameters()) != self.dim:
            layers = None
        self._capture = LayerCapture(layers or [])
        with objective.paused(), _dropout_off(model), torch.enable_grad(), self._capture, \
                torch.random.fork_rng(devices=devices, enabled=True):
            pieces = [piece.view(shape).to(dtype) for piece, shape, dtype in
                      zip(self.flat.split(sizes), self.shapes, self.dtypes)]
            out = torch.func.functional_call(model, {**dict(zip(self.names, pieces)), **buffers},
                                             objective.args, objective.kwargs)
            loss = objective.loss_fn(out, objective.y)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn(model(x), y) must return a scalar tensor (reduce the loss to its mean "
                                 "or sum)")
            grad = torch.autograd.grad(loss, self.flat, create_graph=create_graph, allow_unused=True)[0]
        self.value = loss.detach()
        self._out = out if layers is not None else None
        self.flat_grad = grad if grad is not None else torch.zeros_like(self.flat)
        self.grads = [g.view(shape) for g, shape in zip(self.flat_grad.detach().split(sizes), self.shapes)]
        self.n_hvp = 0

    def layer_traces(self) -> dict[str, float] | None:
        """The exact Hessian trace of each linear layer where the Gauss-Newton route applies, else None."""
        if not hasattr(self, "_traces"):
            factor = loss_factor(self.objective.loss_fn, self._out, self.objective.y) \
                if self._out is not None else None
            self._traces = gauss_newton_traces(self._capture, self._out, factor) if factor is not None else None
        return None if self._traces is None else dict(self._traces)

    def exact_trace(self) -> float | None:
        """``tr(H)`` exactly where the model and loss allow the cheap exact route, else None."""
        traces = self.layer_traces()
        return None if traces is None else float(sum(traces.values()))

    def vector(self, values: np.ndarray) -> torch.Tensor:
        """A host array as a tensor of the operator's dtype on the model's device."""
        return torch.as_tensor(np.ascontiguousarray(values), dtype=self.dtype, device=self.device)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat tensor of length ``dim`` (returned in the operator's dtype, same device): one
        ``torch.autograd.grad`` of the gradient graph built once."""
        self.n_hvp += 1
        self.objective.n_hvp += 1
        if not self.flat_grad.requires_grad:  # the gradient does not depend on the parameters
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        return torch.autograd.grad(self.flat_grad, self.flat, grad_outputs=v.to(self.dtype), retain_graph=True)[0]


class _dropout_off:
    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]

    def __enter__(self) -> None:
        for m in self.modules:
            m.training = False

    def __exit__(self, *exc: Any) -> None:
        for m in self.modules:
            m.training = True
