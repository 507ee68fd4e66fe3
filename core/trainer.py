"""``Trainer``: batch, mini-batch and stochastic gradient descent that emits hook events.

(A little over 450 lines: the loop, its epoch and step functions and the hook events they emit, together.)

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
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from core import checks
from core.callbacks import CallbackList, RunInfo, StepState, readonly
from core.checkpoint import save_checkpoint
from core.clipping import clip_by_global_norm, clip_by_value, sq_norm_unguarded
from core.layers import Context
from core.losses import Loss, as_loss
from core.model import Sequential
from core.objective import BatchObjective
from core.optimizers import SGD, Optimizer, as_optimizer
from core.progress import progress_bar, write_line
from core.regularization import add_l2_gradient, l2_penalty, weight_keys

_NOTHING: frozenset[str] = frozenset()


class TrainingHistory(dict):
    """Per-epoch lists: ``loss``, ``accuracy`` (classification), ``val_loss``, ``val_accuracy``; plus
    ``steps`` (int), ``stopped`` (why training ended early, or None), ``skipped`` (non-finite steps that
    were not applied, with ``stop_on_nonfinite=False``) and ``checkpoint_error`` (the first checkpoint
    write that failed, or None; training goes on without it).

    ``loss`` and ``accuracy`` average the steps applied in the epoch: a skipped step is not among them,
    and an epoch whose every step was skipped records NaN."""


@dataclass
class _Fit:
    """One call of :meth:`Trainer.fit`: its checked data, batches, history and the callbacks' needs."""

    epochs: int
    X: np.ndarray
    y: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None
    bounds: list[tuple[int, int]]  # (start, stop) of each batch of an epoch
    run: RunInfo
    history: TrainingHistory
    classify: bool
    per_step: bool  # a callback watches steps: a StepState is built for each
    asks: bool  # a callback overrides requests()
    may_stop: bool  # a callback overrides should_stop()
    bar: Any = None  # the tqdm bar, or None
    state: StepState | None = None  # the last step's, for on_exception

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class _Tally:
    """Loss and correct predictions summed over the steps applied in one epoch (skipped steps are not)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, value: float, batch: int, correct: int) -> None:
        self.loss_sum += value * batch
        self.correct += correct
        self.seen += batch


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
        self.loss = as_loss(loss)
        self.optimizer = as_optimizer(optimizer)
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
        # squared norm of each gradient, in parameters() order, written by the backward pass when asked
        self._sq = np.zeros(len(model.parameters()), dtype=np.float64)
        self._ro_sq = readonly({"sq": self._sq})["sq"]
        self._alive: dict[str, np.ndarray] = {}  # rectifier units that fired, filled by the forward pass
        self._zero_update: np.ndarray | None = None
        self._ro_params = self._ro_grads = self._ro_updates = None
        self._ro_views: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._weights = weight_keys(model.parameters())  # the keys the L2 penalty covers
        self._weight_slots = [(i, k) for i, k in enumerate(model.parameters()) if k in self._weights]

    # -- one evaluation ------------------------------------------------------------------------------
    def _forward_backward(self, xb: np.ndarray, yb: np.ndarray, record: dict | None,
                          norms: bool) -> tuple[float, np.ndarray]:
        """Loss (L2 term included) and network output ``(batch, n_outputs)`` of one training batch; the
        gradient goes to the trainer's storage (``self._grads``).  ``record`` receives every layer's output
        and ``self._alive`` the rectifier units that fired (when ``record`` is given); with ``norms`` the
        squared norm of each gradient goes to ``self._sq``.  Runs inside fit's ``np.errstate``: the squared
        norms of a huge float32 gradient overflow quietly and are redone in float64."""
        ctx = self._ctx
        ctx.masks = {}  # a fresh dict: new dropout masks, and the last step's objective keeps the old ones
        ctx.pending_stats.clear()
        ctx.alive = self._alive if record is not None else None
        sq = self._sq if norms else None
        z = self.model.forward(xb, ctx=ctx, record=record)
        value, g = self.loss(z, yb)
        self.model.backward(g, ctx, grads=self._grads, sq_norms=sq)
        if self.l2:
            params = self.model.parameters()
            value += l2_penalty(params, self.l2, self._weights)  # exact for huge finite weights too
            add_l2_gradient(self._grads, params, self.l2, self._weights)
            if sq is not None:  # the weights' gradients changed: the squared norms of their final values
                for i, key in self._weight_slots:
                    sq[i] = sq_norm_unguarded(self._grads[key])
        return value, z

    def _grad_norm(self, norms: bool) -> float:
        """Global L2 norm of this step's gradient: from the squared norms the backward pass wrote to
        ``self._sq`` (with ``norms``), else one dot product over the flat gradient (float32, redone in float64
        on overflow).  ``inf``/``nan`` exactly when a gradient value is.  Clipping always takes the first
        way, so the norm it divides by does not depend on what a callback requested."""
        if norms:
            return math.sqrt(float(self._sq.sum()))
        return math.sqrt(sq_norm_unguarded(self._gflat))

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss (L2 term included) and gradients keyed like ``model.parameters()``, in training mode, at
        the current parameters; nothing is updated (BatchNorm running statistics included).  Dropout masks
        come from a copy of the training generator, so calling this changes nothing later in training."""
        X, y = checks.xy(X, y, self.model.n_inputs, self.loss, self.model.n_outputs, "loss_and_grad")
        ctx = Context(training=True, rng=copy.deepcopy(self.model.dropout_rng))
        z = self.model.forward(X.astype(self.model.dtype, copy=False), ctx=ctx)
        value, g = self.loss(z, y)
        grads = self.model.backward(g, ctx)  # new arrays: the L2 term can be added in place
        if self.l2:
            params = self.model.parameters()
            with np.errstate(over="ignore"):  # a float32 sum of squares that overflows is redone in float64
                value += l2_penalty(params, self.l2, self._weights)
            add_l2_gradient(grads, params, self.l2, self._weights)
        return value, grads

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and (for classification) accuracy in eval mode."""
        X, y = checks.xy(X, y, self.model.n_inputs, self.loss, self.model.n_outputs, "evaluate")
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
        fit = self._prepare(X, y, epochs, validation)
        history = fit.history
        try:
            self.callbacks.on_train_begin(fit.run)
            # overflow to Inf/NaN is a training outcome (reported, and stopped on), not a numpy warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                for epoch in range(fit.epochs):
                    self._run_epoch(fit, epoch)
                    if checkpoint is not None:
                        self._checkpoint(checkpoint, history)
                    if history["stopped"]:
                        break
            fit.close_bar()
            self.callbacks.on_train_end({"history": dict(history), "steps": self.step, "stopped": history["stopped"]})
        except BaseException as exc:
            fit.close_bar()
            self.callbacks.on_exception(exc, fit.state)
            raise
        return history

    def _prepare(self, X: Any, y: Any, epochs: Any, validation: Any) -> _Fit:
        """Check the arguments of :meth:`fit` (one clear error each) and set up what its epochs share."""
        epochs = checks.positive_int("epochs", epochs)
        model, loss = self.model, self.loss
        X, y = checks.xy(X, y, model.n_inputs, loss, model.n_outputs, "training")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                got = f"a {type(validation).__name__} of {len(validation)}" if isinstance(validation, (tuple, list)) \
                    else type(validation).__name__
                raise ValueError(f"validation must be a pair (X_val, y_val), got {got}")
            validation = checks.xy(validation[0], validation[1], model.n_inputs, loss, model.n_outputs, "validation")
        X = np.ascontiguousarray(X, dtype=model.dtype)
        if np.issubdtype(y.dtype, np.floating):
            y = y.astype(model.dtype)
        bounds = self.batch_bounds(len(X))
        run = self.run_info(X, y, epochs, bounds)
        classify = loss.name != "mse"
        history = TrainingHistory(loss=[], steps=0, stopped=None, skipped=0, checkpoint_error=None)
        if classify:
            history["accuracy"] = []
        if validation is not None:
            history["val_loss"] = []
            if classify:
                history["val_accuracy"] = []
        # read-only views of persistent storage are made once (the arrays behind them change in place)
        self._ro_params, self._ro_grads, self._ro_updates = readonly(model.parameters()), readonly(self._grads), None
        cbs = self.callbacks
        # hooks nobody overrides cost nothing per step: no StepState unless a callback watches steps
        return _Fit(epochs=epochs, X=X, y=y, validation=validation, bounds=bounds, run=run, history=history,
                    classify=classify, per_step=cbs.wants("on_after_backward") or cbs.wants("on_step_end"),
                    asks=cbs.wants("requests"), may_stop=cbs.wants("should_stop"),
                    bar=progress_bar(run.total_steps, self.progress, "training", "step"))

    def _run_epoch(self, fit: _Fit, epoch: int) -> None:
        """One pass over the training data (or its steps up to a stop), then the epoch's logs."""
        n = len(fit.X)
        order = self.rng.permutation(n) if self.shuffle and len(fit.bounds) > 1 else np.arange(n)
        tally = _Tally()
        first_step = self.step
        for start, stop in fit.bounds:
            idx = order[start:stop]
            if self._step(fit, epoch, fit.X[idx], fit.y[idx], tally):
                break
        self._end_epoch(fit, epoch, tally, ran=self.step > first_step)

    def _step(self, fit: _Fit, epoch: int, xb: np.ndarray, yb: np.ndarray, tally: _Tally) -> bool:
        """One step on the batch ``(xb, yb)``: forward and backward, the checks, the callbacks, the update.
        Returns True when training stops here (a non-finite step, or a callback's reason)."""
        cbs, history = self.callbacks, fit.history
        wanted = cbs.requests(self.step) if fit.asks else _NOTHING
        record = {} if "activations" in wanted else None
        # per-parameter squared norms when asked for, and always under norm clipping: the norm that clipping
        # divides by must not depend on what a callback requested
        norms = "grad_norms" in wanted or self.clip_norm is not None
        value, z = self._forward_backward(xb, yb, record, norms)
        norm = self._grad_norm(norms)  # checked before any update: a non-finite step is never applied
        finite = math.isfinite(value) and math.isfinite(norm)
        if fit.per_step:
            fit.state = self._state(epoch, value, xb, yb, record, norm if norms else None)
            cbs.on_after_backward(fit.state)
        if not finite and self.stop_on_nonfinite:
            what = "loss" if not math.isfinite(value) else "gradient"
            history["stopped"] = f"non-finite {what} at step {self.step}"
            return True
        if self._callback_stops(fit):  # before the update: a callback saw something this step must not apply
            return True
        if finite:
            flat_update, coef = self._apply(norm)
            tally.add(value, len(yb), int(np.sum(self.loss.predictions(z) == yb)) if fit.classify else 0)
        else:  # stop_on_nonfinite=False: skip the step, as a loss scaler would
            flat_update, coef = self._zeros(), 1.0
            history["skipped"] += 1
        if fit.per_step:
            self._step_end(fit.state, flat_update, coef)
        self.step += 1
        history["steps"] += 1
        if fit.bar is not None:
            fit.bar.update(1)
            if self.step % 20 == 0:
                fit.bar.set_postfix(loss=f"{value:.4g}", epoch=epoch, refresh=False)
        return self._callback_stops(fit)

    def _apply(self, norm: float) -> tuple[np.ndarray, float]:
        """Commit the batch statistics, clip and update; returns the flat update and the clip coefficient."""
        self._ctx.commit_stats()
        applied: Mapping[str, np.ndarray] = {"all": self._gflat}
        coef = 1.0
        if self.clip_norm is not None:
            applied, info = clip_by_global_norm(applied, self.clip_norm, norm=norm)
            coef = float(info["coef"])
        if self.clip_value is not None:
            applied, _ = clip_by_value(applied, self.clip_value)
        return self.optimizer.step({"all": self.model.flat()}, applied)["all"], coef

    def _step_end(self, state: StepState, flat_update: np.ndarray, coef: float) -> None:
        """Hand the applied update (read-only views, made once per update buffer) to ``on_step_end``."""
        if self._ro_updates is None or self._ro_updates[0] is not flat_update:
            self._ro_updates = (flat_update, readonly(self.model.views(flat_update)))
        state.update = self._ro_updates[1]
        state.clip_coef = coef
        self.callbacks.on_step_end(state)

    def _callback_stops(self, fit: _Fit) -> bool:
        """True (with the reason in the history) when a callback asks to stop."""
        reason = self.callbacks.should_stop() if fit.may_stop else None
        if reason:
            fit.history["stopped"] = reason
            return True
        return False

    def _end_epoch(self, fit: _Fit, epoch: int, tally: _Tally, ran: bool) -> None:
        """The epoch's averages and validation into the history, then ``on_epoch_end``.  ``ran``: at least
        one step of this epoch ran (applied or skipped)."""
        history = fit.history
        if ran:
            history["loss"].append(tally.loss_sum / tally.seen if tally.seen else math.nan)
            if fit.classify:
                history["accuracy"].append(tally.correct / tally.seen if tally.seen else math.nan)
        logs = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}
        if fit.validation is not None and ran:
            ev = self.evaluate(*fit.validation)
            history["val_loss"].append(ev["loss"])
            logs["val_loss"] = ev["loss"]
            if fit.classify:
                history["val_accuracy"].append(ev["accuracy"])
                logs["val_accuracy"] = ev["accuracy"]
        self.callbacks.on_epoch_end(epoch, logs)
        if not history["stopped"]:
            self.epoch += 1

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

    def _state(self, epoch: int, value: float, xb: np.ndarray, yb: np.ndarray, record: dict | None,
               grad_norm: float | None) -> StepState:
        """The step as callbacks see it.  ``grad_norm`` is given when the backward pass wrote the squared
        norms (``self._sq``); ``record`` (the layer outputs) when activations were requested."""
        activations = preacts = alive = inputs = None
        if record is not None:
            layers = self.model.layers
            activations = self._readonly("activations", record)
            inputs = readonly({"x": xb})["x"]
            preacts = {l.name: activations[layers[i - 1].name] for i, l in enumerate(layers)
                       if l.activation is not None and i > 0}
            alive = self._readonly("alive", self._alive)
        # a step's dropout masks are new arrays in a new dict (see _forward_backward): kept without a copy
        objective = BatchObjective(self.model, self.loss, xb, yb, l2=self.l2, masks=self._ctx.masks)
        return StepState(step=self.step, epoch=epoch, loss=value, batch_size=len(xb), params=self._ro_params,
                         grads=self._ro_grads, lr=self.optimizer.lr, activations=activations,
                         preactivations=preacts, objective=objective, alive=alive,
                         grad_sq_norms=self._ro_sq if grad_norm is not None else None, grad_norm=grad_norm,
                         inputs=inputs)

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
