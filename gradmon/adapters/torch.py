"""PyTorch adapter: watch any ``nn.Module`` training loop with the same monitor, findings and reports.

(About 600 lines, above the house's 450: one class, the watcher's lifecycle from the first forward pass to
``close()``, whose parts each live in a ``torch_*`` module of this package.)

>>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1",         # doctest: +SKIP
...                               loss_fn=F.cross_entropy)    # optional: curvature on the last batch
>>> for x, y in loader:                                                              # doctest: +SKIP
...     loss = F.cross_entropy(model(x), y)
...     opt.zero_grad(); loss.backward(); opt.step()   # gradients are read before each step
...     watcher.log_loss(loss, target=y)               # the loss series (and the targets, for curvature)
>>> report = watcher.report(); watcher.close()                                       # doctest: +SKIP

How it reads the loop (each part in its own module):

- **Units** (:mod:`~gradmon.adapters.torch_layout`): every module owning parameters (one per layer and
  direction of a recurrent module), in the order the first forward pass with gradients uses them; tied
  parameters once, frozen ones listed, never measured.  **Activations**
  (:mod:`~gradmon.adapters.torch_activations`), from modules or functions, belong to the unit whose output
  they consume; the console and the report say which units have none and why (:mod:`~gradmon.adapters.
  torch_run`).
- **Gradients** (:mod:`~gradmon.adapters.torch_gradients`), read at the end of each ``backward()``, before
  any clipping, in one fused reduction on their device.  Every statistic is computed where the tensors
  live; a recorded step brings one small vector to the host (``log_loss(loss)`` keeps the loss tensor for
  it: no synchronisation of its own).
- **Steps.**  With an optimizer, its step pre-hook measures the step and its post-hook reads the update
  ``θ_after - θ_before`` (weights are copied only on the steps whose record holds update ratios).  Without
  one, call :meth:`Watcher.step` once per step after ``backward()``; a step's update is then the change
  until the next ``step()`` call (the last one is unknown: NaN, never 0).  Learning rates come from each
  unit's parameter group, schedulers followed (:mod:`~gradmon.adapters.torch_optim`).  Measuring stays
  within a budget of the step time (:mod:`~gradmon.adapters.torch_budget`).
- **Curvature**: exact Hessian-vector products by double backward on a fixed probe batch (``probe=(x, y)``
  and ``loss_fn``) or on the last batch (``loss_fn`` and ``log_loss(loss, target=y)``); without ``loss_fn``
  it is off and the report says so.
- **Data-parallel** (``torch.distributed``): each rank measures and judges locally; at ``close()`` rank 0
  gathers every rank's per-unit series (never a tensor of the model) and alone writes
  (:mod:`~gradmon.adapters.distributed`).
- **A monitor never breaks training**: an error inside the watcher is printed once, the watcher stops
  (``watcher.error`` says why) and training goes on.

Cost: ``watcher.hook_seconds`` is the wall time spent inside the watcher (``benchmarks/torch_overhead.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterator

from core.callbacks import RunInfo, StepState
from gradmon.adapters.loss_names import loss_name
from gradmon.adapters.torch_activations import Capture, Plan, Tracer
from gradmon.adapters.torch_layout import Layout, build_layout, candidates, display_names, layer_infos, make_units
from gradmon.adapters.torch_objective import TorchObjective
from gradmon.adapters.torch_budget import StatisticsBudget
from gradmon.adapters.torch_gradients import GradientReader
from gradmon.adapters.torch_optim import GroupRates
from gradmon.adapters.torch_run import LOSS_NAMES, lay_out, notes, run_info
from gradmon.layout import Unit
from gradmon.monitor import Monitor

try:  # imported lazily by gradmon.torch: this module is only loaded when torch is wanted
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError("gradmon.torch needs PyTorch: pip install torch (CPU: pip install torch==2.13.0), "
                      "or pip install \"gradmon[torch]\"") from exc

__all__ = ["TorchObjective", "Watcher", "display_names", "layer_infos", "watch"]

def unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose layers to watch under ``DistributedDataParallel`` and ``torch.compile`` wrappers,
    and whether one of them was a compiled module."""
    compiled = False
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model, compiled = model._orig_mod, True
        else:
            return model, compiled


def _compiling() -> bool:
    """Whether torch.compile is tracing the code that calls this (hooks then do nothing: the compiled
    graph would not run them eagerly)."""
    return torch.compiler.is_compiling()


