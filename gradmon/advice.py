"""Advice: a table of rules mapping a finding and the run's context to suggestions with spec patches.

Each rule is ``(finding code, condition on the context, suggestion builder)``; :func:`advise` returns the
suggestions of every rule that applies, in table order (most direct fix first), without duplicates.  The
cause the detector diagnosed decides the first one, and a rule never proposes what the run already does (He
initialisation in a run initialised with He, batch normalisation in a network that has it) nor a fix the cause
does not support (a new activation for a step that is too large).  Every warning or error gets at least one
suggestion (:data:`FALLBACKS`).  A
suggestion's ``patch`` is a set of spec keys; applying it to the run's spec gives the run that tests the
fix (``gradmon doctor`` does exactly that).  The numbers a suggestion proposes (the Adam learning rate, the
L2 decay, the factor a learning rate is lowered by...) are in :class:`~gradmon.thresholds.AdviceThresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from gradmon.findings import Finding, Suggestion
from gradmon.thresholds import AdviceThresholds
from gradmon.vocabulary import HE_INITS, RECTIFIERS, RELU_FAMILY, SATURATING, STABILITY_BOUND_OPTIMIZERS, \
    XAVIER_INITS, sig


@dataclass(frozen=True)
class Context:
    """What the rules may look at, read from the run (and its spec when there is one)."""

    activation: str | None
    init: str | None
    optimizer: str
    lr: float
    momentum: float = 0.0
    clip_norm: float | None = None
    depth: int = 1                       # hidden layers
    batchnorm: bool = False
    bias_init: float = 0.0
    hidden: tuple[int, ...] = ()
    l2: float = 0.0
    framework: str = "core"               # "torch": patches name spec keys the loop does not read
    standardize: bool | None = None       # the spec's data.standardize (None: not a core spec)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Any, units: list | None = None) -> "Context":
        spec = dict(run.spec or {})
        model = spec.get("model", {})
        train = spec.get("train", {})
        hidden_units = [u for u in (units or [])][:-1]
        acts = [u.activation for u in hidden_units if u.activation]
        inits = [u.init for u in (units or []) if u.init]
        return cls(activation=model.get("activation") or (acts[0] if acts else None),
                   init=model.get("init") or (inits[0] if inits else None),
                   optimizer=run.optimizer, lr=run.lr,
                   momentum=float(run.hyperparams.get("momentum", 0.0)),
                   clip_norm=run.clip_norm, depth=len(hidden_units),
                   batchnorm=bool(model.get("batchnorm", any(u.batchnorm for u in hidden_units))),
                   bias_init=float(model.get("bias_init", next((u.bias_init for u in hidden_units
                                                                  if u.bias_init is not None), 0.0))),
                   hidden=tuple(model.get("hidden", [u.units for u in hidden_units])),
                   l2=float(train.get("l2", run.l2)), framework=getattr(run, "framework", "core"),
                   standardize=spec.get("data", {}).get("standardize"))


def _text(x: float) -> str:
    """A number as people write it in a sentence: ``0.5``, ``64``, and small ones as ``1e-3``."""
    if 0 < abs(x) < 0.01:
        mantissa, exponent = f"{x:.12e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


# -- suggestion builders: (context, finding, thresholds) -> suggestion -----------------------------------------
def relu(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("relu", f"Use ReLU with He initialization: its derivative is 1 for active units, so the "
                              f"gradient keeps its size through depth ({ctx.activation} shrinks it).",
                      {"model.activation": "relu", "model.init": "he_normal"})


def leaky_relu(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("leaky_relu", "Use LeakyReLU: a small negative slope keeps a gradient flowing through "
                                    "units that would otherwise die.",
                      {"model.activation": "leaky_relu", "model.init": "he_normal"})


def he_init(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    patch: dict[str, Any] = {"model.init": "he_normal"}
    text = "Initialise with He (variance 2/fan_in), which keeps the signal's scale through ReLU layers"
    if ctx.bias_init < 0:
        patch["model.bias_init"] = 0.0
        text += f", and start biases at 0 instead of {ctx.bias_init:g}, which switches units off"
    return Suggestion("he_init", text + ".", patch)


def xavier_init(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("xavier_init", "Initialise with Xavier (variance 2/(fan_in+fan_out)) so pre-activations "
                                     "stay in the responsive range of tanh/sigmoid.",
                      {"model.init": "xavier_normal"})


def batchnorm(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("batchnorm", "Add batch normalization after each hidden layer: it re-centres and "
                                   "re-scales pre-activations at every step, whatever the depth.",
                      {"model.batchnorm": True})


def gradient_clipping(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    value = f.evidence.get("suggested_clip_norm")
    if not isinstance(value, (int, float)) or not value > 0:
        value = t.default_clip_norm
    value = sig(float(value), t.digits)
    return Suggestion("gradient_clipping", f"Clip the global gradient norm at {value:g}, the typical norm "
                                           f"observed before the spikes, so one bad batch cannot throw the "
                                           f"weights away.", {"train.clip_norm": value})


def lower_lr(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    """A lower learning rate, always as a number: below the largest stable one where the curvature sets it;
    for adaptive optimizers (whose step is about ``lr`` per weight whatever the gradient) at most ``adam_lr``;
    otherwise the current one divided by ``lower_lr_factor``."""
    suggested = f.evidence.get("suggested_lr")
    if isinstance(suggested, (int, float)) and 0 < suggested < ctx.lr and "max_stable_lr" in f.evidence:
        lr = sig(float(suggested), t.digits)
        lam = f.evidence.get("reference_lambda_max", f.evidence.get("lambda_max"))
        why = (f"below the largest stable one, {f.evidence['max_stable_lr']:.2g}, set by the curvature "
               f"(λmax = {lam:.3g})")
    elif adaptive(ctx, f, t) and ctx.lr / t.lower_lr_factor > t.adam_lr:
        lr = sig(t.adam_lr, t.digits)
        why = f"the usual rate of {ctx.optimizer}, whose step is about the learning rate per weight"
    else:
        lr = sig(ctx.lr / t.lower_lr_factor, t.digits)
        why = "a tenth of the current one" if t.lower_lr_factor == 10 else \
            f"the current one divided by {t.lower_lr_factor:g}"
    return Suggestion("lower_lr", f"Lower the learning rate from {ctx.lr:g} to {_text(lr)}, {why}.",
                      {"train.lr": lr})


def raise_lr(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    lr = sig(ctx.lr * t.raise_lr_factor, t.digits)
    return Suggestion("raise_lr", f"Raise the learning rate from {ctx.lr:g} to {lr:g}: updates are too small to "
                                  f"make progress.", {"train.lr": lr})


def adam(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("adam", f"Switch to Adam (lr {_text(t.adam_lr)}): per-parameter step sizes adapt to the "
                              f"gradient's scale in each layer.", {"train.optimizer": "adam", "train.lr": t.adam_lr})


def shallower(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    keep = max(t.shallower_min_layers, int(ctx.depth * t.shallower_fraction))
    hidden = list(ctx.hidden[:keep]) if ctx.hidden else [t.default_width] * keep
    return Suggestion("shallower", f"Use {keep} hidden layers instead of {ctx.depth}: fewer layers for the "
                                   f"gradient to shrink through.", {"model.hidden": hidden})


def zero_bias(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("zero_bias", f"Start the biases at 0 instead of {ctx.bias_init:g}: negative biases switch "
                                   f"ReLU units off before they can learn.", {"model.bias_init": 0.0})


def standardize(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("standardize", "Standardise the inputs: subtract each feature's mean and divide by its "
                                     "standard deviation (the training set's), so every feature has a scale near 1.",
                      {"data.standardize": True})


def l2(ctx: Context, f: Finding, t: AdviceThresholds) -> Suggestion:
    return Suggestion("l2", f"Add L2 weight decay ({_text(t.l2)}) so weights cannot grow without bound.",
                      {"train.l2": t.l2})


# -- conditions: (context, finding, thresholds) -> bool -----------------------------------------------------
def saturating(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.activation in SATURATING


def rectified(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.activation in RELU_FAMILY


def _measured_gain_suits(f: Finding) -> bool:
    """The finding measured the hidden layers' gain and it is what their activation needs (an initialisation
    of the right scale is in place, whatever its name: PyTorch loops do not say)."""
    return f.evidence.get("gain_suits") is True


def not_he(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return rectified(ctx, f, t) and ctx.init not in HE_INITS and not _measured_gain_suits(f)


def not_xavier(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return saturating(ctx, f, t) and ctx.init not in XAVIER_INITS and not _measured_gain_suits(f)


def no_batchnorm(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return not ctx.batchnorm


def deep(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.depth > t.deep_layers


def can_be_shallower(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.depth > t.shallower_min_layers


def not_clipping(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return not ctx.clip_norm


def plain_sgd(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.optimizer in STABILITY_BOUND_OPTIMIZERS


def adaptive(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Optimizers that scale each weight's step by its own gradient history (clipping barely changes them)."""
    return ctx.optimizer in ("adam", "adamw", "rmsprop", "adagrad")


