"""The hook protocol between a training loop and whoever watches it.

A training loop emits events; a callback overrides only the hooks it needs (all are no-ops by default) and
the dispatcher in :class:`CallbackList` skips hooks nobody overrides.  Payloads are plain numpy arrays,
handed out as read-only views: a callback that only watches cannot change training.

Order of events for one run::

    on_train_begin(run)
    for each epoch:
        for each batch:
            requests(step)              # what the callbacks want kept this step
            on_after_backward(state)    # gradients before clipping; activations when requested
            on_step_end(state)          # the applied update, clip coefficient, learning rate
        on_epoch_end(epoch, logs)
    on_train_end(logs)                  # or on_exception(exc, state) when anything from on_train_begin
                                        # to on_train_end raises (Ctrl-C included); state may be None

Any loop (core's Trainer, a PyTorch adapter, a hand-written numpy loop) can drive a callback through
these events; ``gradmon`` never needs to know which loop it watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np

#: Names a callback may return from ``requests(step)``: ``activations`` (with ``alive`` for rectifiers),
#: ``curvature`` (an ``objective``), ``grad_norms`` (``grad_sq_norms`` and ``grad_norm``).
REQUESTS = frozenset({"activations", "curvature", "grad_norms"})

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one layer.

    ``kind`` is the lower-case class name (``dense``, ``relu``, ``batchnorm``...); ``params`` lists the
    keys of its parameters in ``model.parameters()``; ``activation`` is set on activation layers;
    ``init`` and ``bias_init`` on Dense layers; ``units`` is the output width.
    """

    name: str
    kind: str
    params: tuple[str, ...] = ()
    units: int | None = None
    activation: str | None = None
    init: str | None = None
    bias_init: float | None = None


