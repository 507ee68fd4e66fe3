"""Hugging Face ``transformers.Trainer``: :class:`GradmonCallback` watches ``trainer.train()`` (optional
extra: ``pip install "gradmon[transformers]"``).

>>> from transformers import Trainer                                                   # doctest: +SKIP
>>> from gradmon.huggingface import GradmonCallback
>>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[GradmonCallback()])  # doctest: +SKIP
>>> trainer.train()                                                                    # doctest: +SKIP

How it reads the Trainer's loop (:mod:`gradmon.adapters.torch` does the measuring):

- **Where it writes**: ``<args.output_dir>/gradmon`` (TensorBoard events, ``report.json``, ``report.html``),
  or ``logdir=``.
- **Steps**: ``on_pre_optimizer_step`` comes after ``backward()`` (all gradient-accumulation micro-batches)
  and the Trainer's gradient clipping, before the update: the watcher measures the step there; gradient
  norms are read at the end of each backward pass, so they are the norms before clipping (the ones the
  Trainer logs as ``grad_norm``).  The learning rate comes from the optimizer.
- **Loss**: the models' outputs carry ``loss`` when the batch has labels; a forward hook on the model keeps
  the training forward passes' losses (their mean over the micro-batches of a step is the step's loss) and
  the labels (the batch size).  **Validation metrics**: ``on_evaluate``'s ``eval_*`` metrics
  (``eval_loss`` -> ``val_loss``, ``eval_accuracy`` -> ``accuracy``, others ``val_<name>``).
- **Stopping**: ``stop_on="error"`` sets ``control.should_training_stop`` when NaN/Inf appears or an error
  finding opens.

``callback.report`` is the :class:`gradmon.HealthReport` after training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError("gradmon.huggingface needs transformers: pip install \"gradmon[transformers]\" "
                      "(install the CPU torch wheel first: pip install torch --index-url "
                      "https://download.pytorch.org/whl/cpu)") from exc

from gradmon.adapters.loss_names import loss_name
from gradmon.findings import HealthReport
from gradmon.vocabulary import SEVERITIES


class GradmonCallback(TrainerCallback):
    """Monitors training health during ``transformers.Trainer.train()``.

    Parameters
    ----------
    logdir: where TensorBoard events and the report go (default ``<args.output_dir>/gradmon``).
    stop_on: ``"error"`` (or ``"warning"``) stops training when such a finding opens or NaN/Inf appears;
        None (default) only reports.
    monitor_options: passed to :class:`gradmon.monitor.Monitor` (``every``, ``curvature_every``,
        ``tensorboard_every``, ``console``...).  Curvature is off: the Trainer's loss is computed inside
        the model, so there is no ``loss_fn`` to re-evaluate.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, *, stop_on: str | None = None,
                 **monitor_options: Any) -> None:
        if stop_on is not None and stop_on not in SEVERITIES:
            raise ValueError(f"GradmonCallback(stop_on={stop_on!r}): use None or one of {', '.join(SEVERITIES)}")
        self.logdir = Path(logdir) if logdir is not None else None
        self.stop_on = stop_on
        self.monitor_options = dict(monitor_options)
        self.watcher: Any = None
        self.report: HealthReport | None = None
        self.stopped: str | None = None
        self._losses: list[float] = []
        self._handle: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import gradmon.torch

        self.logdir = self.logdir or Path(args.output_dir) / "gradmon"
        options = {"console": state.is_world_process_zero, "curvature_every": 0, **self.monitor_options}
        self.watcher = gradmon.torch.watch(model, logdir=self.logdir, name=type(model).__name__,
                                           expected_steps=int(state.max_steps or 0), **options)
        self._handle = model.register_forward_hook(self._forward, with_kwargs=True)
        self._losses = []
        self.report = None

    def _forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """A training forward pass: keep its loss (and tell the report the loss's name and the batch size)."""
        import torch

        if not (module.training and torch.is_grad_enabled()) or self.watcher is None:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is None:
            return
        if "loss" not in self.watcher.monitor.facts:
            labels = kwargs.get("labels")
            self.watcher.monitor.describe(loss=loss_name(loss) or "model loss",
                                          batch_size=len(labels) if labels is not None and labels.dim() else None)
        self._losses.append(float(loss.detach()))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        if self.watcher is None:
            return
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None
        self.watcher.step(lr=lr)
        if self._losses:
            self.watcher.log_loss(sum(self._losses) / len(self._losses))
            self._losses = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is None or self.stop_on is None:
            return
        reason = self.watcher.monitor.stop_reason(self.stop_on)
        if reason is not None:
            self.stopped = reason
            control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if self.watcher is None or not metrics:
            return
        renamed = {"eval_loss": "val_loss", "eval_accuracy": "accuracy"}
        values = {renamed.get(k, "val_" + k[len("eval_"):]): float(v) for k, v in metrics.items()
                  if k.startswith("eval_") and isinstance(v, (int, float)) and "runtime" not in k
                  and "per_second" not in k}
        if values:
            self.watcher.log_metrics(**values)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is None:
            return
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.watcher.close()
        self.report = self.watcher.monitor.report()
        self.watcher = None
