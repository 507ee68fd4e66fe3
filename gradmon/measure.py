"""``gradmon.curvature``: a core model's loss curvature on a batch, in one call (the twin of
:func:`gradmon.torch.curvature`).

>>> import core, gradmon                                                        # doctest: +SKIP
>>> c = gradmon.curvature(model, X, y, loss="cross_entropy")                     # doctest: +SKIP
>>> c.lambda_max, c.trace, c.trace_stderr, c.hvps, c.seconds, c.converged        # doctest: +SKIP

Everything is evaluated in float64 on copies of the parameters: the model's parameters, BatchNorm running
statistics and dropout generator are left exactly as they were.  Dropout is off; BatchNorm uses the
statistics of ``X`` (as in a training step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.losses import Loss, as_loss
from core.objective import BatchObjective
from gradmon.quantities.curvature import CurvatureResult, measure


def curvature(model: Any, X: np.ndarray, y: np.ndarray, *, loss: str | Loss = "cross_entropy", l2: float = 0.0,
              tol: float = 1e-3, trace: bool = True, max_iter: int = 100, seed: int = 0) -> CurvatureResult:
    """The top Hessian eigenvalue and the trace (± one standard error) of ``loss(model(X), y) + l2·Σ‖W‖²`` at
    the model's current parameters.

    ``model``: a ``core.Sequential``; ``X``: ``(batch, features)``; ``y``: integer labels ``(batch,)`` or
    targets ``(batch, outputs)``; ``loss``: a loss name (``cross_entropy``, ``mse``,
    ``binary_cross_entropy``) or a ``core.losses.Loss``.  ``tol``: the relative tolerance of λmax.  The trace
    is exact for Dense layers with ReLU/LeakyReLU activations (the Gauss-Newton route), else deflated
    Hutch++-style with as many products as λmax took.
    """
    if not (hasattr(model, "linearize") and hasattr(model, "parameters")):
        raise TypeError(f"gradmon.curvature() needs a core.Sequential, got {type(model).__name__} "
                        f"(PyTorch models: gradmon.torch.curvature)")
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
        raise ValueError(f"X must be (batch, features) with one target per row, got X {X.shape} and y {y.shape}")
    loss_obj = as_loss(loss)
    loss_obj.check_targets(y, model.n_outputs)
    objective = BatchObjective(model, loss_obj, X, y, l2=float(l2), dropout=False)
    return measure(objective.linearize, tol=tol, trace=trace, max_iter=max_iter, seed=seed)
