"""The loss of a fixed batch of a PyTorch model as a function of its parameters, with exact Hessian-vector
products by double backward (curvature for :mod:`gradmon.quantities.curvature_meter`).

Evaluating it never changes the model: dropout is off, BatchNorm uses copies of its buffers, and the
watcher's hooks are paused.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn


class TorchObjective:
    """The loss of a fixed batch as a function of the parameters, with exact HVPs by double backward.

    ``inputs`` is the model's positional arguments (a tensor or a tuple), ``kwargs`` its keyword
    arguments, ``y`` the targets of ``loss_fn(model(*inputs, **kwargs), y)``.  Parameters and vectors are
    numpy dicts keyed like ``model.named_parameters()``.  Dropout is off and BatchNorm uses copies of its
    buffers, so evaluating the objective never changes the model.
    """

    def __init__(self, watcher: Any, x: Any, y: Any, loss_fn: Callable,
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.watcher = watcher
        self.args = tuple(x) if isinstance(x, tuple) else (x,)
        self.kwargs = dict(kwargs or {})
        self.y, self.loss_fn = y, loss_fn
        self.n_hvp = 0

    def _call(self, params: Mapping[str, np.ndarray] | None, create_graph: bool):
        model = self.watcher.model
        live = dict(model.named_parameters())
        names = list(live)
        tensors = {}
        for n in names:
            ref = live[n]
            value = ref.detach() if params is None else torch.as_tensor(np.asarray(params[n]), dtype=ref.dtype,
                                                                        device=ref.device)
            tensors[n] = value.clone().requires_grad_(True)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        with self.watcher.paused(), _dropout_off(model), torch.enable_grad():
            out = torch.func.functional_call(model, {**tensors, **buffers}, self.args, self.kwargs)
            loss = self.loss_fn(out, self.y)
        grads = torch.autograd.grad(loss, [tensors[n] for n in names], create_graph=create_graph,
                                    allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(tensors[n]) for g, n in zip(grads, names)]
        return names, tensors, loss, grads

    def grad(self, params: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """``(loss, grads)`` at ``params`` (the live parameters when None); grads are float64 arrays."""
        names, _, loss, grads = self._call(params, create_graph=False)
        return float(loss.detach()), {n: g.detach().double().cpu().numpy() for n, g in zip(names, grads)}

    def hvp(self, vec: Mapping[str, np.ndarray],
            params: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The Hessian-vector product ``H(params) @ vec`` by double backward, keyed like ``vec``."""
        self.n_hvp += 1
        names, tensors, _, grads = self._call(params, create_graph=True)
        v = [torch.as_tensor(np.asarray(vec[n]), dtype=tensors[n].dtype, device=tensors[n].device) for n in names]
        differentiable = [i for i, g in enumerate(grads) if g.requires_grad]
        hv: list[Any] = [None] * len(names)
        if differentiable:
            out = torch.autograd.grad([grads[i] for i in differentiable], [tensors[n] for n in names],
                                      grad_outputs=[v[i] for i in differentiable], allow_unused=True)
            hv = list(out)
        return {n: (h.detach().double().cpu().numpy() if h is not None else np.zeros(tuple(tensors[n].shape)))
                for n, h in zip(names, hv)}


class _dropout_off:
    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]

    def __enter__(self) -> None:
        for m in self.modules:
            m.training = False

    def __exit__(self, *exc: Any) -> None:
        for m in self.modules:
            m.training = True


