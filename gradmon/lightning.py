"""PyTorch Lightning: :class:`GradmonCallback` watches a ``Trainer.fit`` (optional extra:
``pip install "gradmon[lightning]"``).

>>> import lightning.pytorch as pl                                               # doctest: +SKIP
>>> from gradmon.lightning import GradmonCallback
>>> trainer = pl.Trainer(max_epochs=5, callbacks=[GradmonCallback()])           # doctest: +SKIP
>>> trainer.fit(model, train_loader, val_loader)                                 # doctest: +SKIP
>>> trainer.callbacks[0].report.status                                           # doctest: +SKIP
'healthy'

How it reads Lightning's loop (:mod:`gradmon.adapters.torch` does the measuring):

- **Where it writes**: ``<trainer.log_dir>/gradmon`` (``lightning_logs/version_N/gradmon`` with the default
  TensorBoard logger: one more run beside Lightning's own in the same TensorBoard), or ``logdir=``.
- **Steps**: ``on_before_optimizer_step`` is after ``backward()`` (and Lightning's gradient accumulation)
  and before the update: the watcher measures the step there, so it works with automatic optimization,
  where the backward pass runs inside ``optimizer.step(closure)``, and with gradient clipping configured in
  the Trainer (norms are read before it).  The learning rate comes from the optimizer at every step.
- **Loss**: the ``loss`` that ``training_step`` returns (``on_train_batch_end``; its name is read from its
  autograd graph in ``on_before_backward``); the batch's targets are the second item of a ``(x, y)`` batch.  **Validation metrics**: the logged metrics whose names start with
  ``val`` (``self.log("val_loss", ...)``), at the end of each validation epoch (not the sanity check).
- **Data-parallel** (``strategy="ddp"`` or ``"ddp_spawn"``, CPU or GPU): every rank measures; at the end of
  ``fit`` rank 0 gathers every rank's report and writes the rank-averaged TensorBoard run and the report
  (see :mod:`gradmon.adapters.distributed`).
- **Stopping**: ``stop_on="error"`` sets ``trainer.should_stop`` when NaN/Inf appears or an error finding
  opens (any rank; decided together, so every rank stops at the same step).

``callback.report`` is the :class:`gradmon.HealthReport` after ``fit`` (``callback.watcher`` while it runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("gradmon.lightning needs PyTorch Lightning: pip install \"gradmon[lightning]\" "
                          "(install the CPU torch wheel first: pip install torch --index-url "
                          "https://download.pytorch.org/whl/cpu)") from exc

from gradmon.adapters.loss_names import loss_name
from gradmon.findings import HealthReport
from gradmon.vocabulary import SEVERITIES


class GradmonCallback(pl.Callback):
    """Monitors training health during ``Trainer.fit``.

    Parameters
    ----------
    logdir: where TensorBoard events and ``report.json``/``report.html`` go (default:
        ``<trainer.log_dir>/gradmon``; rank 0 writes).
    loss_fn: ``loss_fn(model(x), y)``; with it, curvature is measured on the last training batch.
    stop_on: ``"error"`` (or ``"warning"``) stops training when such a finding opens or NaN/Inf appears;
        None (default) only reports.
    monitor_options: passed to :class:`gradmon.monitor.Monitor` (``every``, ``curvature_every``,
        ``tensorboard_every``, ``console``...).
    """

    def __init__(self, logdir: str | os.PathLike | None = None, *, loss_fn: Callable | None = None,
                 stop_on: str | None = None, **monitor_options: Any) -> None:
        if stop_on is not None and stop_on not in SEVERITIES:
            raise ValueError(f"GradmonCallback(stop_on={stop_on!r}): use None or one of {', '.join(SEVERITIES)}")
        self.logdir = Path(logdir) if logdir is not None else None
        self.loss_fn = loss_fn
        self.stop_on = stop_on
        self.monitor_options = dict(monitor_options)
        self.watcher: Any = None
        self.report: HealthReport | None = None
        self.stopped: str | None = None

    @property
    def state_key(self) -> str:
        return f"GradmonCallback[logdir={self.logdir}]"

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        import gradmon.torch

        logdir = self.logdir or Path(trainer.log_dir or trainer.default_root_dir) / "gradmon"  # (collective)
        self.logdir = Path(logdir)
        options = {"console": trainer.is_global_zero, **self.monitor_options}
        if self.loss_fn is None:
            options.setdefault("curvature_every", 0)
        steps = trainer.estimated_stepping_batches
        self.watcher = gradmon.torch.watch(pl_module, logdir=self.logdir, loss_fn=self.loss_fn,
                                           name=type(pl_module).__name__,
                                           expected_steps=int(steps) if steps != float("inf") else 0, **options)
        self.report = None

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: Any) -> None:
        """The loss still has its autograd graph here: its name goes into the report (once)."""
        if self.watcher is not None and "loss" not in self.watcher.monitor.facts:
            self.watcher.monitor.describe(loss=loss_name(loss))

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        if self.watcher is not None:
            self.watcher.step(lr=float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.watcher is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            self.watcher.log_loss(loss, target=target)
        if self.stop_on is not None:
            reason = self.watcher.monitor.stop_reason(self.stop_on)
            if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
                self.stopped = reason or "another rank's monitor asked to stop"
                trainer.should_stop = True

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.watcher is None or trainer.sanity_checking:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith("val") and getattr(value, "numel", lambda: 1)() == 1}
        if metrics:
            self.watcher.log_metrics(**metrics)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Every rank closes (a collective under DDP); rank 0 writes the report and the TensorBoard run."""
        if self.watcher is None:
            return
        self.watcher.close()
        self.report = self.watcher.monitor.report()
        self.watcher = None

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                     exception: BaseException) -> None:
        """An interrupted or failed fit still leaves its partial report (``ended``: interrupted / exception)."""
        if self.watcher is None:
            return
        watcher, self.watcher = self.watcher, None
        watcher.__exit__(type(exception), exception, exception.__traceback__)
        self.report = watcher.monitor.report()
