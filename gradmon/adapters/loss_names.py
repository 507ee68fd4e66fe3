"""The name of a loss from the loss value itself (a tensor's autograd node), for loops that never told
gradmon which loss they use: ``F.cross_entropy(...)`` ends in ``NllLossBackward0`` fed by
``LogSoftmaxBackward0``, ``F.mse_loss`` in ``MseLossBackward0``...  Names as core spells them where core has
the loss (``cross_entropy``, ``mse``, ``binary_cross_entropy``), else torch's functional name.  Read by
duck typing (``loss.grad_fn.name()``): no torch import."""

from __future__ import annotations

from typing import Any

#: autograd node name (without the version suffix) -> loss name
NODE_NAMES: dict[str, str] = {
    "MseLossBackward": "mse",
    "BinaryCrossEntropyWithLogitsBackward": "binary_cross_entropy",
    "BinaryCrossEntropyBackward": "binary_cross_entropy",
    "HuberLossBackward": "huber_loss",
    "SmoothL1LossBackward": "smooth_l1_loss",
    "NllLossBackward": "nll_loss",
    "NllLoss2DBackward": "nll_loss",
    "CtcLossBackward": "ctc_loss",
}


def _node_name(node: Any) -> str:
    name = node.name() if node is not None and hasattr(node, "name") else ""
    return name.rstrip("0123456789")


#: nodes that scale a loss by a constant (Lightning divides by the accumulation steps, AMP multiplies by the
#: loss scale): the loss is their first input
SCALINGS = ("DivBackward", "MulBackward")


def loss_name(loss: Any) -> str | None:
    """The loss's name from its autograd node (looking through scaling by a constant), or None when it
    cannot be told (a float, a tensor without gradient, a hand-written loss)."""
    node = getattr(loss, "grad_fn", None)
    name = _node_name(node)
    for _ in range(3):
        if name not in SCALINGS or not getattr(node, "next_functions", ()):
            break
        node = node.next_functions[0][0]
        name = _node_name(node)
    if name in ("NllLossBackward", "NllLoss2DBackward"):  # cross-entropy is log-softmax + NLL
        inputs = [_node_name(n[0]) for n in getattr(node, "next_functions", ())]
        return "cross_entropy" if "LogSoftmaxBackward" in inputs else "nll_loss"
    return NODE_NAMES.get(name)
