"""``Sequential``: an ordered stack of layers with named parameters.

Layer names default to kind + position (``dense0``, ``relu1``, ``batchnorm2``...); parameters are keyed
``"<layer>.<param>"`` in layer order.  ``dtype`` is ``float32`` (default) or ``float64``; ``seed`` fixes the
initial weights and the dropout masks, so two runs with the same seed are identical bit for bit.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from core import checks
from core.callbacks import LayerInfo
from core.clipping import sq_norm_unguarded
from core.layers import BatchNorm, Context, Dense, Layer, Params

DTYPES = ("float32", "float64")


class Sequential:
    """A feed-forward network.

    >>> import core
    >>> net = core.Sequential([core.Dense(2, 8, init="he_normal"), core.ReLU(), core.Dense(8, 3)], seed=0)
    >>> list(net.parameters())
    ['dense0.weight', 'dense0.bias', 'dense2.weight', 'dense2.bias']
    """

    def __init__(self, layers: Iterable[Layer], seed: int | None = 0, dtype: str = "float32") -> None:
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.seed = checks.seed("Sequential seed", seed)
        names: set[str] = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a core layer")
            if layer.name is None:
                layer.name = f"{layer.kind}{i}"
            if layer.name in names:
                raise ValueError(f"two layers are named {layer.name!r}; layer names must be unique")
            if "." in layer.name:
                raise ValueError(f"layer name {layer.name!r} must not contain '.'")
            names.add(layer.name)
        self._check_widths()
        rng = np.random.default_rng(seed)
        values: dict[str, np.ndarray] = {}
        self._owner: dict[str, tuple[Layer, str]] = {}
        for layer in self.layers:
            for pname, value in layer.init_params(rng).items():
                key = f"{layer.name}.{pname}"
                values[key] = value
                self._owner[key] = (layer, pname)
        # all parameters live in one contiguous vector; parameters() hands out views of it, so an
        # optimizer can update everything in one pass (see flat())
        self._layout: list[tuple[str, int, int, tuple[int, ...]]] = []
        offset = 0
        for key, value in values.items():
            self._layout.append((key, offset, offset + value.size, value.shape))
            offset += value.size
        # (parameter name, position in parameters()) of each layer, for the squared norms of backward()
        self._slots: dict[str, list[tuple[str, int]]] = {layer.name: [] for layer in self.layers}
        for i, (layer, pname) in enumerate(self._owner.values()):
            self._slots[layer.name].append((pname, i))
        self.size = offset
        self._flat = np.empty(self.size, dtype=self.dtype)
        self._params = self.views(self._flat)
        for key, value in values.items():
            self._params[key][...] = value
        self.dropout_rng = np.random.default_rng(None if seed is None else [seed, 1])

    def _check_widths(self) -> None:
        width = None
        for layer in self.layers:
            if isinstance(layer, Dense):
                if width is not None and layer.in_features != width:
                    raise ValueError(f"{layer.name} expects {layer.in_features} inputs but the layer before "
                                     f"gives {width}")
                width = layer.out_features
            elif getattr(layer, "num_features", None) is not None:
                if width is not None and layer.num_features != width:
                    raise ValueError(f"{layer.name} expects {layer.num_features} features but the layer "
                                     f"before gives {width}")
            if getattr(layer, "units", None) is None and width is not None:
                layer.units = width

    # -- parameters --------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Ordered ``{"dense0.weight": W, "dense0.bias": b, ...}``: the live arrays (updated in place)."""
        return self._params

    def flat(self) -> np.ndarray:
        """All parameters as one contiguous vector of length ``size`` (the storage ``parameters()`` views)."""
        return self._flat

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a vector of length ``size`` into arrays keyed and shaped like ``parameters()`` (views)."""
        if flat.shape != (self.size,):
            raise ValueError(f"expected a vector of length {self.size}, got shape {flat.shape}")
        return {key: flat[start:stop].reshape(shape) for key, start, stop, shape in self._layout}

    @property
    def has_batchnorm(self) -> bool:
        """True when a layer uses batch statistics in training mode (then batches need 2+ examples)."""
        return any(isinstance(l, BatchNorm) for l in self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers are {', '.join(l.name for l in self.layers)}")

    @property
    def n_inputs(self) -> int:
        first = next((l for l in self.layers if isinstance(l, Dense)), None)
        if first is None:
            raise ValueError("the model has no Dense layer, so its input width is unknown")
        return first.in_features

    @property
    def n_outputs(self) -> int:
        last = next((l for l in reversed(self.layers) if isinstance(l, Dense)), None)
        if last is None:
            raise ValueError("the model has no Dense layer, so its output width is unknown")
        return last.out_features

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        return tuple(LayerInfo(name=l.name, kind=l.kind,
                               params=tuple(k for k, (owner, _) in self._owner.items() if owner is l),
                               units=l.units, activation=l.activation, init=getattr(l, "init", None),
                               bias_init=getattr(l, "bias_init", None))
                     for l in self.layers)

    def _split(self, params: Mapping[str, np.ndarray]) -> list[Params]:
        per_layer: list[Params] = [{} for _ in self.layers]
        index = {id(l): i for i, l in enumerate(self.layers)}
        for key, (layer, pname) in self._owner.items():
            per_layer[index[id(layer)]][pname] = params[key]
        return per_layer

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and BatchNorm running statistics (copies), for checkpoints."""
        out = {k: v.copy() for k, v in self._params.items()}
        for layer in self.layers:
            if hasattr(layer, "running_mean"):
                out[f"{layer.name}.running_mean"] = layer.running_mean.copy()
                out[f"{layer.name}.running_var"] = layer.running_var.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for key, arr in self._params.items():
            if key not in state:
                raise KeyError(f"checkpoint has no {key!r}")
            if state[key].shape != arr.shape:
                raise ValueError(f"checkpoint {key!r} has shape {state[key].shape}, model has {arr.shape}")
            arr[...] = state[key]
        for layer in self.layers:
            if hasattr(layer, "running_mean"):
                layer.running_mean = np.array(state[f"{layer.name}.running_mean"], dtype=float)
                layer.running_var = np.array(state[f"{layer.name}.running_var"], dtype=float)

    # -- evaluation --------------------------------------------------------------------------------
    def forward(self, x: np.ndarray, ctx: Context | None = None, params: Mapping[str, np.ndarray] | None = None,
                training: bool = True, record: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Output of shape ``(batch, n_outputs)``.  ``record``, when given, receives every layer's output
        keyed by layer name."""
        if ctx is None:
            ctx = Context(training=training, rng=self.dropout_rng)
        per_layer = self._split(self._params if params is None else params)
        dtype = next(iter(per_layer[0].values())).dtype if per_layer[0] else self.dtype
        h = np.asarray(x, dtype=dtype)
        for i, (layer, p) in enumerate(zip(self.layers, per_layer)):
            h = layer.forward(h, p, ctx)
            if i == 0:
                ctx.cache[layer.name]["first"] = True
            if record is not None:
                record[layer.name] = h
        return h

    def backward(self, g: np.ndarray, ctx: Context, params: Mapping[str, np.ndarray] | None = None,
                 grads: dict[str, np.ndarray] | None = None,
                 sq_norms: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Parameter gradients keyed like ``parameters()``, given ``g = dL/d(output)``.

        ``grads``: arrays of a previous call to write into (the trainer's storage), else new arrays.
        ``sq_norms``, when given, is a float64 array of shape ``(len(parameters()),)`` that receives each
        gradient's squared L2 norm in ``parameters()`` order, computed right after the layer wrote it
        (while it is still in cache: reading it again later costs a trip to memory); an entry is ``inf``
        or ``nan`` only when that gradient holds a non-finite value.  Call it then under
        ``np.errstate(over="ignore", invalid="ignore")``, as ``Trainer.fit`` does: a float32 norm that
        overflows is redone in float64 (see :func:`core.clipping.sq_norm_unguarded`), and without the
        errstate numpy warns about the overflow first.
        """
        if sq_norms is not None and sq_norms.shape != (len(self._owner),):
            raise ValueError(f"sq_norms must be an array of shape ({len(self._owner)},), one entry per "
                             f"parameter, got shape {sq_norms.shape}")
        per_layer = self._split(self._params if params is None else params)
        layer_grads: dict[str, Params] = {}
        if grads is not None:  # reuse the arrays of a previous call
            for key, (layer, pname) in self._owner.items():
                if key in grads:
                    layer_grads.setdefault(layer.name, {})[pname] = grads[key]
        for layer, p in zip(reversed(self.layers), reversed(per_layer)):
            lg = layer_grads.setdefault(layer.name, {})
            g = layer.backward(g, p, ctx, lg)
            if sq_norms is not None:
                for pname, i in self._slots[layer.name]:
                    sq_norms[i] = sq_norm_unguarded(lg[pname])
        if grads is None:
            return {key: layer_grads[layer.name][pname] for key, (layer, pname) in self._owner.items()}
        for key, (layer, pname) in self._owner.items():
            arr = layer_grads[layer.name][pname]
            if key not in grads:
                grads[key] = arr
            elif arr is not grads[key]:  # the layer made a new array: copy it into the caller's storage
                grads[key][...] = arr
        return grads

    def linearize(self, loss, x: np.ndarray, y: np.ndarray, params: Mapping[str, np.ndarray],
                  ctx: Context) -> "Linearization":
        """One forward and backward pass at ``params``, keeping what every Hessian-vector product at that
        point needs (the layers' caches in ``ctx``, the output and the gradient at each layer's output), so
        that each product is only the R-operator's two passes (:meth:`Linearization.hvp`)."""
        per_layer = self._split(params)
        z = self.forward(x, ctx=ctx, params=params)
        value, g = loss(z, y)
        outputs: list[np.ndarray] = [g] * len(self.layers)
        layer_grads: dict[str, Params] = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            outputs[i] = g
            g = layer.backward(g, per_layer[i], ctx, layer_grads.setdefault(layer.name, {}))
        grads = {key: layer_grads[l.name][pn] for key, (l, pn) in self._owner.items()}
        return Linearization(self, loss, y, per_layer, ctx, z, outputs, value, grads)

    def hvp(self, loss, x: np.ndarray, y: np.ndarray, params: Mapping[str, np.ndarray],
            vec: Mapping[str, np.ndarray], ctx: Context) -> tuple[float, dict[str, np.ndarray],
                                                                 dict[str, np.ndarray]]:
        """Loss, gradient and exact Hessian-vector product ``H vec`` by the R-operator (one product; for
        many at the same point, :meth:`linearize` once and call its ``hvp``).

        ``params`` and ``vec`` are keyed like ``parameters()``; all work is done in their dtype.
        """
        lin = self.linearize(loss, x, y, params, ctx)
        return lin.value, lin.grads, lin.hvp(vec)

    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Outputs in eval mode (running BatchNorm statistics, no dropout), in chunks."""
        outs = []
        for start in range(0, max(len(x), 1), batch_size):
            chunk = x[start:start + batch_size]
            if len(chunk) == 0:
                break
            outs.append(self.forward(chunk, ctx=Context(training=False)).copy())
        if not outs:
            return np.zeros((0, self.n_outputs), dtype=self.dtype)
        return np.concatenate(outs)

    def __repr__(self) -> str:
        inner = ", ".join(repr(l) for l in self.layers)
        return f"Sequential([{inner}], dtype={self.dtype.name})"


class Linearization:
    """A network's loss linearised at fixed parameters (see :meth:`Sequential.linearize`): ``hvp(vec)`` is the
    exact Hessian-vector product by the R-operator (Pearlmutter 1994), a forward pass of tangents and a
    backward pass of their gradients (the layer's ``forward_dot``/``backward_dot``), reusing the one forward
    and backward pass of the linearisation.  ``value`` and ``grads`` are the loss and gradient there."""

    def __init__(self, model: Sequential, loss, y: np.ndarray, per_layer: list[Params], ctx: Context,
                 z: np.ndarray, outputs: list[np.ndarray], value: float, grads: dict[str, np.ndarray]) -> None:
        self.model, self.loss, self.y, self.ctx = model, loss, y, ctx
        self.per_layer, self.z, self.outputs = per_layer, z, outputs
        self.value, self.grads = value, grads

    def hvp(self, vec: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``H vec`` keyed like the parameters (``vec`` likewise)."""
        model, ctx = self.model, self.ctx
        per_vec = model._split(vec)
        layers = model.layers
        # the input does not move: a first Dense layer skips its product with a zero tangent
        dz = None if isinstance(layers[0], Dense) else np.zeros_like(ctx.cache[layers[0].name].get(
            "x", self.z), dtype=self.z.dtype)
        for layer, p, v in zip(layers, self.per_layer, per_vec):
            dz = layer.forward_dot(dz, p, v, ctx)
        dg = self.loss.dot(self.z, self.y, dz)
        layer_hv: dict[str, Params] = {}
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            dg = layer.backward_dot(self.outputs[i], dg, self.per_layer[i], per_vec[i], ctx,
                                    layer_hv.setdefault(layer.name, {}))
        return {key: layer_hv[l.name][pn] for key, (l, pn) in model._owner.items()}

    def gauss_newton_trace(self, factor: np.ndarray) -> dict[str, float] | None:
        """The exact trace of the Hessian per layer, for networks where it equals the trace of the
        Gauss-Newton matrix ``Σₙ Jₙᵀ Sₙ Sₙᵀ Jₙ``: Dense layers with piecewise-linear activations (ReLU,
        LeakyReLU) and dropout, where the output is linear in each layer's own parameters, so the Hessian's
        diagonal blocks carry no second derivative of the network.  None for other layers (smooth
        activations, BatchNorm).

        ``factor``: ``(batch, outputs, k)``, ``Sₙ`` with ``Sₙ Sₙᵀ`` the Hessian of the loss in example ``n``'s
        outputs (:meth:`core.losses.Loss.gauss_newton_factor`).  Each column of each ``Sₙ`` is propagated back
        (``k`` backward passes of input gradients, batched); a Dense layer's trace is then
        ``Σₙ (‖aₙ‖² + 1) Σ_c ‖δₙ,c‖²`` (weight and bias) for its input ``aₙ`` and back-propagated ``δ``.
        """
        from core.activations import LeakyReLU, ReLU
        from core.layers import Dropout

        layers = self.model.layers
        if not all(isinstance(l, (Dense, ReLU, LeakyReLU, Dropout)) for l in layers):
            return None
        delta = np.ascontiguousarray(np.moveaxis(factor, 2, 0))  # (k, batch, outputs)
        out: dict[str, float] = {}
        for i in range(len(layers) - 1, -1, -1):
            layer, c = layers[i], self.ctx.cache[layers[i].name]
            if isinstance(layer, Dense):
                per_example = np.einsum("kno,kno->n", delta, delta)
                a = c["x"]
                out[layer.name] = float(per_example @ np.einsum("ni,ni->n", a, a) + per_example.sum())
                if i:
                    delta = delta @ self.per_layer[i]["weight"].T
            elif isinstance(layer, Dropout):
                if c.get("mask") is not None:
                    delta = delta * c["mask"]
            else:
                delta = delta * layer._df(c)
        return out
