"""The words gradmon uses everywhere, each defined once: activation families, optimizers with a 2/lr
stability bound, severities (order, labels, colours, counts) and significant-digit rounding.

Every other module imports these names instead of spelling its own tuple, so a new activation (a PyTorch
``nn.Mish``) or a new severity colour is added in one place.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

# -- activations ------------------------------------------------------------------------------------------------
#: Bounded activations whose derivative vanishes at their asymptotes: units pinned there are *saturated*.
#: (``hardtanh``/``hardsigmoid`` are flat, derivative exactly 0, beyond their clip points.)
SATURATING: frozenset[str] = frozenset({"sigmoid", "tanh", "hardsigmoid", "hardtanh", "softsign"})
#: Activations whose output is exactly zero, with zero derivative, for every negative input: a unit
#: that is zero for a whole batch gets no gradient and is *dead*.
RECTIFIERS: frozenset[str] = frozenset({"relu", "relu6"})
#: Rectifier-like activations that keep a gradient for negative inputs (a small slope or a smooth tail):
#: they cannot die, and are the fixes suggested for dead units.
LEAKY_RECTIFIERS: frozenset[str] = frozenset({"leaky_relu", "prelu", "rrelu", "elu", "selu", "celu"})
#: Smooth, unbounded-above activations (mostly positive, a small negative dip).
SMOOTH_RECTIFIERS: frozenset[str] = frozenset({"gelu", "silu", "mish", "softplus"})
#: The ReLU family: He initialisation (variance 2/fan_in) keeps their signal's scale through depth.
RELU_FAMILY: frozenset[str] = RECTIFIERS | LEAKY_RECTIFIERS | SMOOTH_RECTIFIERS
#: Every activation gradmon knows by name.
ACTIVATIONS: frozenset[str] = SATURATING | RELU_FAMILY

#: Initialisations by the family they suit (names as the spec and ``core.initializers`` spell them).
HE_INITS: frozenset[str] = frozenset({"he_normal", "he_uniform"})
XAVIER_INITS: frozenset[str] = frozenset({"xavier_normal", "xavier_uniform", "lecun_normal"})

# -- optimizers -------------------------------------------------------------------------------------------------
#: Optimizers whose step is plain (heavy-ball or Nesterov) gradient descent: they have the stability bound
#: λmax < 2/lr (2(1+β)/lr with momentum β).  Adaptive optimizers precondition the curvature and have none.
STABILITY_BOUND_OPTIMIZERS: frozenset[str] = frozenset({"sgd", "momentum"})



def stability_threshold(lr: float, momentum: float = 0.0, nesterov: bool = False) -> float:
    """Largest curvature gradient descent can follow stably, in 1/loss-units.

    On a quadratic with curvature λ: plain gradient descent is stable iff ``lr·λ < 2``; heavy-ball momentum
    β (``v ← βv + g; θ ← θ - lr·v``) iff ``lr·λ < 2(1+β)``; Nesterov momentum (``θ ← θ - lr(g + βv)``) iff
    ``lr·λ < 2(1+β)/(1+2β)``, a bound 2.8 times lower at β = 0.9.
    """
    if isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"the learning rate must be positive, got {lr!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    bound = 2.0 * (1.0 + momentum)
    if nesterov:
        bound /= 1.0 + 2.0 * momentum
    return bound / lr


def stability_formula(momentum: float = 0.0, nesterov: bool = False) -> str:
    """The formula of :func:`stability_threshold` in words, for messages and plots: ``2/lr`` without
    momentum, ``2(1+β)/lr`` with heavy-ball momentum β, ``2(1+β)/(lr(1+2β))`` with Nesterov's."""
    if not momentum:
        return "2/lr"
    return "2(1+β)/(lr(1+2β))" if nesterov else "2(1+β)/lr"


# -- severities -------------------------------------------------------------------------------------------------
#: Severities, least to most severe; a report's status is its worst one (info never counts).
SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
#: Report statuses, by the worst severity found (``healthy`` for none or only info).
STATUSES: tuple[str, ...] = ("healthy", "warning", "error")
#: How each severity is written in one-line output (console, TensorBoard alerts, ``gradmon check``).
SEVERITY_LABELS: dict[str, str] = {"info": "info", "warning": "WARNING", "error": "ERROR"}
#: Colour of each severity in plots and reports (Okabe-Ito, readable by colour-blind people).
SEVERITY_COLOURS: dict[str, str] = {"info": "#0072B2", "warning": "#E69F00", "error": "#D55E00"}
#: Text colour of each severity on a light background (darker than the plot colours, for contrast).
SEVERITY_TEXT_COLOURS: dict[str, str] = {"info": "#0072B2", "warning": "#a05a00", "error": "#b3261e"}
#: Background and text colour of each status banner.
STATUS_COLOURS: dict[str, tuple[str, str]] = {"healthy": ("#e6f4ea", "#1e7d32"), "warning": ("#fff4e0", "#a05a00"),
                                              "error": ("#fde8e4", "#b3261e")}


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error (ValueError naming the valid ones otherwise)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}") from None


def severity_counts(severities: Iterable[str]) -> dict[str, int]:
    """``{"error": n, "warning": n, "info": n}``, worst first, from the severities of some findings."""
    counts = {s: 0 for s in reversed(SEVERITIES)}
    for s in severities:
        counts[s] = counts.get(s, 0) + 1
    return counts


def count_phrase(n: int, severity: str) -> str:
    """``"1 error"``, ``"2 warnings"``, ``"3 info"`` (info is uncountable)."""
    return f"{n} {severity}{'s' if n != 1 and severity != 'info' else ''}"


def counts_phrase(counts: Mapping[str, int]) -> str:
    """``"1 error, 2 warnings"`` (severities with none left out; empty when there are none)."""
    return ", ".join(count_phrase(n, sev) for sev, n in counts.items() if n)


# -- numbers ----------------------------------------------------------------------------------------------------
def sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (for messages, evidence and suggested values);
    0, NaN and infinities unchanged."""
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")
