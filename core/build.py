"""Building a run from a resolved spec: the data, the model, the trainer and the number of epochs."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from core.spec import MOMENTUM_OPTIMIZERS, SpecError, check_memory, check_steps, resolved_task, validate


@dataclass
class Run:
    """What a spec builds: the resolved spec (concrete loss), data, model, trainer and epochs."""

    spec: dict[str, Any]
    data: Any
    model: Any
    trainer: Any
    epochs: int


def build(spec: Mapping[str, Any], callbacks: Sequence[Any] = (), progress: bool | None = None) -> Run:
    """Data, model and trainer for a resolved spec (see :func:`load_spec`)."""
    import core
    from core.data import load_dataset

    spec = validate(copy.deepcopy(dict(spec)))
    d, m, t = spec["data"], spec["model"], spec["train"]
    try:  # the task validate checked against train.loss; a file's targets decide only when nothing says
        data = load_dataset(d["name"], d["path"], n_samples=d["n_samples"], noise=d["noise"],
                            test_fraction=d["test_fraction"], seed=spec["seed"], task=resolved_task(d, t),
                            n_classes=d["n_classes"], standardize=d["standardize"])
    except ValueError as exc:
        raise SpecError(f"data: {exc}") from None
    if d["path"] is not None:
        check_memory(spec, len(data.X_train) + len(data.X_test), data.n_features, data.n_outputs)
        check_steps(spec, len(data.X_train))
    spec["data"]["task"] = data.task
    loss = t["loss"]
    if loss == "auto":
        loss = "cross_entropy" if data.task == "classification" else "mse"
    if loss == "binary_cross_entropy" and data.n_classes != 2:
        raise SpecError(f"train.loss: binary_cross_entropy needs 2 classes, {data.name} has {data.n_classes}")
    spec["train"]["loss"] = loss
    n_out = 1 if loss == "binary_cross_entropy" else data.n_outputs
    layers: list[Any] = []
    width = data.n_features
    dense_kw = {"init": m["init"], "std": m["init_std"], "limit": m["init_limit"]}
    for h in m["hidden"]:
        layers.append(core.Dense(width, h, bias_init=m["bias_init"], **dense_kw))
        if m["batchnorm"]:
            layers.append(core.BatchNorm(h))
        act_kw = {"alpha": m["leaky_alpha"]} if m["activation"] == "leaky_relu" else {}
        layers.append(core.get_activation(m["activation"], **act_kw))
        if m["dropout"] > 0:
            layers.append(core.Dropout(m["dropout"]))
        width = h
    layers.append(core.Dense(width, n_out, **dense_kw))
    model = core.Sequential(layers, seed=spec["seed"], dtype="float32")
    opt_kw: dict[str, Any] = {"lr": t["lr"]}
    if t["optimizer"] in MOMENTUM_OPTIMIZERS:
        opt_kw.update(momentum=t["momentum"] or 0.0, nesterov=t["nesterov"])
    optimizer = core.get_optimizer(t["optimizer"], **opt_kw)
    trainer = core.Trainer(model, loss=loss, optimizer=optimizer,
                           batch_size=None if t["batch_size"] == "full" else t["batch_size"],
                           clip_norm=t["clip_norm"] or None, clip_value=t["clip_value"] or None, l2=t["l2"],
                           callbacks=callbacks, seed=spec["seed"], progress=progress)
    trainer.spec = spec
    return Run(spec=spec, data=data, model=model, trainer=trainer, epochs=t["epochs"])
