"""Built-in scenarios: small run specs shipped with the package (``gradmon demo NAME``).

Each shows one pathology (or a healthy baseline); ``FIXES`` pairs a pathology with the patch that cures it,
which ``gradmon demo`` runs side by side.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

SCENARIOS: dict[str, str] = {
    "vanishing": "a deep sigmoid network whose early layers stop learning",
    "exploding": "a deep ReLU regressor whose gradients blow up under momentum SGD",
    "dead-relu": "ReLU units switched off by negative biases",
    "saturation": "tanh units pinned at +-1 by a too-wide initialization",
    "sharpness": "full-batch gradient descent above the 2/lr stability threshold",
    "healthy": "ReLU, He init, Adam on moons: nothing to report",
}

#: the patch that fixes each pathology (what the demo runs beside it)
FIXES: dict[str, dict[str, Any]] = {
    "vanishing": {"model.activation": "relu", "model.init": "he_normal"},
    "exploding": {"train.clip_norm": 1.0},
    "dead-relu": {"model.bias_init": 0.0},
    "saturation": {"model.init": "xavier_normal"},
    "sharpness": {"train.lr": 0.1},
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