def sgd_not_clipping(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return plain_sgd(ctx, f, t) and not_clipping(ctx, f, t)


def dead_relu(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.activation in RECTIFIERS


def too_large(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return f.evidence.get("direction") == "too_large"


def too_small(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return f.evidence.get("direction") == "too_small"


def too_small_not_adam(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return too_small(ctx, f, t) and not_adam(ctx, f, t)


def caused_by(*causes: str) -> Callable[[Context, Finding, AdviceThresholds], bool]:
    """The detector traced the finding to one of ``causes`` (``evidence["cause"]``)."""
    def check(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
        return f.evidence.get("cause") in causes
    return check


def activation_caused_saturating(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Vanishing gradients or saturation the detector traced to a tanh/sigmoid activation."""
    return f.evidence.get("cause") == "activation" and saturating(ctx, f, t)


def init_caused_not_he(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Traced to the initialisation, in a rectified net not initialised with He (or with an unknown one)."""
    return f.evidence.get("cause") == "initialization" and not_he(ctx, f, t)


def init_caused_not_xavier(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Traced to the initialisation, in a tanh/sigmoid net without Xavier init."""
    return f.evidence.get("cause") == "initialization" and not_xavier(ctx, f, t)


def not_he_any_cause(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """A rectified net without He init, whatever the diagnosed cause (a later option)."""
    return f.evidence.get("cause") != "training" and not_he(ctx, f, t)


def depth_growth(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Exploding gradients that grow along depth towards the input: the initialisation's scale is too large."""
    return "log10_grad_rms" in f.evidence


def growth_not_he(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return depth_growth(ctx, f, t) and not_he(ctx, f, t)


def growth_not_xavier(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return depth_growth(ctx, f, t) and not_xavier(ctx, f, t)


def growth_no_batchnorm(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return depth_growth(ctx, f, t) and no_batchnorm(ctx, f, t)


def bias_caused(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """Dead units traced to negative initial biases."""
    return f.evidence.get("cause") == "bias" and ctx.bias_init < 0


def bias_caused_not_he(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return bias_caused(ctx, f, t) and not_he(ctx, f, t)


def unexplained(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    """A stall no gradient finding explains (those carry their own fix)."""
    return not f.evidence.get("explained_by")


def unexplained_not_adam(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return unexplained(ctx, f, t) and not_adam(ctx, f, t)


def not_standardized(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.standardize is not True or ctx.framework != "core"


def init_caused_no_batchnorm(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return f.evidence.get("cause") == "initialization" and no_batchnorm(ctx, f, t)


def always(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return True


def not_adam(ctx: Context, f: Finding, t: AdviceThresholds) -> bool:
    return ctx.optimizer != "adam"


Rule = tuple[str, Callable[[Context, Finding, AdviceThresholds], bool],
             Callable[[Context, Finding, AdviceThresholds], Suggestion]]

#: finding code x condition -> suggestion, most direct fix first (the detector's diagnosed cause decides
#: which that is: the activation, the initialisation, negative biases, the step size or the data)
RULES: list[Rule] = [
    ("vanishing_gradients", activation_caused_saturating, relu),
    ("vanishing_gradients", init_caused_not_he, he_init),
    ("vanishing_gradients", init_caused_not_xavier, xavier_init),
    ("vanishing_gradients", caused_by("training"), lower_lr),
    ("vanishing_gradients", no_batchnorm, batchnorm),
    ("vanishing_gradients", not_he_any_cause, he_init),
    ("vanishing_gradients", deep, shallower),
    ("vanishing_gradients", saturating, relu),
    ("vanishing_gradients", not_adam, adam),
    ("exploding_gradients", sgd_not_clipping, gradient_clipping),
    ("exploding_gradients", always, lower_lr),
    ("exploding_gradients", not_clipping, gradient_clipping),
    ("exploding_gradients", growth_not_he, he_init),
    ("exploding_gradients", growth_not_xavier, xavier_init),
    ("exploding_gradients", growth_no_batchnorm, batchnorm),
    ("nonfinite_values", always, lower_lr),
    ("nonfinite_values", not_clipping, gradient_clipping),
    ("saturated_activations", caused_by("training"), lower_lr),
    ("saturated_activations", init_caused_not_xavier, xavier_init),
    ("saturated_activations", activation_caused_saturating, relu),
    ("saturated_activations", no_batchnorm, batchnorm),
    ("saturated_activations", not_xavier, xavier_init),
    ("saturated_activations", saturating, relu),
    ("dead_units", bias_caused, zero_bias),
    ("dead_units", caused_by("step"), lower_lr),
    ("dead_units", dead_relu, leaky_relu),
    ("dead_units", bias_caused_not_he, he_init),
    ("dead_units", init_caused_not_he, he_init),
    ("dead_units", init_caused_no_batchnorm, batchnorm),
    ("sharpness_above_stability", always, lower_lr),
    ("sharpness_above_stability", plain_sgd, adam),
    ("loss_divergence", always, lower_lr),
    ("loss_divergence", sgd_not_clipping, gradient_clipping),
    ("loss_oscillation", always, lower_lr),
    ("loss_oscillation", not_adam, adam),
    ("loss_plateau", unexplained, raise_lr),
    ("loss_plateau", unexplained_not_adam, adam),
    ("update_ratio", too_large, lower_lr),
    ("update_ratio", too_small, raise_lr),
    ("update_ratio", too_small_not_adam, adam),
    ("unscaled_inputs", not_standardized, standardize),
]

#: what a warning or error gets when no rule of :data:`RULES` applies: the first applicable of these
FALLBACKS: dict[str, list[tuple[Callable[[Context, Finding, AdviceThresholds], bool],
                                Callable[[Context, Finding, AdviceThresholds], Suggestion]]]] = {
    "vanishing_gradients": [(can_be_shallower, shallower), (always, lower_lr)],
    "saturated_activations": [(always, lower_lr)],
    "dead_units": [(always, lower_lr)],
    "loss_plateau": [(always, raise_lr)],
    "unscaled_inputs": [(always, standardize)],
    "update_ratio": [(always, lower_lr)],
}


def torch_hints(t: AdviceThresholds) -> dict[str, str]:
    """What each fix means in a PyTorch loop, where there is no spec for a patch to apply to (with the
    numbers of ``t``)."""
    return {
        "relu": "nn.ReLU() with nn.init.kaiming_normal_ on the weights",
        "leaky_relu": "nn.LeakyReLU(0.01) with nn.init.kaiming_normal_ on the weights",
        "he_init": "nn.init.kaiming_normal_(layer.weight) and zero biases",
        "xavier_init": "nn.init.xavier_normal_(layer.weight)",
        "batchnorm": "nn.BatchNorm1d after each hidden nn.Linear",
        "gradient_clipping": "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) between backward() and "
                             "step()",
        "lower_lr": "set the new lr in optimizer.param_groups (or the optimizer's constructor)",
        "raise_lr": "set the new lr in optimizer.param_groups (or the optimizer's constructor)",
        "adam": f"torch.optim.Adam(model.parameters(), lr={_text(t.adam_lr)})",
        "shallower": "fewer hidden nn.Linear layers",
        "l2": f"weight_decay={_text(t.l2)} in the optimizer",
        "zero_bias": "nn.init.zeros_(layer.bias) on every layer",
        "standardize": "x = (x - mean) / std with the training set's per-feature mean and std (for images, "
                       "torchvision.transforms.Normalize with the per-channel statistics)",
    }


#: :func:`torch_hints` with the default numbers.
TORCH_HINTS: dict[str, str] = torch_hints(AdviceThresholds())


def advise(finding: Finding, ctx: Context, thresholds: AdviceThresholds | None = None) -> list[Suggestion]:
    """Suggestions for ``finding`` in ``ctx``: every applicable rule, in table order, codes unique; their
    numbers come from ``thresholds`` (the defaults when None).

    For loops that are not core's (``ctx.framework != "core"``) the spec patch means nothing: it is dropped
    and the sentence says what to change in code instead (:func:`torch_hints`)."""
    t = thresholds if thresholds is not None else AdviceThresholds()
    out: list[Suggestion] = []
    seen: set[str] = set()
    rules = [(applies, build) for code, applies, build in RULES if code == finding.code]
    for applies, build in rules + (FALLBACKS.get(finding.code, []) if finding.severity != "info" else []):
        if out and (applies, build) not in rules:
            break  # a fallback only when no rule applied
        if not applies(ctx, finding, t):
            continue
        suggestion = build(ctx, finding, t)
        if suggestion.code in seen:
            continue
        seen.add(suggestion.code)
        out.append(for_framework(suggestion, ctx, t))
    return out


def for_framework(suggestion: Suggestion, ctx: Context, t: AdviceThresholds | None = None) -> Suggestion:
    """``suggestion`` as the run's loop can apply it: as is for core's specs; for other loops the spec patch
    means nothing, so it is dropped and the sentence says what to change in code (:func:`torch_hints`)."""
    if ctx.framework == "core":
        return suggestion
    hint = torch_hints(t or AdviceThresholds()).get(suggestion.code) if ctx.framework == "torch" else None
    if hint and f"In PyTorch: {hint}." in suggestion.text:
        return suggestion
    return Suggestion(suggestion.code, suggestion.text + (f" In PyTorch: {hint}." if hint else ""), {})
