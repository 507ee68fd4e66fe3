"""The exact Hessian trace of a PyTorch model where a cheap exact route exists: ``nn.Sequential`` stacks of
``nn.Linear`` layers with piecewise-linear activations, under cross-entropy or mean squared error.

Why it is exact there: the Hessian is ``Σₙ Jₙᵀ Hₙ Jₙ + Σₙₖ rₙₖ ∇²fₙₖ`` (Gauss-Newton plus the network's own
curvature).  When the output is linear in each layer's own parameters (linear layers, ReLU-like activations
that are linear almost everywhere, dropout off), the second term has zero diagonal blocks, so its trace is
0 and ``tr(H) = tr(G) = Σₙ ‖Jₙᵀ Sₙ‖²_F`` with ``Sₙ Sₙᵀ = Hₙ`` the loss's Hessian in example ``n``'s
outputs.  For a linear layer with inputs ``aₙ`` and back-propagated seeds ``δₙ,c`` (column ``c`` of ``Sₙ``
pushed back to the layer's output) its part is ``Σₙ (‖aₙ‖² + 1) Σ_c ‖δₙ,c‖²``: ``k`` backward passes of
activations (``k`` = the number of outputs), batched into one, instead of dozens of stochastic products.

Anything the route cannot vouch for (another module, a functional call inside a custom ``forward``, a
module used twice, another loss or non-default loss options) gives None, and the caller estimates instead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

#: modules through which the network stays linear in each layer's own parameters (almost everywhere)
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.Flatten,
                    nn.modules.dropout._DropoutNd)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]] | None:
    """The ``nn.Linear`` layers of a model that the exact route covers, in call order; None otherwise.

    Covered: an ``nn.Sequential`` (nested ones too) whose leaves are ``nn.Linear`` or
    :data:`PIECEWISE_LINEAR` modules, each used once, with parameters only in the linear layers."""
    if not isinstance(model, nn.Sequential):
        return None
    out: list[tuple[str, nn.Linear]] = []
    seen: set[int] = set()

    def walk(seq: nn.Sequential, prefix: str) -> bool:
        for name, child in seq._modules.items():  # (named_children() would hide a module used twice)
            if id(child) in seen:
                return False
            seen.add(id(child))
            qual = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                if not walk(child, f"{qual}."):
                    return False
            elif type(child) is nn.Linear:
                out.append((qual, child))
            elif isinstance(child, PIECEWISE_LINEAR) and not any(True for _ in child.parameters()):
                continue
            else:
                return False
        return True

    return out if walk(model, "") and out else None


def loss_factor(loss_fn: Callable, out: torch.Tensor, y: Any) -> torch.Tensor | None:
    """``S`` of shape ``(batch, outputs, k)`` with ``Sₙ Sₙᵀ`` the Hessian of ``loss_fn`` in example ``n``'s
    outputs (float64), for the losses whose Hessian is known here: cross-entropy on integer labels and mean
    squared error, with their default options (mean reduction, no weights or label smoothing); else None."""
    if out.dim() != 2 or not isinstance(y, torch.Tensor):
        return None
    z = out.detach().double()
    n, k = z.shape
    if _is(loss_fn, torch.nn.functional.cross_entropy, nn.CrossEntropyLoss):
        if isinstance(loss_fn, nn.CrossEntropyLoss) and (loss_fn.reduction != "mean" or loss_fn.weight is not None
                                                         or loss_fn.label_smoothing != 0):
            return None
        if y.dtype not in (torch.int64, torch.int32) or y.shape != (n,) or bool((y < 0).any()):
            return None
        p = torch.softmax(z, dim=1)
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        return p.sqrt()[:, None, :] * (eye[None] - p[:, :, None]) / n ** 0.5
    if _is(loss_fn, torch.nn.functional.mse_loss, nn.MSELoss):
        if isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction != "mean":
            return None
        if tuple(y.shape) != (n, k):
            return None
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        return (2.0 / z.numel()) ** 0.5 * eye.expand(n, k, k)
    return None


def _is(loss_fn: Any, function: Callable, module: type) -> bool:
    return loss_fn is function or type(loss_fn) is module


class LayerCapture:
    """Forward hooks that keep each covered linear layer's input and output during one forward pass."""

    def __init__(self, layers: list[tuple[str, nn.Linear]]) -> None:
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "LayerCapture":
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.inputs[name] = args[0]
            self.outputs[name] = output
        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def gauss_newton_traces(capture: LayerCapture, out: torch.Tensor, factor: torch.Tensor) -> dict[str, float] | None:
    """The exact trace of each covered linear layer's Hessian block (see the module's docstring), from the
    captured forward pass whose output is ``out`` (its graph must still be alive)."""
    names = [n for n, _ in capture.layers]
    if any(n not in capture.outputs or capture.inputs[n].dim() != 2 for n in names):
        return None
    outputs = [capture.outputs[n] for n in names]
    seeds = factor.permute(2, 0, 1).to(out.dtype).contiguous()  # (k, batch, outputs)
    deltas = torch.autograd.grad(out, outputs, grad_outputs=seeds, retain_graph=True, is_grads_batched=True,
                                 allow_unused=True)
    traces: dict[str, float] = {}
    for (name, module), delta in zip(capture.layers, deltas):
        if delta is None:
            traces[name] = 0.0
            continue
        per_example = delta.double().pow(2).sum(dim=(0, 2))         # Σ_c ‖δₙ,c‖², shape (batch,)
        a = capture.inputs[name].detach().double()
        weight = float(per_example @ a.pow(2).sum(dim=1))
        traces[name] = weight + (float(per_example.sum()) if module.bias is not None else 0.0)
    return traces
