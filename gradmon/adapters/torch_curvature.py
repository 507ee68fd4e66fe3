"""``gradmon.torch.curvature``: a PyTorch model's loss curvature on one batch, in one call.

>>> import gradmon.torch, torch.nn.functional as F                               # doctest: +SKIP
>>> c = gradmon.torch.curvature(model, F.cross_entropy, (x, y))                 # doctest: +SKIP
>>> c.lambda_max, c.trace, c.trace_stderr, c.hvps, c.seconds, c.converged       # doctest: +SKIP

No watcher, optimizer or training step is needed, and the model is left exactly as it was: its mode
(``training``), parameters, gradients, BatchNorm buffers (copies are used), dropout (off during the
measurement, restored after) and the global RNG state (restored after the forward pass).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from gradmon.adapters.torch_objective import TorchObjective
from gradmon.quantities.curvature import CurvatureResult, measure


def curvature(model: nn.Module, loss_fn: Callable, batch: tuple[Any, Any], *, tol: float = 1e-3, trace: bool = True,
              max_iter: int = 100, seed: int = 0, kwargs: Mapping[str, Any] | None = None) -> CurvatureResult:
    """The top Hessian eigenvalue and the trace (± one standard error) of ``loss_fn(model(x), y)`` at the
    model's current parameters.

    ``batch``: ``(x, y)``, ``x`` a tensor or a tuple of positional inputs (``kwargs``: keyword inputs).
    ``tol``: the relative tolerance of λmax (Lanczos, at most ``max_iter`` products).  The trace is exact for
    ``nn.Sequential`` stacks of ``nn.Linear`` with ReLU-like activations under cross-entropy or MSE
    (:mod:`gradmon.adapters.torch_trace`), else deflated Hutch++-style with as many products as λmax took.
    Products are exact (double backward, one gradient graph for the whole call).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"curvature() needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if not callable(loss_fn):
        raise TypeError(f"curvature() needs loss_fn(model_output, y) -> scalar tensor, got {loss_fn!r}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("curvature() needs batch=(x, y): the model's inputs and the targets of loss_fn")
    x, y = batch
    objective = TorchObjective(model, tuple(x) if isinstance(x, list) else x, y, loss_fn, kwargs)
    return measure(objective.linearize, tol=tol, trace=trace, max_iter=max_iter, seed=seed)
