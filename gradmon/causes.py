"""Root causes: which findings explain which, so that a run has one cause and one fix, not a list of symptoms.

:func:`link` marks every finding that another one explains with ``evidence["caused_by"] = {"code", "layer"}``
(a *consequence*), gives each explaining finding (a *root*) ``evidence["consequences"]``, gives every
consequence its root's suggestions (a symptom is cured by curing its cause: its own advice could contradict
the cause, a larger step for a stall that vanishing gradients explain).  A root is as grave as the worst of
what it explains (:func:`gradmon.diagnosis.severity`); its own severity is left as its detector judged it.  :mod:`gradmon.diagnosis` reads the links (the primary root and its first fix) for every
presentation.

The links follow how training fails, upstream first:

1. **Data** — ``unscaled_inputs`` explains the instabilities, stalls and unit failures it makes likely (but not
   a vanishing gradient whose cause is the network's activation or initialisation).
2. **Step size** — the instabilities are one event seen several ways (a sharp curvature, a loss that blew up
   or climbs, exploding or non-finite gradients, an oscillating loss, updates that rewrite the weights).  Its
   root is, in this order: the measured curvature above ``2/lr`` (it gives the stable learning rate), a loss
   that stays above its start or never recovered from a blow-up (a lower learning rate, whatever the gradient
   norms did), exploding gradients (clipping at the typical norm), a rising loss, non-finite values, an
   oscillation, too-large updates.  It explains the starved units and gradients that came with it: dead units
   and saturation the steps caused, and vanishing gradients that appeared after the blow-up.
3. **The network** — negative initial biases explain the vanishing gradients and stall they cause; saturation
   explains the vanishing gradients of the same activation; a vanishing gradient (a forward collapse, the
   initialisation) explains the dead units that collapse switched off.
4. **Stalls** — a loss plateau and frozen-looking layers are explained by the root found above, when there is
   one (they are roots themselves, with a larger step as the fix, only when nothing explains them).
"""

from __future__ import annotations

from typing import Any, Sequence

from gradmon.diagnosis import name, root_rank, severity
from gradmon.findings import Finding
from gradmon.vocabulary import severity_rank

#: the step-size family: one event seen as curvature, loss, gradient norms or update sizes
INSTABILITY: tuple[str, ...] = ("sharpness_above_stability", "loss_divergence", "exploding_gradients",
                                "nonfinite_values", "loss_oscillation")
#: symptoms that starve layers of gradient
STARVED: tuple[str, ...] = ("vanishing_gradients", "saturated_activations", "dead_units")
#: causes (``evidence["cause"]``) that a detector traced to the steps of training, not to the network
STEP_CAUSES: tuple[str, ...] = ("step", "training")

_LINK_KEYS = ("caused_by", "consequences")


def _active(f: Finding) -> bool:
    return severity_rank(f.severity) >= 1


def _cause(f: Finding) -> Any:
    return f.evidence.get("cause")


def _event_step(findings: Sequence[Finding]) -> int:
    """The step the instability showed first: the earliest of the findings' first steps and of the steps
    their evidence dates (a loss or gradient peak, a curvature measurement, the first NaN)."""
    steps = []
    for f in findings:
        steps.append(int(f.first_step))
        for key in ("peak_step", "measured_at", "step"):
            value = f.evidence.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                steps.append(int(value))
    return min(steps) if steps else 0


def _instability_root(family: list[Finding]) -> Finding | None:
    """The finding that best names the step-size problem (see the module docstring for the order)."""
    def pick(code: str, test: Any = None) -> Finding | None:
        found = [f for f in family if f.code == code and (test is None or test(f))]
        return min(found, key=lambda f: (-severity_rank(f.severity), f.first_step)) if found else None

    sharp = pick("sharpness_above_stability")
    if sharp is not None and (_active(sharp) or any(_active(f) for f in family if f is not sharp)):
        return sharp
    for code, test in (("loss_divergence", _stays_up),
                       ("exploding_gradients", None), ("loss_divergence", None), ("nonfinite_values", None),
                       ("loss_oscillation", _active), ("update_ratio", None)):
        found = pick(code, test)
        if found is not None and _active(found):
            return found
    return None


def _stays_up(f: Finding) -> bool:
    """A divergence whose loss stays above its start (or never recovered from a blow-up): its lower learning
    rate is the fix, whatever the gradient norms did."""
    return f.evidence.get("pattern") in ("stuck", "unrecovered") or f.evidence.get("stays_up") is True


