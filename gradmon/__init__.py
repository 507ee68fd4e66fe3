"""gradmon: a diagnostic training monitor for neural networks.

>>> import core, gradmon
>>> monitor = gradmon.Monitor(logdir="runs/exp1")            # doctest: +SKIP
>>> core.Trainer(model, callbacks=[monitor]).fit(X, y)       # doctest: +SKIP
>>> monitor.report().status                                  # doctest: +SKIP

``gradmon.torch`` (optional extra ``gradmon[torch]``) watches PyTorch loops.
"""

from gradmon.findings import FINDING_CODES, SUGGESTION_CODES, Finding, HealthReport, Suggestion
from gradmon.history import History
from gradmon.monitor import Monitor

__all__ = ["FINDING_CODES", "SUGGESTION_CODES", "Finding", "HealthReport", "History", "Monitor", "Suggestion"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # gradmon.torch is imported lazily: torch is an optional extra
    if name == "torch":
        import importlib

        return importlib.import_module("gradmon.torch")
    raise AttributeError(f"module 'gradmon' has no attribute {name!r}")
