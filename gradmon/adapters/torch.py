"""PyTorch adapter: watch any ``nn.Module`` training loop with the same monitor, findings and reports.

>>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1",         # doctest: +SKIP
...                               loss_fn=F.cross_entropy)    # optional: curvature on the last batch
>>> for x, y in loader:                                                              # doctest: +SKIP
...     loss = F.cross_entropy(model(x), y)
...     opt.zero_grad(); loss.backward(); opt.step()   # gradients are read before each step
...     watcher.log_loss(loss, target=y)               # the loss series (and the targets, for curvature)
>>> report = watcher.report(); watcher.close()                                       # doctest: +SKIP

How it reads the loop:

- **Gradients, before any clipping.**  A post-accumulate-grad hook on every parameter notes that a
  ``backward()`` is running; at its end (after DDP has averaged the gradients) the watcher reads the squared
  norm of every ``p.grad`` through zero-copy numpy views.  These are the norms the monitor records (per
  layer and global), so ``clip_grad_norm_``/``clip_grad_value_`` between ``backward()`` and ``step()`` do not
  hide exploding gradients.  With gradient accumulation (several ``backward()`` calls, one ``step()``) each
  ``backward()`` re-reads ``p.grad``, which already holds the sum so far: the recorded norm is the norm of
  the accumulated gradient.  ``state.clip_coef`` is ``‖g at step‖ / ‖g after backward‖`` (1.0 when nothing
  changed the gradients in between, which a tensor's version counter tells for free).  ``state.grads`` are
  the gradients the optimizer applies (after clipping).
- **Steps.**  With an optimizer, its step pre-hook measures the step and its post-hook reads the update
  ``θ_after - θ_before`` (weights are copied only on the steps whose record holds update ratios).  Without
  one, call :meth:`Watcher.step` once per step after ``backward()``; the update of a step is then the change
  of the weights until the next ``step()`` call (the last step's update is unknown: NaN, never 0).  The
  learning rate is read from ``optimizer.param_groups[0]["lr"]`` at every step, so schedulers are followed
  (``step(lr=...)`` gives it without an optimizer).
- **Activations** come from forward hooks on activation *modules* (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
  ``nn.LeakyReLU``, ``nn.ELU``; in-place ones included).  They are attributed by the *call order* of the
  forward pass, traced on the first forward after ``watch()``: an activation belongs to the ``nn.Linear``
  called before it.  A module called several times (``self.act = nn.ReLU()`` used after three layers) gives
  one capture per call; its k-th call (k >= 2) is named ``<name>#k``.  Functional activations
  (``F.relu``, ``torch.tanh``) are invisible to hooks: their layers get no saturation or dead-unit
  statistics (gradient quantities still work).  A step's activations are those of the first forward pass
  with gradients enabled after the previous step (not ``torch.no_grad()`` evaluation; with gradient
  accumulation, the first micro-batch).
- **Names.**  Units are named after the qualified module name, with a bare index replaced by the class
  name and index (``Sequential`` index ``0`` -> ``linear0``, ``net.2`` -> ``net.linear2``); parameter keys
  stay torch's (``0.weight``).
- **Curvature** (top Hessian eigenvalue, trace) uses exact Hessian-vector products by double backward,
  with hooks off, dropout off and BatchNorm buffers copied so running statistics don't move, on either

  - a fixed probe batch: ``watch(..., probe=(x, y), loss_fn=F.cross_entropy)``, or
  - the last batch: ``watch(..., loss_fn=F.cross_entropy)`` and ``log_loss(loss, target=y)``; the
    model's inputs are kept (by reference) from a forward pre-hook and paired with the targets of the
    ``log_loss`` call that follows that forward pass.

  Without ``loss_fn`` curvature is off; the watcher says so on the console and in the report
  (``report.extra["notes"]``).
- **Data-parallel** (``torch.distributed``): each rank measures and judges locally (DDP already averaged the
  gradients).  At ``close()`` rank 0 gathers every rank's report and history, averages the rank-dependent
  series (loss, saturation, dead fraction, activation moments) so that ``history.npz``, the report's plots
  and TensorBoard show the rank average, names the ranks of findings they disagree on, and alone writes
  TensorBoard events and reports (see :mod:`gradmon.adapters.distributed`).

Cost: the per-step path is a handful of dictionary lookups plus numpy dot products on views of the
gradients; ``watcher.hook_seconds`` is the wall time spent inside the watcher (``benchmarks/torch_overhead.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence


from core.callbacks import LayerInfo, RunInfo, StepState
from gradmon.adapters.loss_names import loss_name
from gradmon.adapters.torch_objective import TorchObjective
from gradmon.monitor import Monitor
from gradmon.outputs import spec_from_run
from gradmon.quantities.xp import norms

try:  # imported lazily by gradmon.torch: this module is only loaded when torch is wanted
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError("gradmon.torch needs PyTorch: pip install torch (CPU: pip install torch==2.13.0), "
                      "or pip install \"gradmon[torch]\"") from exc

ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
}

OPTIMIZER_NAMES: dict[str, str] = {"SGD": "sgd", "Adam": "adam", "AdamW": "adam", "RMSprop": "rmsprop",
                                   "Adagrad": "adagrad"}

#: loss names (as core spells them) of common torch losses, for the run description
LOSS_NAMES: dict[Any, str] = {
    torch.nn.functional.cross_entropy: "cross_entropy", nn.CrossEntropyLoss: "cross_entropy",
    torch.nn.functional.mse_loss: "mse", nn.MSELoss: "mse",
    torch.nn.functional.binary_cross_entropy: "binary_cross_entropy", nn.BCELoss: "binary_cross_entropy",
    torch.nn.functional.binary_cross_entropy_with_logits: "binary_cross_entropy",
    nn.BCEWithLogitsLoss: "binary_cross_entropy",
}

# -- layout ------------------------------------------------------------------------------------------------
def display_names(model: nn.Module) -> dict[str, str]:
    """Readable unit names of the leaf modules, keyed by qualified name.

    A bare index (what ``nn.Sequential`` and ``nn.ModuleList`` use) becomes the lower-case class name plus
    the index: ``"0"`` -> ``"linear0"``, ``"net.2"`` -> ``"net.relu2"``; other names stay as they are
    (``"fc1"``), and a model that is itself a leaf is named after its class.  When a readable name would
    collide with another module's, the qualified name is kept.
    """
    out: dict[str, str] = {}
    for qual, module in model.named_modules():
        if list(module.children()):
            continue
        head, _, last = qual.rpartition(".")
        kind = type(module).__name__.lower()
        if not qual:
            name = kind
        elif last.isdigit():
            name = f"{head}.{kind}{last}" if head else f"{kind}{last}"
        else:
            name = qual
        out[qual] = name
    taken = set(out)
    seen: set[str] = set()
    for qual, name in out.items():
        if name != qual and (name in taken or name in seen):
            out[qual] = qual
        seen.add(out[qual])
    return out


def call_name(name: str, call: int) -> str:
    """The name of the ``call``-th call (0-based) of a module within one forward pass: ``name``, then
    ``name#2``, ``name#3``..."""
    return name if call == 0 else f"{name}#{call + 1}"


