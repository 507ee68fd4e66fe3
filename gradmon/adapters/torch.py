"""PyTorch adapter: watch any ``nn.Module`` training loop with the same monitor, findings and reports.

>>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1")   # doctest: +SKIP
>>> for x, y in loader:                                                        # doctest: +SKIP
...     loss = F.cross_entropy(model(x), y)
...     opt.zero_grad(); loss.backward(); opt.step()   # gradients are read before each step
...     watcher.log_loss(loss)
>>> report = watcher.report(); watcher.close()                                 # doctest: +SKIP

How it reads the loop:
- Gradients are read in an optimizer step *pre*-hook, i.e. after ``backward`` and before the update (never
  after ``zero_grad``), as zero-copy numpy views of ``p.grad``; the update is ``θ_after - θ_before`` in a
  post-hook.  Without an optimizer, call :meth:`Watcher.step` after ``backward`` yourself.
- Activations come from forward hooks on activation modules (``nn.ReLU(inplace=True)`` included: the hook
  sees the module's output).  Functional activations (``F.relu``) are not visible; gradient quantities still
  work.
- Curvature uses exact Hessian-vector products by double backward on a probe batch (``probe=(x, y)`` and
  ``loss_fn``), with hooks off, dropout off and BatchNorm buffers copied so running statistics don't move.
- Under ``torch.distributed`` each rank measures and judges locally (gradients are already averaged by
  DDP); at ``close()`` rank 0 gathers every rank's report, averages activation statistics over ranks, names
  the ranks of findings they disagree on, and alone writes TensorBoard events and reports
  (see :mod:`gradmon.adapters.distributed`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from core.callbacks import LayerInfo, RunInfo, StepState, readonly
from gradmon.monitor import Monitor

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


def layer_infos(model: nn.Module) -> tuple[list[LayerInfo], dict[str, nn.Module]]:
    """Leaf modules in registration order as core-style LayerInfos, and the activation modules by name.

    Names are the modules' qualified names (``"net.0"``); parameters keep torch's keys (``"net.0.weight"``).
    """
    infos: list[LayerInfo] = []
    acts: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        name = name or type(module).__name__.lower()
        params = tuple(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
        if isinstance(module, nn.Linear):
            infos.append(LayerInfo(name=name, kind="dense", params=params, units=module.out_features))
        elif type(module) in ACTIVATION_MODULES:
            infos.append(LayerInfo(name=name, kind=ACTIVATION_MODULES[type(module)],
                                   activation=ACTIVATION_MODULES[type(module)]))
            acts[name] = module
        elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            infos.append(LayerInfo(name=name, kind="batchnorm", params=params))
        elif isinstance(module, nn.Dropout):
            infos.append(LayerInfo(name=name, kind="dropout"))
        else:
            infos.append(LayerInfo(name=name, kind=type(module).__name__.lower(), params=params))
    return infos, acts


class TorchObjective:
    """The loss of a fixed batch as a function of the parameters, with exact HVPs by double backward.

    Parameters and vectors are numpy dicts keyed like ``model.named_parameters()``.
    """

    def __init__(self, watcher: "Watcher", x: Any, y: Any, loss_fn: Callable) -> None:
        self.watcher = watcher
        self.x, self.y, self.loss_fn = x, y, loss_fn
        self.n_hvp = 0

    def _call(self, params: Mapping[str, np.ndarray] | None, create_graph: bool):
        model = self.watcher.model
        names = [n for n, _ in model.named_parameters()]
        live = dict(model.named_parameters())
        tensors = {}
        for n in names:
            ref = live[n]
            value = ref.detach() if params is None else torch.as_tensor(np.asarray(params[n]), dtype=ref.dtype)
            tensors[n] = value.clone().requires_grad_(True)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        with self.watcher.paused(), _dropout_off(model):
            out = torch.func.functional_call(model, {**tensors, **buffers}, (self.x,))
            loss = self.loss_fn(out, self.y)
        grads = torch.autograd.grad(loss, [tensors[n] for n in names], create_graph=create_graph)
        return names, tensors, loss, grads

    def grad(self, params: Mapping[str, np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
        names, _, loss, grads = self._call(params, create_graph=False)
        return float(loss.detach()), {n: g.detach().double().numpy() for n, g in zip(names, grads)}

    def hvp(self, vec: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        self.n_hvp += 1
        names, tensors, _, grads = self._call(params, create_graph=True)
        v = [torch.as_tensor(np.asarray(vec[n]), dtype=tensors[n].dtype) for n in names]
        hv = torch.autograd.grad(grads, [tensors[n] for n in names], grad_outputs=v, allow_unused=True)
        return {n: (h.detach().double().numpy() if h is not None else np.zeros(tensors[n].shape))
                for n, h in zip(names, hv)}


class _dropout_off:
    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]

    def __enter__(self) -> None:
        for m in self.modules:
            m.training = False

    def __exit__(self, *exc: Any) -> None:
        for m in self.modules:
            m.training = True


class Watcher:
    """Feeds a :class:`~gradmon.monitor.Monitor` from a PyTorch model and optimizer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 logdir: str | os.PathLike | None = None, *, probe: tuple[Any, Any] | None = None,
                 loss_fn: Callable | None = None, loss: str = "unknown", expected_steps: int = 0,
                 **monitor_options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.rank, self.world = _dist_rank()
        if self.rank != 0:  # only rank 0 writes
            logdir = None
            monitor_options["console"] = False
        if probe is not None and loss_fn is None:
            raise ValueError("watch(probe=...) needs loss_fn=... to evaluate the probe batch")
        self.monitor = Monitor(logdir=logdir, **monitor_options)
        self.loss_fn = loss_fn
        self.probe = probe
        infos, self._act_modules = layer_infos(model)
        if not any(i.kind == "dense" for i in infos):
            raise ValueError("the model has no nn.Linear layer for gradmon to monitor")
        self._step = 0
        self._paused = False
        self._capture = False
        self._acts: dict[str, np.ndarray] = {}
        self._pending: StepState | None = None
        self._done = False
        self._before: dict[str, np.ndarray] = {}
        self._loss: float | None = None
        self._batch = 0
        self._named = list(model.named_parameters())  # the same tensors all run long (updates are in place)
        self._param_views: dict[str, np.ndarray] | None = None
        self._handles = [m.register_forward_hook(self._forward_hook(n)) for n, m in self._act_modules.items()]
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, a, k: self._before_step()))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, a, k: self._after_step()))
        group = optimizer.param_groups[0] if optimizer is not None else {}
        name = OPTIMIZER_NAMES.get(type(optimizer).__name__, type(optimizer).__name__.lower()) if optimizer else "none"
        momentum = float(group.get("momentum", 0.0) or 0.0)
        if name == "sgd" and momentum > 0:
            name = "momentum"
        hyper = {"lr": float(group.get("lr", float("nan")))}
        if "momentum" in group:
            hyper["momentum"] = momentum
        self.run = RunInfo(layers=tuple(infos), loss=loss, optimizer=name, hyperparams=hyper, batch_size=0,
                           batch_mode="mini-batch", n_train=0, epochs=1, steps_per_epoch=int(expected_steps),
                           probe=self._probe_objective if probe is not None else None, framework="torch")
        self.monitor.on_train_begin(self.run)
        self._closed = False
        self._arm()

    # -- hooks ----------------------------------------------------------------------------------------
    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._capture and not self._paused and isinstance(output, torch.Tensor):
                self._acts[name] = output.detach()
                self._batch = int(output.shape[0]) if output.dim() else 0
        return hook

    def paused(self):
        """Context manager: hooks ignore the forward passes inside (curvature probes)."""
        watcher = self

        class _Pause:
            def __enter__(self_inner) -> None:
                watcher._paused = True

            def __exit__(self_inner, *exc: Any) -> None:
                watcher._paused = False
        return _Pause()

    def _arm(self) -> None:
        """Capture activations of the next forward pass when the monitor measures the next step."""
        self._capture = "activations" in self.monitor.requests(self._step)
        self._acts = {}

    # -- steps ----------------------------------------------------------------------------------------
    def _params(self) -> dict[str, np.ndarray]:
        """Numpy views of the parameters (zero-copy on CPU: they follow in-place updates)."""
        if self._param_views is None or any(t.device.type != "cpu" for _, t in self._named):
            views = {n: p.detach().cpu().numpy() for n, p in self._named}
            if all(t.device.type == "cpu" for _, t in self._named):
                self._param_views = views
            return views
        return self._param_views

    def _before_step(self) -> None:
        """Inside ``optimizer.step()``, before the update: measure the gradients it is about to apply."""
        self._finish()  # the previous step, if it never got a loss
        grads = {}
        for n, p in self._named:
            g = p.grad
            grads[n] = g.detach().cpu().numpy() if g is not None else np.zeros(tuple(p.shape), dtype=np.float32)
        params = self._params()
        acts = {n: a.cpu().numpy() for n, a in self._acts.items()} if self._capture else None
        lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else float("nan")
        loss_known = self._loss is not None  # logged before opt.step(): it belongs to this step
        state = StepState(step=self._step, epoch=0, loss=self._loss if loss_known else float("nan"),
                          batch_size=self._batch, params=readonly(params), grads=readonly(grads), lr=lr,
                          activations=readonly(acts) if acts is not None else None)
        state.extras["loss_missing"] = not loss_known
        self._loss = None
        # the views above see the live tensors: measure now, before the optimizer changes them
        # the update needs the weights before the step; only weights enter update ratios
        self._before = {n: v.copy() for n, v in params.items() if n.endswith(".weight")} \
            if self.monitor.will_record_update(self._step) else {}
        self.monitor.on_after_backward(state)
        self._pending, self._done = state, False

    def _after_step(self) -> None:
        state = self._pending
        if state is None:
            return
        if self._before:
            after = self._params()
            state.update = readonly({n: after[n] - self._before[n] for n in self._before})
        self._before = {}
        self._done = True
        if not state.extras["loss_missing"]:
            self._finish()

    def step(self) -> None:
        """Mark a step in loops without an optimizer: call after ``backward`` (and after the update)."""
        self._before_step()
        self._after_step()

    def log_loss(self, loss: Any) -> None:
        """Give the loss of the current step (a tensor or float), before or after ``opt.step()``."""
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if self._pending is not None and self._done:
            self.monitor.log_loss(value)
            self._pending.extras["loss_missing"] = False
            self._finish()
        else:
            self._loss = value

    def _finish(self) -> None:
        """Close the pending step (``on_step_end``) and get ready for the next forward pass."""
        state, self._pending = self._pending, None
        if state is not None:
            self.monitor.on_step_end(state)
            self._step += 1
            self._arm()

    def _probe_objective(self, n: int, seed: int) -> TorchObjective:
        x, y = self.probe
        return TorchObjective(self, x[:n], y[:n], self.loss_fn)

    # -- results --------------------------------------------------------------------------------------
    def report(self):
        """The health report so far (see :class:`gradmon.HealthReport`)."""
        self._finish()
        return self.monitor.report()

    def close(self) -> None:
        """Remove the hooks and write the report files (rank 0)."""
        if self._closed:
            return
        self._closed = True
        self._finish()
        for h in self._handles:
            h.remove()
        if self.world > 1:  # every rank judged its own shard: rank 0 merges and alone writes
            from gradmon.adapters.distributed import gather_reports, merge_reports

            self.monitor.judge_now()
            reports = gather_reports(self.monitor.report().to_dict())
            if reports is not None:
                self.monitor.merged = merge_reports(reports)
        self.monitor.on_train_end({"steps": self._step, "stopped": None})

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._finish()
            self.monitor.on_exception(exc, None)
            for h in self._handles:
                h.remove()
            self._closed = True
        else:
            self.close()


def _dist_rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
          logdir: str | os.PathLike | None = None, **options: Any) -> Watcher:
    """Attach gradmon to a PyTorch model (and optimizer); see :class:`Watcher` for options."""
    return Watcher(model, optimizer=optimizer, logdir=logdir, **options)
