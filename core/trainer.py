"""``Trainer``: batch, mini-batch and stochastic gradient descent that emits hook events.

>>> import core, numpy as np
>>> X = np.random.default_rng(0).normal(size=(64, 2)); y = (X[:, 0] > 0).astype(int)
>>> net = core.Sequential([core.Dense(2, 16, init="he_normal"), core.ReLU(), core.Dense(16, 2)], seed=0)
>>> history = core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=16, progress=False).fit(X, y, epochs=3)
>>> len(history["loss"])
3
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

from core import checks
from core.callbacks import CallbackList, RunInfo, StepState, readonly
from core.checkpoint import save_checkpoint
from core.clipping import clip_by_global_norm, clip_by_value, sq_norm_unguarded
from core.layers import Context
from core.losses import LOSSES, Loss, get_loss
from core.model import Sequential
from core.objective import BatchObjective
from core.optimizers import OPTIMIZERS, SGD, Optimizer, get_optimizer
from core.progress import progress_bar, write_line

_NOTHING: frozenset[str] = frozenset()


class TrainingHistory(dict):
    """Per-epoch lists: ``loss``, ``accuracy`` (classification), ``val_loss``, ``val_accuracy``; plus
    ``steps`` (int), ``stopped`` (why training ended early, or None), ``skipped`` (non-finite steps that
    were not applied, with ``stop_on_nonfinite=False``) and ``checkpoint_error`` (the first checkpoint
    write that failed, or None; training goes on without it).

    ``loss`` and ``accuracy`` average the steps applied in the epoch: a skipped step is not among them,
    and an epoch whose every step was skipped records NaN."""


def _loss(loss: Any) -> Loss:
    if isinstance(loss, str):
        return get_loss(loss)
    if isinstance(loss, Loss):
        return loss
    raise TypeError(f"loss must be a name ({', '.join(LOSSES)}) or a core.losses.Loss, got {loss!r}")


def _optimizer(optimizer: Any) -> Optimizer:
    if optimizer is None:
        return SGD(0.01)
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):  # a registry name, with that optimizer's default settings
        return get_optimizer(optimizer)
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an instance such as core.{optimizer.__name__}(lr=...), not the class")
    raise TypeError(f"optimizer must be a core.Optimizer such as core.Adam(lr=1e-3), or a name "
                    f"({', '.join(OPTIMIZERS)}), got {optimizer!r}")


def _check_xy(X: Any, y: Any, n_inputs: int, loss: Loss, n_outputs: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    if X is None or y is None:
        raise ValueError(f"{what} {'X' if X is None else 'y'} is missing: pass inputs X of shape (n, features) and "
                         f"targets y with one entry per row of X")
    X = np.asarray(X)
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError(f"{what} y must have one entry per row of X, got a scalar {y!r}")
    if X.ndim != 2:
        raise ValueError(f"{what} X must be 2-D (samples, features), got shape {X.shape}")
    if len(X) == 0:
        raise ValueError(f"{what} data is empty")
    if X.shape[1] != n_inputs:
        raise ValueError(f"{what} X has {X.shape[1]} features but the model expects {n_inputs}")
    if len(y) != len(X):
        raise ValueError(f"{what} X has {len(X)} rows but y has {len(y)}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{what} X holds complex numbers (dtype {X.dtype}); features must be real: pass "
                         f"np.hstack([X.real, X.imag]) or np.abs(X)")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
        raise ValueError(f"{what} X contains NaN, Inf or non-numbers")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{what} y must hold numbers (class labels or real targets), got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise ValueError(f"{what} y contains NaN or Inf")
    if loss.name in ("cross_entropy", "binary_cross_entropy"):
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(y == np.round(y)):
                raise ValueError(f"{what} y must hold integer class labels for {loss.name}")
            y = y.astype(np.int64)
    try:
        loss.check_targets(y, n_outputs)
    except ValueError as exc:
        raise ValueError(f"{what} y: {exc}") from None
    return X, y


class Trainer:
    """Fits a :class:`~core.model.Sequential` with an optimizer, emitting hook events to callbacks.

    ``loss``: a name (``mse``, ``binary_cross_entropy``, ``cross_entropy``) or a Loss.  ``optimizer``: an
    Optimizer such as ``core.Adam(lr=1e-3)``, or a registry name for its default settings (None: SGD with
    lr 0.01).  ``batch_size``: 1 = stochastic GD, ``None`` (or ≥ n) = batch GD, else mini-batch; with a
    BatchNorm layer every batch has 2 or more examples (a trailing batch of one joins the batch before).
    ``clip_norm`` clips the global gradient norm, ``clip_value`` each element (None: off); ``l2`` adds
    ``l2 * Σ W²`` over weights.  ``progress``: a tqdm bar (default: only when stderr is a terminal).

    A non-finite step is never applied: the loss and the global gradient norm are checked before every
    update.  ``stop_on_nonfinite=True`` (default) stops there, so parameters and checkpoint stay finite;
    ``False`` skips that step (no update, counted in ``history["skipped"]``, left out of the epoch's loss
    and accuracy) and goes on.
    """

    def __init__(self, model: Sequential, loss: str | Loss = "cross_entropy",
                 optimizer: Optimizer | str | None = None, batch_size: int | None = 32,
                 clip_norm: float | None = None, clip_value: float | None = None, l2: float = 0.0,
                 callbacks: Iterable[Any] = (), shuffle: bool = True, seed: int | None = 0,
                 progress: bool | None = None, stop_on_nonfinite: bool = True) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a core.Sequential, got {type(model).__name__}")
        self.model = model
        self.loss = _loss(loss)
        self.optimizer = _optimizer(optimizer)
        batch_size = None if batch_size is None else checks.positive_int("batch_size", batch_size)
        if batch_size == 1 and model.has_batchnorm:
            raise ValueError("batch_size=1 cannot train a model with BatchNorm (the statistics of one example "
                             "are undefined); use batch_size >= 2 or remove the BatchNorm layers")
        self.batch_size = batch_size
        self.clip_norm = checks.optional_positive("clip_norm", clip_norm)
        self.clip_value = checks.optional_positive("clip_value", clip_value)
        self.l2 = checks.nonnegative("l2", l2)
        self.callbacks = CallbackList(callbacks)
        self.shuffle = checks.flag("shuffle", shuffle)
        self.seed = checks.seed("seed", seed)
        self.rng = np.random.default_rng(self.seed)
        if progress is not None:
            checks.flag("progress", progress)
        self.progress = progress
        self.stop_on_nonfinite = checks.flag("stop_on_nonfinite", stop_on_nonfinite)
        self.step = 0
        self.epoch = 0
        self.spec: Mapping[str, Any] | None = None
        # running statistics wait until the step is known to be finite (a skipped step changes nothing)
        self._ctx = Context(training=True, rng=model.dropout_rng, reuse=True, update_stats=True)
        # gradients live in one vector, like the parameters: one pass for norms, clipping and updates
        self._gflat = np.zeros(model.size, dtype=model.dtype)
        self._grads = model.views(self._gflat)
        self._zero_update: np.ndarray | None = None
        self._ro_params = self._ro_grads = self._ro_updates = None
        self._ro_views: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._weights = [k for k in model.parameters() if k.endswith(".weight")]

    # -- one evaluation ------------------------------------------------------------------------------
    def _forward_backward(self, xb: np.ndarray, yb: np.ndarray, record: dict | None,
                          sq_norms: dict | None = None) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        # runs inside fit's np.errstate: the squared norms of a huge float32 gradient overflow quietly
        ctx = self._ctx
        ctx.masks = {}
        ctx.pending_stats.clear()
        z = self.model.forward(xb, ctx=ctx, record=record)
        value, g = self.loss(z, yb)
        grads = self.model.backward(g, ctx, grads=self._grads, sq_norms=None if self.l2 else sq_norms)
        if self.l2:
            params = self.model.parameters()
            for k in self._weights:
                w = params[k]
                value += self.l2 * sq_norm_unguarded(w)  # exact for huge finite weights too
                grads[k] += (2.0 * self.l2) * w
        return value, z, grads

    def _grad_norm(self, sq_norms: Mapping[str, float] | None) -> float:
        """Global L2 norm of this step's gradient: from the per-parameter squared norms the backward pass
        computed when callbacks asked for them, else one dot product over the flat gradient (float32, redone
        in float64 on overflow).  ``inf``/``nan`` exactly when a gradient value is."""
        if sq_norms is not None:
            return math.sqrt(sum(sq_norms.values()))
        return math.sqrt(sq_norm_unguarded(self._gflat))

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss (L2 term included) and gradients keyed like ``model.parameters()``, in training mode, at
        the current parameters; nothing is updated (BatchNorm running statistics included).  Dropout masks
        come from a copy of the training generator, so calling this changes nothing later in training."""
        X, y = _check_xy(X, y, self.model.n_inputs, self.loss, self.model.n_outputs, "loss_and_grad")
        ctx = Context(training=True, rng=copy.deepcopy(self.model.dropout_rng))
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

    def _batch_size(self, n: int) -> int:
        """The batch size of an epoch over ``n`` examples (before a trailing batch of one is merged)."""
        return n if self.batch_size is None else min(self.batch_size, n)

    def batch_bounds(self, n: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each batch of an epoch over ``n`` examples.  With BatchNorm a trailing batch
        of one example joins the batch before it (batch statistics need 2 or more examples)."""
        bs = self._batch_size(n)
        bounds = [(start, min(start + bs, n)) for start in range(0, n, bs)]
        if self.model.has_batchnorm:
            if n < 2:
                raise ValueError(f"a model with BatchNorm needs at least 2 training examples, got {n}")
            if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
                bounds[-2:] = [(bounds[-2][0], n)]
        return bounds

    def run_info(self, X: np.ndarray, y: np.ndarray, epochs: int,
                 bounds: list[tuple[int, int]] | None = None) -> RunInfo:
        """What ``on_train_begin`` receives for ``epochs`` over ``(X, y)``; ``bounds``: the epoch's
        :meth:`batch_bounds` when the caller has them."""
        n = len(X)
        if bounds is None:
            bounds = self.batch_bounds(n)
        bs = self._batch_size(n)
        mode = "batch" if bs >= n else ("stochastic" if bs == 1 else "mini-batch")

        def probe(n_samples: int, seed: int) -> BatchObjective:
            idx = np.random.default_rng(seed).permutation(n)[: min(n_samples, n)]
            return self.objective(X[np.sort(idx)], y[np.sort(idx)])

        task = "regression" if self.loss.name == "mse" else "classification"
        return RunInfo(layers=self.model.layer_infos(), loss=self.loss.name, optimizer=self._optimizer_name(),
                       hyperparams=dict(self.optimizer.hyperparams), batch_size=bs, batch_mode=mode, n_train=n,
                       epochs=epochs, steps_per_epoch=len(bounds), clip_norm=self.clip_norm,
                       clip_value=self.clip_value, l2=self.l2, dtype=self.model.dtype.name, seed=self.seed,
                       task=task, probe=probe, spec=self.spec)

    def fit(self, X: np.ndarray, y: np.ndarray, epochs: int = 10,
            validation: tuple[np.ndarray, np.ndarray] | None = None,
            checkpoint: str | os.PathLike | None = None) -> TrainingHistory:
        """Train for ``epochs`` more passes over ``X`` (``(n, features)``) and ``y`` (``(n,)`` class labels
        or ``(n, k)`` targets); returns the per-epoch history.  ``validation`` is a pair ``(X_val, y_val)``.

        With ``checkpoint``, the state is saved there (atomically) after every epoch and when training stops
        on non-finite values (the bad step is never applied, so that checkpoint is the last finite state);
        :func:`core.checkpoint.load_checkpoint` and another ``fit`` resume exactly.  A checkpoint that cannot
        be written (disk full) does not end training: it is reported once on stderr and in
        ``history["checkpoint_error"]``.  An exception or Ctrl-C anywhere from ``on_train_begin`` to
        ``on_train_end`` reaches the callbacks' ``on_exception`` before it propagates.
        """
        epochs = checks.positive_int("epochs", epochs)
        model, loss = self.model, self.loss
        X, y = _check_xy(X, y, model.n_inputs, loss, model.n_outputs, "training")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                got = f"a {type(validation).__name__} of {len(validation)}" if isinstance(validation, (tuple, list)) \
                    else type(validation).__name__
                raise ValueError(f"validation must be a pair (X_val, y_val), got {got}")
            Xv, yv = _check_xy(validation[0], validation[1], model.n_inputs, loss, model.n_outputs, "validation")
        X = np.ascontiguousarray(X, dtype=model.dtype)
        if np.issubdtype(y.dtype, np.floating):
            y = y.astype(model.dtype)
        n = len(X)
        bounds = self.batch_bounds(n)
        run = self.run_info(X, y, epochs, bounds)
        cbs = self.callbacks
        # hooks nobody overrides cost nothing per step: no StepState unless a callback watches steps
        per_step = cbs.wants("on_after_backward") or cbs.wants("on_step_end")
        asks = cbs.wants("requests")
        may_stop = cbs.wants("should_stop")
        history = TrainingHistory(loss=[], steps=0, stopped=None, skipped=0, checkpoint_error=None)
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
        try:
            cbs.on_train_begin(run)
            # overflow to Inf/NaN is a training outcome (reported, and stopped on), not a numpy warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                for epoch in range(epochs):
                    order = self.rng.permutation(n) if self.shuffle and len(bounds) > 1 else np.arange(n)
                    loss_sum, correct, seen = 0.0, 0, 0  # over the applied steps
                    first_step = self.step
                    for start, stop in bounds:
                        idx = order[start:stop]
                        xb, yb = X[idx], y[idx]
                        wanted = cbs.requests(self.step) if asks else _NOTHING
                        record = {} if "activations" in wanted else None
                        sq_norms = {} if "grad_norms" in wanted and not self.l2 else None
                        value, z, grads = self._forward_backward(xb, yb, record, sq_norms)
                        # checked before any update: a non-finite step is never applied
                        norm = self._grad_norm(sq_norms)
                        finite = math.isfinite(value) and math.isfinite(norm)
                        if per_step:
                            state = self._state(epoch, value, len(idx), params, grads, record, xb, yb)
                            state.extras["grad_norm"] = norm
                            if sq_norms is not None:
                                state.extras["grad_sq_norms"] = sq_norms
                            cbs.on_after_backward(state)
                        if not finite and self.stop_on_nonfinite:
                            what = "loss" if not math.isfinite(value) else "gradient"
                            history["stopped"] = f"non-finite {what} at step {self.step}"
                            break
                        reason = cbs.should_stop() if may_stop else None
                        if reason:  # before the update: a callback saw something this step must not apply
                            history["stopped"] = reason
                            break
                        info = {"coef": 1.0}
                        if finite:
                            self._ctx.commit_stats()
                            applied = {"all": self._gflat}
                            if self.clip_norm is not None:
                                applied, info = clip_by_global_norm(applied, self.clip_norm, norm=norm)
                            if self.clip_value is not None:
                                applied, _ = clip_by_value(applied, self.clip_value)
                            flat_update = self.optimizer.step({"all": pflat}, applied)["all"]
                            if classify:
                                correct += int(np.sum(loss.predictions(z) == yb))
                            loss_sum += value * len(idx)
                            seen += len(idx)
                        else:  # stop_on_nonfinite=False: skip the step, as a loss scaler would
                            flat_update = self._zeros()
                            history["skipped"] += 1
                        if per_step:
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
                        reason = cbs.should_stop() if may_stop else None
                        if reason:
                            history["stopped"] = reason
                            break
                    ran = self.step > first_step  # at least one step of this epoch ran (applied or skipped)
                    if ran:
                        history["loss"].append(loss_sum / seen if seen else math.nan)
                        if classify:
                            history["accuracy"].append(correct / seen if seen else math.nan)
                    logs = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}
                    if validation is not None and ran:
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
                        self._checkpoint(checkpoint, history)
                    if history["stopped"]:
                        break
            if bar is not None:
                bar.close()
                bar = None
            cbs.on_train_end({"history": dict(history), "steps": self.step, "stopped": history["stopped"]})
        except BaseException as exc:
            if bar is not None:
                bar.close()
            cbs.on_exception(exc, state)
            raise
        return history

    def _zeros(self) -> np.ndarray:
        """The update of a skipped step: zeros shaped like the flat parameters (allocated once)."""
        if self._zero_update is None:
            self._zero_update = np.zeros(self.model.size, dtype=self.model.dtype)
        return self._zero_update

    def _checkpoint(self, path: str | os.PathLike, history: TrainingHistory) -> None:
        """Save a checkpoint; a write that fails (disk full, unwritable directory) is reported once, on
        stderr and in ``history["checkpoint_error"]``, and training goes on."""
        try:
            save_checkpoint(path, self)
        except OSError as exc:
            if history["checkpoint_error"] is None:
                history["checkpoint_error"] = f"{os.fspath(path)}: {exc}"
                write_line(f"core: could not write the checkpoint {os.fspath(path)} ({exc}); "
                           f"training goes on without it")

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