def guarded(method: Callable | None = None, *, no_grad: bool = False) -> Callable:
    """A watcher entry point that never raises into the user's loop: an error stops the watcher, once.
    ``no_grad``: it runs under ``torch.no_grad()`` (it computes on the user's tensors)."""
    if method is None:
        return lambda m: guarded(m, no_grad=no_grad)

    def run(self: "Watcher", *args: Any, **kwargs: Any) -> Any:
        if _compiling() or self.error is not None:  # (hooks traced by torch.compile do nothing)
            return None
        t0 = time.perf_counter()
        grad = torch.is_grad_enabled()
        try:
            if no_grad:  # what the watcher computes never enters an autograd graph (no context manager: cheaper)
                torch._C._set_grad_enabled(False)
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            torch._C._set_grad_enabled(grad)
            self.hook_seconds += time.perf_counter() - t0
    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


class Watcher:
    """Feeds a :class:`~gradmon.monitor.Monitor` from a PyTorch model (and optimizer).

    Parameters
    ----------
    model: the ``nn.Module`` to watch (``DistributedDataParallel`` and ``torch.compile`` wrappers are
        unwrapped).  Under ``torch.distributed``, call ``watch()`` after ``init_process_group`` on every rank.
    optimizer: its step hooks mark steps; without one, call :meth:`step` after each ``backward()``.
    logdir: where TensorBoard events and reports go (rank 0 only); None keeps everything in memory.
    probe: ``(x, y)``, a fixed batch for curvature (needs ``loss_fn``); ``x`` is a tensor or a tuple of
        positional inputs.
    loss_fn: ``loss_fn(model_output, y) -> scalar tensor``; with it and no probe, curvature is measured on
        the last batch whose targets :meth:`log_loss` received.
    loss: the loss's name for the report (guessed from ``loss_fn`` for torch's own losses).
    name: the run's name in reports (default: the model's class name).
    expected_steps: the number of steps if known (0: unknown), so findings are judged at a fitting cadence.
    scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop (its scale is divided out of the norms;
        a step it skips is not a step).
    statistics_budget: the share of the training time measuring may cost (default 5%): every step is
        measured for the first 200 steps, then, on models whose steps are so short that measuring each one
        would cost more, every k-th step (the report says so).  ``every=...`` (a fixed cadence) or None
        turns it off, and so does data-parallel training, whose ranks must record the same steps
        (:mod:`gradmon.adapters.torch_budget`).
    monitor_options: passed to :class:`~gradmon.monitor.Monitor` (``every``, ``curvature_every``,
        ``console``, ``tensorboard``...).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 logdir: str | os.PathLike | None = None, *, probe: tuple[Any, Any] | None = None,
                 loss_fn: Callable | None = None, loss: str = "unknown", name: str | None = None,
                 expected_steps: int = 0, scaler: Any = None,
                 statistics_budget: float | StatisticsBudget | None = 0.05, **monitor_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        model, self.compiled = unwrap(model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"watch(optimizer=...) needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if probe is not None and loss_fn is None:
            raise ValueError("watch(probe=...) needs loss_fn=... to evaluate the probe batch, "
                             "e.g. loss_fn=torch.nn.functional.cross_entropy")
        if probe is not None and (not isinstance(probe, (tuple, list)) or len(probe) != 2):
            raise ValueError("watch(probe=...) must be a pair (x, y) of model inputs and targets")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"watch(): {type(model).__name__} has no trainable parameter (none with "
                             f"requires_grad=True), so there is nothing for gradmon to monitor")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.loss_fn = loss_fn
        self.probe = tuple(probe) if probe is not None else None
        self.rank, self.world = _dist_rank()
        if self.rank != 0:  # only rank 0 writes
            logdir = None
            monitor_options["console"] = False
        elif self.world > 1 and logdir is not None and monitor_options.get("tensorboard", True):
            # rank 0's TensorBoard shows the rank average of what differs between ranks (loss, activations)
            from gradmon.adapters.distributed import RankAverageTensorBoard

            monitor_options["tensorboard"] = False
            sink = RankAverageTensorBoard(logdir, self.world,
                                          scalar_every=int(monitor_options.get("tensorboard_every", 10)))
            monitor_options["sinks"] = [*monitor_options.get("sinks", ()), sink]
        # a cadence the user chose, or ranks that must record the same steps: no budget
        if "every" in monitor_options or statistics_budget is None or self.world > 1:
            self._budget: StatisticsBudget | None = None
        else:
            self._budget = statistics_budget if isinstance(statistics_budget, StatisticsBudget) \
                else StatisticsBudget(statistics_budget)
        self._tick_at: tuple[float, float] | None = None
        self.units: list[Unit] = []
        self.monitor = Monitor(logdir=logdir, units=lambda run: self.units, **monitor_options)
        self.hook_seconds = 0.0  # wall time spent inside the watcher's hooks and methods
        self.error: str | None = None
        if loss == "unknown" and loss_fn is not None:
            loss = LOSS_NAMES.get(loss_fn, LOSS_NAMES.get(type(loss_fn), "unknown"))
        self._loss_name, self._run_name = loss, name or type(model).__name__
        self._expected_steps = int(expected_steps)
        self.layout: Layout | None = None
        self._run: RunInfo | None = None
        self._started = self._closed = False
        # step bookkeeping
        self._step = 0                                    # index of the next step to begin
        self._pending: StepState | None = None            # measured, waiting for its update and/or loss
        self._settled = False                             # the pending step's update is known
        self._loss: Any = None                            # a loss logged before its step began
        self._loss_backwards = 0                          # backward passes done when it was logged
        # the unit parameters' gradients and learning rates (set at the start)
        self._reader: GradientReader | None = None
        self._rates: GroupRates | None = None
        self._all = list(model.named_parameters())
        self._batch = 0
        self._param_ptrs: tuple[Any, ...] = ()
        self._param_views: dict[str, torch.Tensor] = {}
        self._before: list[torch.Tensor] = []
        self._weight_keys: list[str] = []
        self._snapshot = False
        # forward passes: the trace, activation capture, last inputs
        self._paused = False
        self._capture = Capture(Plan("modules", {}, {}), model)
        self._inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._first_input: Any = None                     # the first unit's input on a capture step
        self._last_batch: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None
        self._handles: list[Any] = []
        self._cands = candidates(model)
        self._names = display_names(model)
        self._tracer: Tracer | None = None if self.compiled else Tracer(self._cands, self._names)
        if self._tracer is not None:
            self._tracer.install(model)
        # the root module's hooks: the trace, then only what the run needs (each hook costs microseconds)
        self._root_handles = [model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True),
                              model.register_forward_hook(self._root_hook, always_call=True)]
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, a, k: self._optimizer_pre_step()))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, a, k: self._optimizer_post_step()))

    # -- the start: layout, units, run ------------------------------------------------------------------------
    def _start(self) -> None:
        """Lay out the units (from the traced forward pass, if one was seen) and start the monitor; once, at
        the end of the first forward pass with gradients (or the first step, report or close)."""
        if self._started:
            return
        self._started = True
        tracer, self._tracer = self._tracer, None
        if tracer is not None:
            tracer.end()
        start = lay_out(self.model, tracer, self.compiled, self.optimizer)
        self._cands, self.layout, self.units = start.cands, start.layout, start.units
        self._capture.remove()
        self._capture = Capture(start.plan, self.model)
        inputs = self.loss_fn is not None and self.probe is None  # curvature on the last batch keeps its inputs
        if not (inputs or self._capture.functional):
            for h in self._root_handles:
                h.remove()
            self._root_handles = []
        named = start.layout.parameters(self.model)
        keys, tensors = [k for k, _ in named], [p for _, p in named]
        self._rates = GroupRates(self.optimizer, keys, tensors)
        self._reader = GradientReader(keys, tensors, scaler=self.scaler, on_error=self._fail,
                                      measured=lambda: self.monitor.recorder.measures(self._step))
        self._weight_keys = [k for u in self.units for k in u.weights]
        self._run = self._run_info(start.layout, self.units, self._rates)
        self.monitor.on_train_begin(self._run)
        self._hook_first_unit()
        if self.monitor.curvature_every > 0 and self.probe is None and self.loss_fn is None:
            self.monitor.add_note("curvature is off: give watch(..., loss_fn=F.cross_entropy) and watcher.log_loss("
                                  "loss, target=y) to measure it on the last batch, or watch(..., probe=(x, y), "
                                  "loss_fn=...) for a fixed probe batch", console=True)
        for text, console in notes(start, self._rates):
            self.monitor.add_note(text, console=console)
        self._arm()
        if tracer is not None:
            if tracer.done and self._capture.armed:  # the traced pass is the first step's
                self._capture.seed(tracer)
            tracer.remove()

    @property
    def run(self) -> RunInfo:
        """The run's description: provisional (units in registration order) until the first forward pass
        with gradients lays them out."""
        if self._run is not None:
            return self._run
        layout = build_layout(self.model, self._cands, None)
        named = layout.parameters(self.model)
        rates = GroupRates(self.optimizer, [k for k, _ in named], [p for _, p in named])
        return self._run_info(layout, make_units(layout, {}, set(), {}), rates)

    def _hook_first_unit(self) -> None:
        """Capture the first unit's input on capture steps while the monitor still measures the data's scale
        (unscaled inputs: a few batches, then the hook is removed)."""
        units = self.units
        if not units or not units[0].params or self.monitor.recorder.inputs.full:
            return
        qual = units[0].params[0].rpartition(".")[0]
        module = dict(self.model.named_modules()).get(qual)
        if module is None:
            return

        def hook(module: nn.Module, args: tuple) -> None:
            if self.monitor.recorder.inputs.full:
                handle.remove()
            elif self._capture.armed and self._first_input is None and torch.is_grad_enabled() \
                    and args and isinstance(args[0], torch.Tensor):
                self._first_input = args[0].detach()
        handle = module.register_forward_pre_hook(hook)
        self._handles.append(handle)

    def _run_info(self, layout: Layout, units: list[Unit], rates: GroupRates) -> RunInfo:
        return run_info(self.model, layout, units, rates, loss=self._loss_name, name=self._run_name,
                        expected_steps=self._expected_steps,
                        probe=self._probe_objective if self.probe is not None else None)

    def _fail(self, exc: BaseException) -> None:
        """An error inside the watcher: say it once, stop watching, let training go on."""
        self.error = f"{type(exc).__name__}: {exc}"
        print(f"[gradmon] the watcher failed and stopped watching (training goes on): {self.error}",
              file=sys.stderr)
        self._remove_hooks()
        with contextlib.suppress(Exception):
            self.monitor.sink_errors.append(f"[gradmon] the watcher failed and stopped: {self.error}")

    # -- forward passes ---------------------------------------------------------------------------------------
    @guarded
    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._paused:
            return
        grad = torch.is_grad_enabled()
        if self._tracer is not None and grad and not self._tracer.active:
            self._tracer.begin()  # the first forward pass with gradients is traced
        elif self._capture.armed:
            self._capture.begin_forward()
        if grad and self.loss_fn is not None and self.probe is None:
            self._inputs = (args, kwargs)  # (not evaluation passes)
        if grad and not self._batch and args and isinstance(args[0], torch.Tensor) and args[0].dim():
            self._batch = int(args[0].shape[0])  # examples per step, from the first forward (captures update it)

    @guarded
    def _root_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._paused:
            return
        tracer = self._tracer
        if tracer is not None and tracer.active:
            tracer.end()
            self._start()
        else:
            self._capture.end_forward()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: hooks ignore the forward and backward passes inside (curvature probes)."""
        before, armed = self._paused, self._capture.armed
        self._paused, self._capture.armed = True, False
        if self._reader is not None:
            self._reader.paused = True
        try:
            yield
        finally:
            self._paused, self._capture.armed = before, armed
            if self._reader is not None:
                self._reader.paused = before

    def _arm(self) -> None:
        """After a step (and at the start): capture the next training forward pass's activations if the
        monitor measures the coming step."""
        self._capture.arm("activations" in self.monitor.requests(self._step))

    def _params(self) -> dict[str, torch.Tensor]:
        """Detached aliases of every parameter (frozen ones too: curvature evaluates the whole model), cached
        while their storage stays the same (``model.to(...)`` or ``.half()`` replace it, and the aliases are
        rebuilt; the first and last parameters tell)."""
        first, last = self._all[0][1], self._all[-1][1]
        ptrs = (first.data_ptr(), last.data_ptr(), first.dtype, last.dtype)
        if ptrs != self._param_ptrs:
            self._param_views = {n: p.detach() for n, p in self._all}
            self._param_ptrs = ptrs
        return self._param_views

    # -- steps --------------------------------------------------------------------------------------------------
    def _begin_step(self, lr: float | None) -> None:
        """Measure one step: after ``backward()``, before the update."""
        self._start()
        self._finish()  # the previous step, if its loss never came
        step = self._step
        self._step += 1
        grads, sq, clip_coef = self._reader.take(self.monitor.recorder.measures(step))
        params = self._params()
        self._batch = self._capture.batch or self._batch
        rate, lrs = self._rates.now()
        # a loss logged before this step belongs to it only if no backward ran since (a skipped step's loss
        # would otherwise be this one's, and every loss after it one step late)
        loss_known = self._loss is not None and self._loss_backwards == self._reader.backwards
        activations, alive = self._capture.taken()
        state = StepState(step=step, epoch=0, loss=self._loss if loss_known else float("nan"),
                          batch_size=self._batch, params=params, grads=grads, alive=alive,
                          lr=float(lr) if lr is not None else rate, activations=activations,
                          clip_coef=clip_coef, objective=self._last_batch_objective(step), loss_known=loss_known,
                          grad_sq_norms=sq, lrs=lrs if lr is None else None, inputs=self._first_input)
        self._first_input = None
        self._loss = None
        # the update needs the weights before the step; only the units' weights enter update ratios
        self._snapshot = self.monitor.will_record_update(step)
        if self._snapshot:
            weights = [params[k] for k in self._weight_keys]
            if len(self._before) != len(weights) or any(b.shape != w.shape or b.device != w.device
                                                        for b, w in zip(self._before, weights)):
                self._before = [torch.empty_like(w) for w in weights]
            with torch.no_grad():
                torch._foreach_copy_(self._before, weights)
        self.monitor.on_after_backward(state)
        self._pending, self._settled = state, False

    def _settle(self) -> None:
        """The pending step's update is known now (the weights changed since it was measured)."""
        state = self._pending
        if state is None or self._settled:
            return
        if self._snapshot:
            params, keys = self._params(), self._weight_keys
            with torch.no_grad():  # after - before (one pass; the copies of the weights are reused)
                update = torch._foreach_sub([params[k] for k in keys], self._before)
            state.update = dict(zip(keys, update))
        self._snapshot = False
        self._settled = True

    @guarded(no_grad=True)
    def _optimizer_pre_step(self) -> None:
        self._tick()
        self._begin_step(None)

    def _tick(self) -> None:
        """A step begins: the previous step's wall time and the watcher's time in it go to the budget, which
        may change the cadence from the next step on."""
        if self._budget is None or self._reader is None:
            return
        now, spent = time.perf_counter(), self.hook_seconds + self._reader.seconds
        if self._tick_at is not None:
            every = self._budget.record(now - self._tick_at[0], spent - self._tick_at[1])
            if every is not None:
                self.monitor.recorder.set_every(every, start=self._step + 1)
        self._tick_at = (now, spent)

    @guarded(no_grad=True)
    def _optimizer_post_step(self) -> None:
        self._settle()
        if self._pending is not None and self._pending.loss_known:
            self._finish()
        self._arm()

    def step(self, lr: float | None = None) -> None:
        """Mark a step in loops without an optimizer: call once per step, after ``backward()``.

        Call it before your update for exact attribution (the update measured for a step is the change of
        the weights until the next ``step()`` call).  ``lr`` is the learning rate of this step (NaN when
        not given), which curvature compares against ``2/lr``.
        """
        if self.optimizer is not None:
            raise RuntimeError("watch(optimizer=...) marks steps itself (optimizer step hooks); call "
                               "watcher.step() only in loops without an optimizer")
        self._manual_step(float(lr) if lr is not None else float("nan"))

    @guarded(no_grad=True)
    def _manual_step(self, lr: float) -> None:
        self._settle()
        self._finish()
        self._tick()
        self._begin_step(lr)
        self._arm()

    def log_loss(self, loss: Any, target: Any = None) -> None:
        """Give the loss of the current step (a scalar tensor or a number), before or after the step.

        A tensor is kept on its device and moved to the host with the step's other statistics (no
        synchronisation of its own).  ``target``: the targets of the batch this loss was computed on; with
        ``watch(loss_fn=...)`` and no probe, curvature is measured on this batch (the inputs of the last
        forward pass, kept by reference).
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"watcher.log_loss() needs a scalar loss, got a tensor of shape "
                                 f"{tuple(loss.shape)}; reduce it first (loss.mean())")
            value: Any = loss if not loss.dim() else loss.reshape(())  # read under no_grad, with the step
        else:
            value = float(loss)
        self._log_loss(value, target, loss)

    @guarded(no_grad=True)
    def _log_loss(self, value: Any, target: Any, loss: Any = None) -> None:
        if "loss" not in self.monitor.facts:  # the report's loss name and batch size, once
            self.monitor.describe(loss=loss_name(loss), batch_size=len(target) if _sized(target) else None)
        if target is not None and self._inputs is not None:
            args, kwargs = self._inputs
            self._last_batch = (args, kwargs, target)
        state = self._pending
        if state is not None and not state.loss_known:
            state.loss = value
            state.loss_known = True
            self.monitor.log_loss(value)
            if self._settled:
                self._finish()
        else:
            self._loss, self._loss_backwards = value, (self._reader.backwards if self._reader else 0)

    def log_metrics(self, **metrics: float) -> None:
        """Validation (or any) metrics, e.g. ``watcher.log_metrics(val_loss=0.31, accuracy=0.92)``: charted in
        TensorBoard (``loss/val``, ``accuracy/val``) and kept in the report (``extra["metrics"]``); see
        :meth:`gradmon.monitor.Monitor.log_metrics`."""
        self._start()
        self.monitor.log_metrics(step=self._step, **metrics)

    @property
    def should_stop(self) -> str | None:
        """Why the loop should stop now (NaN/Inf, or an open error finding), or None: ``if
        watcher.should_stop: break``."""
        return self.monitor.stop_reason("error")

    def _finish(self) -> None:
        """Close the pending step (``on_step_end``)."""
        state, self._pending = self._pending, None
        if state is not None:
            self.monitor.on_step_end(state)

    def _last_batch_objective(self, step: int) -> TorchObjective | None:
        if self.probe is not None or self._last_batch is None or "curvature" not in self.monitor.requests(step):
            return None
        args, kwargs, target = self._last_batch
        return TorchObjective(self, args, target, self.loss_fn, kwargs)

    def _probe_objective(self, n: int, seed: int) -> TorchObjective:
        x, y = self.probe
        if isinstance(x, tuple):
            return TorchObjective(self, tuple(a[:n] for a in x), y[:n], self.loss_fn)
        return TorchObjective(self, x[:n], y[:n], self.loss_fn)

    # -- results --------------------------------------------------------------------------------------------------
    def _budget_note(self) -> None:
        """Say in the report how often the statistics were measured, when the budget thinned them out."""
        said = self._budget.describe() if self._budget is not None else None
        if said is not None:
            self.monitor.notes[:] = [n for n in self.monitor.notes if not n.startswith(said[:40])]
            self.monitor.add_note(said)

    def report(self):
        """The health report so far (see :class:`gradmon.HealthReport`)."""
        self._budget_note()
        if self.error is None:
            with contextlib.suppress(Exception), torch.no_grad():
                self._start()
                if self._pending is not None and self.optimizer is not None:
                    self._finish()
        return self.monitor.report()

    def close(self) -> None:
        """Remove the hooks and write the report files (rank 0).  Under ``torch.distributed`` every rank
        must call it (it gathers the ranks' reports and histories)."""
        if self._closed:
            return
        self._closed = True
        if self.error is None:
            try:
                with torch.no_grad():
                    self._start()
                    self._finish()  # without an optimizer the last step's update stays unknown (NaN)
            except Exception as exc:
                self._fail(exc)
        self._remove_hooks()
        self._budget_note()
        if (self.monitor.curvature_every > 0 and not self.monitor.curvature and self.probe is None
                and self.loss_fn is not None and self._step > self.monitor.curvature_every):
            self.monitor.add_note("curvature was not measured: pass the targets with "
                                  "watcher.log_loss(loss, target=y)")
        if self.world > 1:  # every rank judged its own shard: rank 0 merges and alone writes
            from gradmon.adapters.distributed import merge_ranks

            self.monitor.judge_now()
            merge_ranks(self.monitor)
        self.monitor.on_train_end({"steps": self._step, "stopped": None})

    def _remove_hooks(self) -> None:
        for h in self._handles + self._root_handles:
            h.remove()
        self._handles, self._root_handles = [], []
        if self._reader is not None:
            self._reader.remove()
        self._capture.remove()
        if self._tracer is not None:
            self._tracer.remove()

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._closed = True
            with contextlib.suppress(Exception), torch.no_grad():
                self._start()
                self._finish()
            self._remove_hooks()
            self.monitor.on_exception(exc, None)
        else:
            self.close()


def _sized(target: Any) -> bool:
    """Whether ``target`` is a batch with a length (a tensor with a batch dimension, a list)."""
    return target is not None and not (isinstance(target, torch.Tensor) and target.dim() == 0) and hasattr(
        target, "__len__")


def _dist_rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
          logdir: str | os.PathLike | None = None, **options: Any) -> Watcher:
    """Attach gradmon to a PyTorch model (and optimizer); see :class:`Watcher` for the options.

    >>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1")   # doctest: +SKIP
    """
    return Watcher(model, optimizer=optimizer, logdir=logdir, **options)