class Objective(Protocol):
    """The loss of one batch (or of a fixed probe set) as a function of the parameters.

    ``grad(params)`` returns ``(loss, grads)`` keyed like ``params``; ``hvp(vec, params)`` returns the
    Hessian-vector product keyed likewise (exact where the loop can do it).  ``params=None`` means the
    current parameters.  Parameters and vectors are dicts of float64 arrays.
    """

    def grad(self, params: Arrays | None = None) -> tuple[float, dict[str, np.ndarray]]: ...

    def hvp(self, vec: Arrays, params: Arrays | None = None) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class RunInfo:
    """Everything known about a run before its first step.

    ``hyperparams`` holds the optimizer's settings (``lr``, ``momentum``, ``beta1``...).
    ``batch_mode`` is ``"batch"``, ``"mini-batch"`` or ``"stochastic"``.  ``probe(n, seed)`` returns an
    :class:`Objective` over ``n`` training examples drawn once (all of them when fewer), used for
    curvature; it is ``None`` where the loop cannot provide it.  ``spec`` is the resolved run spec when the
    run came from one.  ``frozen`` names what the loop holds but does not train (PyTorch parameters with
    ``requires_grad=False``, as ``"layer (param, ...)"``): listed in reports, never measured.
    """

    layers: tuple[LayerInfo, ...]
    loss: str
    optimizer: str
    hyperparams: Mapping[str, float]
    batch_size: int
    batch_mode: str
    n_train: int
    epochs: int
    steps_per_epoch: int
    clip_norm: float | None = None
    clip_value: float | None = None
    l2: float = 0.0
    dtype: str = "float32"
    seed: int | None = None
    task: str = "classification"
    probe: Callable[[int, int], Objective] | None = None
    spec: Mapping[str, Any] | None = None
    framework: str = "core"
    frozen: tuple[str, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def lr(self) -> float:
        return float(self.hyperparams.get("lr", float("nan")))

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer named {name!r}; layers are {[i.name for i in self.layers]}")


@dataclass
class StepState:
    """One training step as seen by callbacks.

    Shapes: ``params[k]`` and ``grads[k]`` have the parameter's shape; ``activations[name]`` is a layer's
    output of shape ``(batch, units)`` (``(batch, channels, *spatial)`` for convolutions in other loops);
    ``preactivations[name]`` is the input of activation layer ``name``.  ``grads`` are the raw gradients of
    the loss (L2 term included) before clipping.  ``update[k]`` is the change applied to ``params[k]`` (only
    in ``on_step_end``).  ``clip_coef`` is the factor the global norm clipping multiplied the gradient by
    (1.0 when no clipping happened).  ``objective`` re-evaluates this batch (same dropout masks and batch
    statistics).

    Arrays are numpy arrays in core's loop; other loops may hand out any array of the Python array API
    (PyTorch tensors on their own device): a callback computes on them with their own namespace.

    Typed measurements a loop may provide because it has them for free (None: the callback computes them):

    - ``loss_known``: False when the loop learns the step's loss only later (``loss`` is then NaN).
    - ``grad_sq_norms``: ``(len(grads),)`` float64, the squared L2 norm of each gradient in ``grads``' key
      order, computed as the gradient was written, before clipping.
    - ``grad_norm``: the global norm of ``grads`` (float64-exact; ``inf``/``nan`` only when a gradient
      value is).
    - ``alive``: for each rectifier activation layer (ReLU, LeakyReLU), a boolean ``(units,)``: the unit was
      positive for at least one example of the batch (kept from the forward pass, with activations); or, as
      the PyTorch adapter gives it, each unit's largest output over the batch (positive: alive), reduced
      while the activation was fresh in memory.

    Core's Trainer gives ``grad_sq_norms`` and ``grad_norm`` with the ``grad_norms`` request (and at every
    step when it clips by norm: it computes them anyway), ``alive`` with ``activations``, never ``lrs``.
    - ``lrs``: the learning rate of each parameter key where parameter groups differ (None: ``lr`` for all).
    - ``inputs``: the batch as the first layer receives it, ``(batch, features)`` (``(batch, channels,
      *spatial)`` for convolutions); core gives it with ``activations``.

    Lifetime: every array is a read-only view of the loop's own storage, valid only during the hook call.
    ``activations``, ``preactivations`` and ``alive`` are buffers the next step overwrites (the hot path
    reuses them); ``params``, ``grads`` and ``update`` change in place at every step.  A callback that keeps
    anything past the hook copies it (``arr.copy()``).
    """

    step: int
    epoch: int
    loss: float
    batch_size: int
    params: Arrays
    grads: Arrays
    lr: float
    activations: Arrays | None = None
    preactivations: Arrays | None = None
    objective: Objective | None = None
    alive: Arrays | None = None
    update: Arrays | None = None
    clip_coef: float = 1.0
    loss_known: bool = True
    grad_sq_norms: Any = None
    grad_norm: float | None = None
    lrs: Mapping[str, float] | None = None
    inputs: Any = None

    def grad_fn(self, params: Arrays) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients of this batch at ``params`` (see ARCHITECTURE.md)."""
        if self.objective is None:
            raise RuntimeError("this training loop did not provide an objective for the current batch")
        return self.objective.grad(params)


class Callback:
    """Base class: every hook is a no-op; override the ones you need."""

    def requests(self, step: int) -> set[str]:
        """Payloads wanted at ``step`` (a subset of :data:`REQUESTS`)."""
        return set()

    def on_train_begin(self, run: RunInfo) -> None:
        pass

    def on_after_backward(self, state: StepState) -> None:
        pass

    def on_step_end(self, state: StepState) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        pass

    def on_train_end(self, logs: Mapping[str, Any]) -> None:
        pass

    def on_exception(self, exc: BaseException, state: StepState | None) -> None:
        pass

    def should_stop(self) -> str | None:
        """A reason to stop training now, or ``None`` to go on.  Asked before each update (after
        ``on_after_backward``, so the step is not applied) and after each step."""
        return None


_HOOKS = ("requests", "on_train_begin", "on_after_backward", "on_step_end", "on_epoch_end",
          "on_train_end", "on_exception", "should_stop")


def _overrides(cb: object, hook: str) -> bool:
    """True when ``cb`` implements ``hook`` itself (duck-typed objects count when they have it)."""
    impl = getattr(type(cb), hook, None)
    if impl is None:
        return False
    return getattr(Callback, hook, None) is not impl


def readonly(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read-only views of ``arrays`` (no copy)."""
    out = {}
    for key, arr in arrays.items():
        view = arr.view()
        view.flags.writeable = False
        out[key] = view
    return out


class CallbackList:
    """Dispatches events to callbacks, skipping the hooks a callback leaves as no-ops."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not any(hasattr(cb, h) for h in _HOOKS):
                raise TypeError(f"{cb!r} is not a callback: it implements none of {', '.join(_HOOKS)}")
        self._by_hook = {h: [cb for cb in self.callbacks if _overrides(cb, h)] for h in _HOOKS}

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def wants(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    def requests(self, step: int) -> set[str]:
        wanted: set[str] = set()
        for cb in self._by_hook["requests"]:
            wanted |= set(cb.requests(step))
        return wanted

    def on_train_begin(self, run: RunInfo) -> None:
        for cb in self._by_hook["on_train_begin"]:
            cb.on_train_begin(run)

    def on_after_backward(self, state: StepState) -> None:
        for cb in self._by_hook["on_after_backward"]:
            cb.on_after_backward(state)

    def on_step_end(self, state: StepState) -> None:
        for cb in self._by_hook["on_step_end"]:
            cb.on_step_end(state)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        for cb in self._by_hook["on_epoch_end"]:
            cb.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: Mapping[str, Any]) -> None:
        for cb in self._by_hook["on_train_end"]:
            cb.on_train_end(logs)

    def on_exception(self, exc: BaseException, state: StepState | None) -> None:
        for cb in self._by_hook["on_exception"]:
            cb.on_exception(exc, state)

    def should_stop(self) -> str | None:
        for cb in self._by_hook["should_stop"]:
            reason = cb.should_stop()
            if reason:
                return reason
        return None