def layer_infos(model: nn.Module, calls: Sequence[str] | None = None) -> list[LayerInfo]:
    """Leaf modules as core-style :class:`~core.callbacks.LayerInfo`, in input-to-output order.

    ``calls`` is the qualified names of the leaf modules in the order one forward pass called them
    (repeats included); without it, registration order (``model.named_modules()``) is used, which is
    wrong for a shared activation module.  Every call of an activation module is its own layer
    (:func:`call_name`), so the pairing of a ``nn.Linear`` with the activation applied to its outputs
    (:func:`gradmon.layout.units_from_run`) follows the forward pass; later calls of other modules are
    skipped.  Names are :func:`display_names`; parameters keep torch's keys (``"0.weight"``).
    """
    modules = dict(model.named_modules())
    names = display_names(model)
    order = list(calls) if calls is not None else list(names)
    infos: list[LayerInfo] = []
    counts: dict[str, int] = {}
    for qual in order:
        module = modules[qual]
        call = counts.get(qual, 0)
        counts[qual] = call + 1
        name = names[qual]
        if type(module) in ACTIVATION_MODULES:
            kind = ACTIVATION_MODULES[type(module)]
            infos.append(LayerInfo(name=call_name(name, call), kind=kind, activation=kind))
            continue
        if call > 0:
            continue
        prefix = f"{qual}." if qual else ""
        params = tuple(f"{prefix}{p}" for p, _ in module.named_parameters(recurse=False))
        if isinstance(module, nn.Linear):
            infos.append(LayerInfo(name=name, kind="dense", params=params, units=module.out_features))
        elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            infos.append(LayerInfo(name=name, kind="batchnorm", params=params))
        elif isinstance(module, nn.modules.dropout._DropoutNd):
            infos.append(LayerInfo(name=name, kind="dropout"))
        else:
            infos.append(LayerInfo(name=name, kind=type(module).__name__.lower(), params=params))
    return infos