def _explains(root: Finding, f: Finding) -> None:
    f.evidence["caused_by"] = {"code": root.code, "layer": root.layer}


def link(findings: Sequence[Finding]) -> list[Finding]:
    """Link ``findings`` in place (see the module docstring) and return the roots that explain others."""
    for f in findings:
        for key in _LINK_KEYS:
            f.evidence.pop(key, None)
    linked: set[int] = set()

    def explain(root: Finding, f: Finding) -> None:
        if f is root or id(f) in linked:
            return
        _explains(root, f)
        linked.add(id(f))

    free = lambda: [f for f in findings if id(f) not in linked]  # noqa: E731

    # 1. the data
    data = next((f for f in findings if f.code == "unscaled_inputs" and _active(f)), None)
    if data is not None:
        for f in free():
            if f.code in INSTABILITY or f.code in ("update_ratio", "loss_plateau", "dead_units",
                                                   "saturated_activations") or \
                    (f.code == "vanishing_gradients" and _cause(f) in (*STEP_CAUSES, "unknown")):
                explain(data, f)

    # 2. the step size
    family = [f for f in free() if f.code in INSTABILITY or
              (f.code == "update_ratio" and f.evidence.get("direction") == "too_large")]
    step_root = _instability_root(family)
    if step_root is not None:
        for f in family:
            explain(step_root, f)
        blowup = [f for f in family if _active(f)] or [step_root]
        since = _event_step(blowup)
        for f in free():
            if f.code not in STARVED:
                continue
            if _cause(f) in STEP_CAUSES or (_cause(f) != "activation" and f.first_step >= since):
                explain(step_root, f)

    # 3. the network
    biased = [f for f in free() if f.code == "dead_units" and _cause(f) == "bias" and _active(f)]
    if biased:
        first = min(biased, key=lambda f: (-severity_rank(f.severity), f.first_step))
        for f in free():
            if f.code == "vanishing_gradients" or (f.code == "dead_units" and _cause(f) != "bias"):
                explain(first, f)
    # (saturation explains the vanishing gradient of its activation, even when the steps saturated it)
    saturated = [f for f in findings if f.code == "saturated_activations" and _active(f)]
    if saturated:
        first = min(saturated, key=lambda f: (id(f) in linked, -severity_rank(f.severity), f.first_step))
        for f in free():
            if f.code == "vanishing_gradients" and _cause(f) == "activation":
                explain(first, f)
    vanishing = [f for f in free() if f.code == "vanishing_gradients" and _active(f)]
    if vanishing:
        first = min(vanishing, key=lambda f: (-severity_rank(f.severity), f.first_step))
        if _cause(first) in ("initialization", "depth", "unknown") or first.evidence.get("direction") == "forward":
            for f in free():
                if f.code == "dead_units" and _cause(f) != "bias":
                    explain(first, f)

    # 4. stalls: explained by the root above, when there is one
    roots = [f for f in free() if severity_rank(severity(f, findings)) >= 1
             and f.code not in ("loss_plateau", "update_ratio")]
    if roots:
        main = min(roots, key=lambda f: root_rank(f, findings))
        for f in free():
            if f.code == "loss_plateau" or (f.code == "update_ratio" and f.evidence.get("direction") == "too_small"):
                explain(main, f)

    # the roots: what they explain, their severity, and their first fix first among their consequences
    by_key = {(f.code, f.layer): f for f in findings}
    explained: dict[int, list[Finding]] = {}
    for f in findings:
        link_ = f.evidence.get("caused_by")
        if link_:
            root = by_key.get((link_["code"], link_["layer"]))
            if root is not None:
                explained.setdefault(id(root), []).append(f)
    out = []
    for root in findings:
        children = explained.get(id(root))
        if not children:
            continue
        out.append(root)
        root.evidence["consequences"] = [name(f.code, f.layer) for f in children]
    for f in findings:
        root = _root_of(f, by_key)
        if root is not None and root.suggestions:
            f.suggestions = list(root.suggestions)  # a symptom is cured by curing its cause
    return out


def _root_of(f: Finding, by_key: dict) -> Finding | None:
    """The finding at the top of ``f``'s chain of causes (None for a root)."""
    seen = set()
    root = None
    while True:
        link_ = f.evidence.get("caused_by")
        if not link_ or id(f) in seen:
            return root
        seen.add(id(f))
        nxt = by_key.get((link_["code"], link_["layer"]))
        if nxt is None:
            return root
        root = f = nxt
