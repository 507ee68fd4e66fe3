"""``Trainer``: batch, mini-batch and stochastic gradient descent that emits hook events.

>>> import core, numpy as np
>>> X = np.random.default_rng(0).normal(size=(64, 2)); y = (X[:, 0] > 0).astype(int)
>>> net = core.Sequential([core.Dense(2, 16, init="he_normal"), core.ReLU(), core.Dense(16, 2)], seed=0)
>>> history = core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=16, progress=False).fit(X, y, epochs=3)
>>> len(history["loss"])
3
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

from core.callbacks import CallbackList, RunInfo, StepState, readonly
from core.checkpoint import save_checkpoint
from core.clipping import clip_by_global_norm, clip_by_value
from core.layers import Context
from core.losses import Loss, get_loss
from core.model import Sequential
from core.objective import BatchObjective
from core.optimizers import SGD, Optimizer
from core.progress import progress_bar


class TrainingHistory(dict):
    """Per-epoch lists: ``loss``, ``accuracy`` (classification), ``val_loss``, ``val_accuracy``; plus
    ``steps`` (int) and ``stopped`` (why training ended early, or None)."""


def _check_xy(X: Any, y: Any, n_inputs: int, loss: Loss, n_outputs: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"{what} X must be 2-D (samples, features), got shape {X.shape}")
    if len(X) == 0:
        raise ValueError(f"{what} data is empty")
    if X.shape[1] != n_inputs:
        raise ValueError(f"{what} X has {X.shape[1]} features but the model expects {n_inputs}")
    if len(y) != len(X):
        raise ValueError(f"{what} X has {len(X)} rows but y has {len(y)}")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
        raise ValueError(f"{what} X contains NaN, Inf or non-numbers")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise ValueError(f"{what} y contains NaN or Inf")
    if loss.name in ("cross_entropy", "binary_cross_entropy"):
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(y == np.round(y)):
                raise ValueError(f"{what} y must hold integer class labels for {loss.name}")
            y = y.astype(np.int64)
    loss.check_targets(y, n_outputs)
    return X, y


class Trainer:
    """Fits a :class:`~core.model.Sequential` with an optimizer, emitting hook events to callbacks.

    ``batch_size``: 1 = stochastic GD, ``None`` (or ≥ n) = batch GD, else mini-batch.  ``clip_norm`` clips
    the global gradient norm, ``clip_value`` each element; ``l2`` adds ``l2 * Σ W²`` over weights.
    ``progress``: a tqdm bar (default: only when stderr is a terminal).  ``stop_on_nonfinite``: stop
    cleanly (without applying the step) when the loss or a gradient is NaN/Inf.
    """

    def __init__(self, model: Sequential, loss: str | Loss = "cross_entropy",
                 optimizer: Optimizer | None = None, batch_size: int | None = 32,
                 clip_norm: float | None = None, clip_value: float | None = None, l2: float = 0.0,
                 callbacks: Iterable[Any] = (), shuffle: bool = True, seed: int | None = 0,
                 progress: bool | None = None, stop_on_nonfinite: bool = True) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a core.Sequential, got {type(model).__name__}")
        self.model = model
        self.loss = get_loss(loss) if isinstance(loss, str) else loss
        self.optimizer = optimizer if optimizer is not None else SGD(0.01)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None (full batch), got {batch_size!r}")
        self.batch_size = batch_size
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
        if clip_value is not None and not clip_value > 0:
            raise ValueError(f"clip_value must be positive or None, got {clip_value}")
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.l2 = float(l2)
        self.callbacks = CallbackList(callbacks)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.progress = progress
        self.stop_on_nonfinite = stop_on_nonfinite
        self.step = 0
        self.epoch = 0
        self.spec: Mapping[str, Any] | None = None
        self._ctx = Context(training=True, rng=model.dropout_rng, reuse=True, update_stats=True)
        # gradients live in one vector, like the parameters: one pass for norms, clipping and updates
        self._gflat = np.zeros(model.size, dtype=model.dtype)
        self._grads = model.views(self._gflat)
        self._ro_params = self._ro_grads = self._ro_updates = None
        self._ro_views: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._weights = [k for k in model.parameters() if k.endswith(".weight")]

    # -- one evaluation ------------------------------------------------------------------------------
    def _forward_backward(self, xb: np.ndarray, yb: np.ndarray, record: dict | None,
                          sq_norms: dict | None = None) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        ctx = self._ctx
        ctx.masks = {}
        z = self.model.forward(xb, ctx=ctx, record=record)
        value, g = self.loss(z, yb)
        grads = self.model.backward(g, ctx, grads=self._grads, sq_norms=None if self.l2 else sq_norms)
        if self.l2:
            params = self.model.parameters()
            for k in self._weights:
                w = params[k]
                value += self.l2 * float(np.dot(w.ravel(), w.ravel()))
                grads[k] += (2.0 * self.l2) * w
        return value, z, grads

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss (L2 term included) and gradients keyed like ``model.parameters()``, in training mode, at
        the current parameters; nothing is updated (BatchNorm running statistics included)."""
        X, y = _check_xy(X, y, self.model.n_inputs, self.loss, self.model.n_outputs, "loss_and_grad")
        ctx = Context(training=True, rng=self.model.dropout_rng)
        z = self.model.forward(X.astype(self.model.dtype, copy=False), ctx=ctx)
        value, g = self.loss(z, y)
        grads = self.model.backward(g, ctx)
        if self.l2:
            params = self.model.parameters()
            for k in self._weights:
                value += self.l2 * float(np.sum(params[k].astype(np.float64) ** 2))
                grads[k] = grads[k] + 2.0 * self.l2 * params[k]
        return value, {k: v.copy() for k, v in grads.items()}

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and (for classification) accuracy in eval mode."""
        X, y = _check_xy(X, y, self.model.n_inputs, self.loss, self.model.n_outputs, "evaluate")
        z = self.model.predict(X.astype(self.model.dtype, copy=False))
        value, _ = self.loss(z, y)
        out = {"loss": value}
        if self.loss.name != "mse":
            out["accuracy"] = float(np.mean(self.loss.predictions(z) == y))
        return out

    def objective(self, X: np.ndarray, y: np.ndarray, dropout: bool = False) -> BatchObjective:
        """An :class:`~core.objective.BatchObjective` over ``(X, y)`` (float64, exact HVPs)."""
        return BatchObjective(self.model, self.loss, X, y, l2=self.l2, dropout=dropout)

    # -- the loop --------------------------------------------------------------------------------------
    def _optimizer_name(self) -> str:
        if isinstance(self.optimizer, SGD) and self.optimizer.momentum > 0:
            return "momentum"
        return self.optimizer.name

    def run_info(self, X: np.ndarray, y: np.ndarray, epochs: int) -> RunInfo:
        n = len(X)
        bs = n if self.batch_size is None else min(self.batch_size, n)
        mode = "batch" if bs >= n else ("stochastic" if bs == 1 else "mini-batch")

        def probe(n_samples: int, seed: int) -> BatchObjective:
            idx = np.random.default_rng(seed).permutation(n)[: min(n_samples, n)]
            return self.objective(X[np.sort(idx)], y[np.sort(idx)])

        task = "regression" if self.loss.name == "mse" else "classification"
        return RunInfo(layers=self.model.layer_infos(), loss=self.loss.name, optimizer=self._optimizer_name(),
                       hyperparams=dict(self.optimizer.hyperparams), batch_size=bs, batch_mode=mode, n_train=n,
                       epochs=epochs, steps_per_epoch=math.ceil(n / bs), clip_norm=self.clip_norm,
                       clip_value=self.clip_value, l2=self.l2, dtype=self.model.dtype.name, seed=self.seed,
                       task=task, probe=probe, spec=self.spec)

    def fit(self, X: np.ndarray, y: np.ndarray, epochs: int = 10,
            validation: tuple[np.ndarray, np.ndarray] | None = None,
            checkpoint: str | os.PathLike | None = None) -> TrainingHistory:
        """Train for ``epochs`` more passes over ``(X, y)``; returns the per-epoch history.

        With ``checkpoint``, the state is saved there (atomically) after every epoch and when training stops
        on non-finite values (the bad step is never applied, so that checkpoint is the last finite state);
        :func:`core.checkpoint.load_checkpoint` and another ``fit`` resume exactly.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        model, loss = self.model, self.loss
        X, y = _check_xy(X, y, model.n_inputs, loss, model.n_outputs, "training")
        if validation is not None:
            Xv, yv = _check_xy(validation[0], validation[1], model.n_inputs, loss, model.n_outputs, "validation")
        X = np.ascontiguousarray(X, dtype=model.dtype)
        if np.issubdtype(y.dtype, np.floating):
            y = y.astype(model.dtype)
        run = self.run_info(X, y, epochs)
        n, bs = len(X), run.batch_size
        cbs = self.callbacks
        history = TrainingHistory(loss=[], steps=0, stopped=None)
        classify = loss.name != "mse"
        if classify:
            history["accuracy"] = []
        if validation is not None:
            history["val_loss"] = []
            if classify:
                history["val_accuracy"] = []
        params, pflat = model.parameters(), model.flat()
        # read-only views of persistent storage are made once (the arrays behind them change in place)
        self._ro_params, self._ro_grads, self._ro_updates = readonly(params), readonly(self._grads), None
        bar = progress_bar(run.total_steps, self.progress, "training", "step")
        state: StepState | None = None
        cbs.on_train_begin(run)
        # overflow to Inf/NaN is a training outcome (reported, and stopped on), not a numpy warning
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")
        errstate.__enter__()
        try:
            for epoch in range(epochs):
                order = self.rng.permutation(n) if self.shuffle and bs < n else np.arange(n)
                loss_sum, correct, seen = 0.0, 0, 0
                for start in range(0, n, bs):
                    idx = order[start:start + bs]
                    xb, yb = X[idx], y[idx]
                    wanted = cbs.requests(self.step) if cbs else set()
                    record = {} if "activations" in wanted else None
                    sq_norms = {} if "grad_norms" in wanted and not self.l2 else None
                    value, z, grads = self._forward_backward(xb, yb, record, sq_norms)
                    if classify:
                        correct += int(np.sum(loss.predictions(z) == yb))
                    gflat = self._gflat
                    norm = None
                    if self.clip_norm is not None:
                        with np.errstate(over="ignore", invalid="ignore"):
                            norm = math.sqrt(float(np.dot(gflat, gflat)))
                    # without clipping the norm is left to callbacks: a non-finite gradient makes the next
                    # loss non-finite too, which stops training one step later
                    finite = math.isfinite(value) and (norm is None or math.isfinite(norm))
                    if cbs:
                        state = self._state(epoch, value, len(idx), params, grads, record, xb, yb)
                        if norm is not None:
                            state.extras["grad_norm"] = norm
                        if sq_norms is not None:
                            state.extras["grad_sq_norms"] = sq_norms
                        cbs.on_after_backward(state)
                    if not finite and self.stop_on_nonfinite:
                        history["stopped"] = (f"non-finite {'loss' if not math.isfinite(value) else 'gradient'} "
                                              f"at step {self.step}")
                        break
                    reason = cbs.should_stop() if cbs else None
                    if reason:  # before the update: a callback saw something this step must not apply
                        history["stopped"] = reason
                        break
                    applied, info = {"all": gflat}, {"coef": 1.0}
                    if self.clip_norm is not None:
                        applied, info = clip_by_global_norm(applied, self.clip_norm)
                    if self.clip_value is not None:
                        applied, _ = clip_by_value(applied, self.clip_value)
                    updates = self.optimizer.step({"all": pflat}, applied)
                    loss_sum += value * len(idx)
                    seen += len(idx)
                    if cbs and state is not None:
                        flat_update = updates["all"]
                        if self._ro_updates is None or self._ro_updates[0] is not flat_update:
                            self._ro_updates = (flat_update, readonly(model.views(flat_update)))
                        state.update = self._ro_updates[1]
                        state.clip_coef = float(info["coef"])
                        cbs.on_step_end(state)
                    self.step += 1
                    history["steps"] += 1
                    if bar is not None:
                        bar.update(1)
                        if self.step % 20 == 0:
                            bar.set_postfix(loss=f"{value:.4g}", epoch=epoch, refresh=False)
                    reason = cbs.should_stop() if cbs else None
                    if reason:
                        history["stopped"] = reason
                        break
                if seen:
                    history["loss"].append(loss_sum / seen)
                    if classify:
                        history["accuracy"].append(correct / seen)
                logs = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}
                if validation is not None and seen:
                    ev = self.evaluate(Xv, yv)
                    history["val_loss"].append(ev["loss"])
                    logs["val_loss"] = ev["loss"]
                    if classify:
                        history["val_accuracy"].append(ev["accuracy"])
                        logs["val_accuracy"] = ev["accuracy"]
                cbs.on_epoch_end(epoch, logs)
                if not history["stopped"]:
                    self.epoch += 1
                if checkpoint is not None:
                    save_checkpoint(checkpoint, self)
                if history["stopped"]:
                    break
        except BaseException as exc:
            if bar is not None:
                bar.close()
            cbs.on_exception(exc, state)
            raise
        finally:
            errstate.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        cbs.on_train_end({"history": dict(history), "steps": self.step, "stopped": history["stopped"]})
        return history

    def _state(self, epoch: int, value: float, batch: int, params: dict, grads: dict,
               record: dict | None, xb: np.ndarray, yb: np.ndarray) -> StepState:
        activations = preacts = masks = None
        if record is not None:
            layers, cache = self.model.layers, self._ctx.cache
            activations = self._readonly("activations", record)
            preacts = {l.name: activations[layers[i - 1].name] for i, l in enumerate(layers)
                       if l.activation is not None and i > 0}
            masks = self._readonly("masks", {l.name: cache[l.name]["mask"] for l in layers
                                             if l.activation in ("relu", "leaky_relu")})
        masks_dropout = {k: m.copy() for k, m in self._ctx.masks.items()}
        objective = BatchObjective(self.model, self.loss, xb, yb, l2=self.l2, masks=masks_dropout)
        return StepState(step=self.step, epoch=epoch, loss=value, batch_size=batch, params=self._ro_params,
                         grads=self._ro_grads, lr=self.optimizer.lr, activations=activations,
                         preactivations=preacts, objective=objective, masks=masks)

    def _readonly(self, kind: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Read-only views of ``arrays``.  The hot path's buffers persist across steps, so the view made for
        a buffer is handed out again for as long as the buffer is the same array."""
        out = {}
        for key, arr in arrays.items():
            kept = self._ro_views.get((kind, key))
            if kept is None or kept[0] is not arr:
                kept = self._ro_views[(kind, key)] = (arr, readonly({key: arr})[key])
            out[key] = kept[1]
        return out
