"""gradmon: a diagnostic training monitor for neural networks.

>>> import core, gradmon
>>> monitor = gradmon.Monitor(logdir="runs/exp1")            # doctest: +SKIP
>>> core.Trainer(model, callbacks=[monitor]).fit(X, y)       # doctest: +SKIP
>>> monitor.report().status                                  # doctest: +SKIP

``gradmon.torch`` (optional extra ``gradmon[torch]``) watches PyTorch loops.
"""

import sys

from gradmon import report as _report  # noqa: F401  (registers the Markdown and HTML report renderers)
from gradmon.findings import FINDING_CODES, SUGGESTION_CODES, Finding, HealthReport, Suggestion
from gradmon.history import History
from gradmon.measure import curvature
from gradmon.monitor import Monitor
from gradmon.thresholds import Thresholds

__all__ = ["FINDING_CODES", "SUGGESTION_CODES", "Finding", "HealthReport", "History", "Monitor", "Suggestion",
           "Thresholds", "curvature"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``gradmon.torch`` is imported on first use: torch is an optional extra.  Without torch the attribute
    is missing (``AttributeError``, so ``hasattr``/``getattr(gradmon, "torch", None)`` work) and the error
    says how to install it; ``import gradmon.torch`` raises the ``ImportError`` itself."""
    if name == "torch":
        import importlib

        try:
            return importlib.import_module("gradmon.torch")
        except ImportError as exc:
            raise AttributeError(str(exc), name=name, obj=sys.modules[__name__]) from exc
    raise AttributeError(f"module 'gradmon' has no attribute {name!r}")