# -- the watcher -------------------------------------------------------------------------------------------
class Watcher:
    """Feeds a :class:`~gradmon.monitor.Monitor` from a PyTorch model (and optimizer).

    Parameters
    ----------
    model: the ``nn.Module`` to watch (a ``DistributedDataParallel`` wrapper is unwrapped).  Under
        ``torch.distributed``, call ``watch()`` after ``init_process_group`` on every rank.
    optimizer: its step hooks mark steps; without one, call :meth:`step` after each ``backward()``.
    logdir: where TensorBoard events and reports go (rank 0 only); None keeps everything in memory.
    probe: ``(x, y)``, a fixed batch for curvature (needs ``loss_fn``); ``x`` is a tensor or a tuple of
        positional inputs.
    loss_fn: ``loss_fn(model_output, y) -> scalar tensor``; with it and no probe, curvature is measured on
        the last batch whose targets :meth:`log_loss` received.
    loss: the loss's name for the report (guessed from ``loss_fn`` for torch's own losses).
    name: the run's name in reports (default: the model's class name).
    expected_steps: the number of steps if known (0: unknown), so findings are judged at a fitting cadence.
    scaler: the ``torch.amp.GradScaler`` of a mixed-precision loop.  Its gradients carry the loss scale after
        ``backward()``; the watcher divides it out (and does not mistake ``scaler.unscale_`` for clipping).
        A step the scaler skips (Inf/NaN in the scaled gradients) is not a step.
    monitor_options: passed to :class:`~gradmon.monitor.Monitor` (``every``, ``curvature_every``,
        ``console``, ``tensorboard``...).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 logdir: str | os.PathLike | None = None, *, probe: tuple[Any, Any] | None = None,
                 loss_fn: Callable | None = None, loss: str = "unknown", name: str | None = None,
                 expected_steps: int = 0, scaler: Any = None, **monitor_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # the hooks belong on the real modules; DDP only wraps them
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"watch(optimizer=...) needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if probe is not None and loss_fn is None:
            raise ValueError("watch(probe=...) needs loss_fn=... to evaluate the probe batch, "
                             "e.g. loss_fn=torch.nn.functional.cross_entropy")
        if probe is not None and (not isinstance(probe, (tuple, list)) or len(probe) != 2):
            raise ValueError("watch(probe=...) must be a pair (x, y) of model inputs and targets")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
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
        self.monitor = Monitor(logdir=logdir, **monitor_options)
        self.hook_seconds = 0.0  # wall time spent inside the watcher's hooks and methods
        self._named = [(n, p) for n, p in model.named_parameters()]
        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise ValueError("the model has no nn.Linear layer for gradmon to monitor")
        self._names = display_names(model)
        if loss == "unknown" and loss_fn is not None:
            loss = LOSS_NAMES.get(loss_fn, LOSS_NAMES.get(type(loss_fn), "unknown"))
        self._loss_name = loss
        self._run_name = name or type(model).__name__
        self._expected_steps = int(expected_steps)
        self.run = self._run_info(layer_infos(model))  # provisional: replaced by the call-order layout
        self._started = False
        self._closed = False
        # step bookkeeping
        self._step = 0                                    # index of the next step to begin
        self._pending: StepState | None = None            # measured, waiting for its update and/or loss
        self._settled = False                             # the pending step's update is known
        self._loss: float | None = None                   # a loss logged before its step began
        self._loss_backwards = 0                          # backward passes done when it was logged
        self._backwards = 0                               # backward passes done so far
        self._batch = 0
        # gradients read at the end of backward: (the .grad tensors and their version counters, their norms
        # as one vector on their device)
        self._bw: tuple[list[tuple[str, torch.Tensor, int]], Any] | None = None
        self._queued = False
        self._hook_error: str | None = None
        # weights: detached aliases (they follow in-place updates), zero gradients and update buffers
        self._param_ptrs: tuple[int, ...] = ()
        self._param_views: dict[str, torch.Tensor] = {}
        self._zeros: dict[str, torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._snapshot = False
        # forward passes: trace, activation captures, last inputs
        self._paused = False
        self._tracing = True
        self._trace: list[str] = []
        self._capture = False
        self._acts: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._first_input: Any = None                     # the first unit's input on a capture step
        self._last_batch: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None

        self._handles: list[Any] = []
        self._trace_handles: list[Any] = []
        modules = dict(model.named_modules())
        for qual in self._names:
            module = modules[qual]
            self._trace_handles.append(module.register_forward_hook(self._trace_hook(qual)))
            if type(module) in ACTIVATION_MODULES:
                self._handles.append(module.register_forward_hook(self._capture_hook(self._names[qual])))
        # the root module's hooks: the trace starts with a forward pass of the model and ends with it; the
        # inputs are kept for curvature on the last batch (no hook at all otherwise: hooks cost time)
        pre_hooks = self._handles if (loss_fn is not None and probe is None) else self._trace_handles
        pre_hooks.append(model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        self._trace_handles.append(model.register_forward_hook(self._root_hook))
        for _, p in self._named:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_ready))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, a, k: self._optimizer_pre_step()))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, a, k: self._optimizer_post_step()))
        self._arm()

    # -- the run ------------------------------------------------------------------------------------------
    def _run_info(self, infos: list[LayerInfo]) -> RunInfo:
        optimizer = self.optimizer
        group = optimizer.param_groups[0] if optimizer is not None else {}
        name = OPTIMIZER_NAMES.get(type(optimizer).__name__, type(optimizer).__name__.lower()) \
            if optimizer is not None else "none"
        momentum = float(group.get("momentum", 0.0) or 0.0)
        if name == "sgd" and momentum > 0:
            name = "momentum"
        hyper = {"lr": float(group.get("lr", float("nan")))}
        if "momentum" in group:
            hyper["momentum"] = momentum
        run = RunInfo(layers=tuple(infos), loss=self._loss_name, optimizer=name, hyperparams=hyper,
                      batch_size=0, batch_mode="mini-batch", n_train=0, epochs=1,
                      steps_per_epoch=self._expected_steps,
                      probe=self._probe_objective if self.probe is not None else None, framework="torch")
        return dataclasses.replace(run, spec={"name": self._run_name, **spec_from_run(run)})

    def _start(self) -> None:
        """Fix the layout (from the traced call order) and start the monitor; once, at the end of the first
        forward pass (or at the first step, report or close if no forward pass was seen)."""
        if self._started:
            return
        self._started = True
        self._tracing = False
        for h in self._trace_handles:
            h.remove()
        self._trace_handles = []
        if self._trace:
            infos = layer_infos(self.model, self._trace)
            if any(i.kind == "dense" for i in infos):
                self.run = self._run_info(infos)
        self.monitor.on_train_begin(self.run)
        self._hook_first_unit()
        if self.monitor.curvature_every > 0 and self.probe is None and self.loss_fn is None:
            self._note("curvature is off: give watch(..., loss_fn=F.cross_entropy) and "
                       "watcher.log_loss(loss, target=y) to measure it on the last batch, or "
                       "watch(..., probe=(x, y), loss_fn=...) for a fixed probe batch", console=True)

    def _hook_first_unit(self) -> None:
        """Capture the first unit's input on capture steps (its per-feature scale: unscaled inputs)."""
        units = self.monitor.units
        if not units or not units[0].params:
            return
        qual = units[0].params[0].rpartition(".")[0]
        module = dict(self.model.named_modules()).get(qual)
        if module is None:
            return

        def hook(module: nn.Module, args: tuple) -> None:
            if self._capture and not self._paused and self._first_input is None and torch.is_grad_enabled() \
                    and args and isinstance(args[0], torch.Tensor):
                self._first_input = args[0].detach()
        self._handles.append(module.register_forward_pre_hook(hook))

    def _note(self, text: str, console: bool = False) -> None:
        self.monitor.add_note(text, console=console)

    # -- hooks ----------------------------------------------------------------------------------------
    def _trace_hook(self, qual: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._tracing and not self._paused:
                self._trace.append(qual)
        return hook

    def _capture_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._paused or not self._capture:
                return
            if not torch.is_grad_enabled():  # an evaluation pass: not part of a training step
                return
            t0 = time.perf_counter()
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            if isinstance(output, torch.Tensor):
                key = call_name(name, call)
                if key not in self._acts:  # the first training forward pass after a step is the step's
                    self._acts[key] = output.detach()
                    if output.dim():
                        self._batch = int(output.shape[0])
            self.hook_seconds += time.perf_counter() - t0
        return hook

    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._paused:
            return
        if not self._batch and args and isinstance(args[0], torch.Tensor) and args[0].dim():
            self._batch = int(args[0].shape[0])  # the batch size, even when no activation module is seen
        if self._tracing:  # the layout is traced from one whole forward pass of the model
            self._trace = []
        if self.loss_fn is not None and self.probe is None and torch.is_grad_enabled():
            self._inputs = (args, kwargs)  # (not evaluation passes)

    def _root_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._started and not self._paused:
            t0 = time.perf_counter()
            self._start()
            self.hook_seconds += time.perf_counter() - t0

    def _arm(self) -> None:
        """After a step (and at the start): capture the activations of the next training forward pass if
        the monitor measures the coming step; the call counts of shared modules start again."""
        self._capture = "activations" in self.monitor.requests(self._step)
        self._acts = {}
        self._calls = {}
        self._first_input = None

    def _grad_ready(self, param: torch.Tensor) -> None:
        """A parameter's ``.grad`` was accumulated: read every gradient once this backward is over (one pass
        at the end costs less than one per parameter)."""
        if self._queued or self._paused:
            return
        self._queued = True
        # queued twice: DDP queues its own end-of-backward callback (which writes the averaged gradients
        # into p.grad) during the backward pass; a callback queued by a callback runs after it
        _ENGINE.queue_callback(self._queue_read)

    def _queue_read(self) -> None:
        _ENGINE.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        """End of a ``backward()``: the norm of every ``p.grad`` (averaged over ranks under DDP, not yet
        clipped), computed where the gradients live.  With gradient accumulation ``p.grad`` holds the sum so
        far, so the last reading before the step is the accumulated gradient."""
        self._queued = False
        self._backwards += 1
        t0 = time.perf_counter()
        # an in-place change of a gradient (clipping, unscaling) bumps its version counter, so the step can
        # tell whether it changed since.  Under a GradScaler the norms are those of the unscaled gradients.
        try:
            read = [(name, p.grad, p.grad._version) for name, p in self._named if p.grad is not None]
            values = norms([g for _, g, _ in read])
            if self.scaler is not None and self.scaler.is_enabled() and read:
                values = values / self.scaler.get_scale()
            self._bw = (read, values)
        except Exception as exc:  # a monitor must never break training: fall back to reading at step time
            self._bw = None
            if self._hook_error is None:
                self._hook_error = f"{type(exc).__name__}: {exc}"
                print(f"[gradmon] reading gradients during backward failed ({self._hook_error}); gradients are "
                      f"read at the optimizer step instead (after any clipping)", file=sys.stderr)
        self.hook_seconds += time.perf_counter() - t0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: hooks ignore the forward and backward passes inside (curvature probes)."""
        before = self._paused
        self._paused = True
        try:
            yield
        finally:
            self._paused = before

    # -- steps ----------------------------------------------------------------------------------------
    def _params(self) -> dict[str, torch.Tensor]:
        """Detached aliases of the parameters, cached while their storage stays the same (in-place updates
        keep it; ``model.to(...)`` or ``.double()`` replace it, and the aliases are rebuilt)."""
        ptrs = tuple(p.data_ptr() for _, p in self._named)
        if ptrs != self._param_ptrs:
            self._param_views = {n: p.detach() for n, p in self._named}
            self._param_ptrs = ptrs
        return self._param_views

    def _gradients(self) -> tuple[dict[str, torch.Tensor], Any, Any]:
        """The gradients as they are now (zeros where a parameter has none), the norm of each as read at
        the end of the last backward (pre-clip; read now where no backward was seen), as one vector on the
        gradients' device, and the clip coefficient ``‖g now‖ / ‖g after backward‖`` (1.0 when no gradient
        changed in between, which the version counters tell without reading them)."""
        grads: dict[str, torch.Tensor] = {}
        current: dict[str, torch.Tensor | None] = {}
        for name, p in self._named:
            g = current[name] = p.grad
            if g is None:
                g = self._zeros.get(name)
                if g is None or g.shape != p.shape or g.device != p.device:
                    g = self._zeros[name] = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
            grads[name] = g
        bw, self._bw = self._bw, None
        self._queued = False  # (a backward that raised never ran its end-of-backward callback)
        now = norms(list(grads.values()))
        if bw is None:
            return grads, now * now, 1.0
        read, values = bw
        position = {name: i for i, name in enumerate(grads)}
        pre = now.clone()
        index = torch.tensor([position[name] for name, _, _ in read], device=now.device)
        pre[index] = values.to(now.dtype)
        changed = any(current.get(name) is not g or g._version != version for name, g, version in read)
        clip_coef: Any = 1.0
        if changed:
            total_pre = torch.sqrt(torch.sum(pre * pre))
            clip_coef = torch.where(torch.isfinite(total_pre) & (total_pre > 0),
                                    torch.sqrt(torch.sum(now * now)) / total_pre, torch.ones_like(total_pre))
        return grads, pre * pre, clip_coef

    def _begin_step(self, lr: float) -> None:
        """Measure one step: after ``backward()``, before the update."""
        self._start()
        self._finish()  # the previous step, if its loss never came
        step = self._step
        self._step += 1
        grads, sq, clip_coef = self._gradients()
        params = self._params()
        acts = dict(self._acts) if self._capture and self._acts else None
        # a loss logged before this step belongs to it only if no backward ran since (a skipped step's loss
        # would otherwise be this one's, and every loss after it one step late)
        loss_known = self._loss is not None and self._loss_backwards == self._backwards
        state = StepState(step=step, epoch=0, loss=self._loss if loss_known else float("nan"),
                          batch_size=self._batch, params=params, grads=grads, lr=lr, activations=acts,
                          clip_coef=clip_coef, objective=self._last_batch_objective(step), loss_known=loss_known,
                          grad_sq_norms=sq, inputs=self._first_input if self._capture else None)
        self._loss = None
        # the update needs the weights before the step; only the units' weights enter update ratios
        self._snapshot = self.monitor.will_record_update(step)
        if self._snapshot:
            with torch.no_grad():
                for key in (k for u in self.monitor.units for k in u.weights):
                    buf = self._before.get(key)
                    if buf is None or buf.shape != params[key].shape or buf.device != params[key].device:
                        buf = self._before[key] = torch.empty_like(params[key])
                    buf.copy_(params[key])
        self.monitor.on_after_backward(state)
        self._pending, self._settled = state, False

    def _settle(self) -> None:
        """The pending step's update is known now (the weights changed since it was measured)."""
        state = self._pending
        if state is None or self._settled:
            return
        if self._snapshot:
            after = self._params()
            with torch.no_grad():
                for key, buf in self._before.items():
                    torch.sub(after[key], buf, out=buf)  # buffers are reused: nothing keeps them past the step
            state.update = dict(self._before)
        self._snapshot = False
        self._settled = True

    def _optimizer_pre_step(self) -> None:
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self._begin_step(float(lr))
        self.hook_seconds += time.perf_counter() - t0

    def _optimizer_post_step(self) -> None:
        t0 = time.perf_counter()
        self._settle()
        if self._pending is not None and self._pending.loss_known:
            self._finish()
        self._arm()
        self.hook_seconds += time.perf_counter() - t0

    def step(self, lr: float | None = None) -> None:
        """Mark a step in loops without an optimizer: call once per step, after ``backward()``.

        Call it before your update for exact attribution (the update measured for a step is the change of
        the weights until the next ``step()`` call).  ``lr`` is the learning rate of this step (NaN when
        not given), which curvature compares against ``2/lr``.
        """
        if self.optimizer is not None:
            raise RuntimeError("watch(optimizer=...) marks steps itself (optimizer step hooks); call "
                               "watcher.step() only in loops without an optimizer")
        t0 = time.perf_counter()
        self._settle()
        self._finish()
        self._begin_step(float(lr) if lr is not None else float("nan"))
        self._arm()
        self.hook_seconds += time.perf_counter() - t0

    def log_loss(self, loss: Any, target: Any = None) -> None:
        """Give the loss of the current step (a tensor or float), before or after the step.

        ``target``: the targets of the batch this loss was computed on; with ``watch(loss_fn=...)`` and no
        probe, curvature is measured on this batch (the inputs of the last forward pass, kept by reference).
        """
        t0 = time.perf_counter()
        value = float(loss.item()) if isinstance(loss, torch.Tensor) else float(loss)
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
            self._loss, self._loss_backwards = value, self._backwards
        self.hook_seconds += time.perf_counter() - t0

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
        if state is None:
            return
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

    # -- results --------------------------------------------------------------------------------------
    def report(self):
        """The health report so far (see :class:`gradmon.HealthReport`)."""
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
        self._start()
        self._finish()  # without an optimizer the last step's update stays unknown (NaN)
        self._remove_hooks()
        if (self.monitor.curvature_every > 0 and not self.monitor.curvature and self.probe is None
                and self.loss_fn is not None and self._step > self.monitor.curvature_every):
            self._note("curvature was not measured: pass the targets with watcher.log_loss(loss, target=y)")
        if self.world > 1:  # every rank judged its own shard: rank 0 merges and alone writes
            from gradmon.adapters.distributed import merge_ranks

            self.monitor.judge_now()
            merge_ranks(self.monitor)
        self.monitor.on_train_end({"steps": self._step, "stopped": None})

    def _remove_hooks(self) -> None:
        for h in self._handles + self._trace_handles:
            h.remove()
        self._handles, self._trace_handles = [], []

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._closed = True
            self._start()
            self._finish()
            self._remove_hooks()
            self.monitor.on_exception(exc, None)
        else:
            self.close()


_ENGINE = torch.autograd.Variable._execution_engine


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
