"""Built-in scenarios: small run specs shipped with the package (``gradmon demo NAME``).

Each shows one pathology (or a healthy baseline).  ``gradmon demo NAME`` runs the scenario, then the same run
with the first fix of the root cause its report names (``--no-fix`` runs the scenario alone): exactly the
patch it prints.  ``FIXES`` lists the scenarios run beside their fix, with that fix as the shipped scenario's
report names it (a test keeps the two equal).  Every fix is one that ``gradmon doctor`` measures as better
than the scenario itself.  ``sharpness`` has none on purpose: gradient
descent above 2/lr spikes and then settles where the curvature is lower, and the run ends with the lowest loss
of all the learning rates tried (a lower lr avoids the finding but trains ten times slower), so the finding is
information, not a failure to fix.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

SCENARIOS: dict[str, str] = {
    "vanishing": "a deep sigmoid network whose early layers stop learning",
    "exploding": "a deep ReLU regressor whose gradients blow up under momentum SGD",
    "dead-relu": "ReLU units switched off by negative biases",
    "saturation": "tanh units pinned at +-1 by a too-wide initialization in a four-layer network",
    "sharpness": "full-batch gradient descent above the 2/lr stability threshold: the loss spikes, then "
                 "training settles where the curvature is lower (edge of stability, reported as info)",
    "healthy": "ReLU, He init, Adam on moons: nothing to report",
}

#: the first fix of each pathology's root cause, as its report names it (what the demo runs beside it)
FIXES: dict[str, dict[str, Any]] = {
    "vanishing": {"model.activation": "relu", "model.init": "he_normal"},
    "exploding": {"train.clip_norm": 9.7},
    "dead-relu": {"model.bias_init": 0.0},
    "saturation": {"model.init": "xavier_normal"},
}


def scenario_text(name: str) -> str:
    """The TOML text of a built-in scenario (ValueError listing the valid names otherwise)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; use one of {', '.join(SCENARIOS)}")
    return resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def scenario_path(name: str):
    """A path-like to the scenario's TOML inside the installed package."""
    scenario_text(name)
    return resources.files(__package__).joinpath(f"{name}.toml")
