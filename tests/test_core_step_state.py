"""The typed measurements of ``StepState`` against independent oracles (squared norms by float64 dot
products of the handed-out gradients, alive units from the handed-out activations), and the rule that a
callback never changes training (parameters bitwise equal with a callback that requests everything)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import core
from core.callbacks import REQUESTS


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = ((X[:, 0] * X[:, 1] > 0) + (X[:, 2] > 0.5)).astype(np.int64)  # 3 classes
    return X, y


def _net(batchnorm=False, dtype="float32", seed=0):
    layers = [core.Dense(3, 12, init="he_normal"), core.ReLU()]
    if batchnorm:
        layers.append(core.BatchNorm(12))
    layers += [core.Dropout(0.2), core.Dense(12, 8), core.LeakyReLU(0.1), core.Dense(8, 6), core.Tanh(),
               core.Dense(6, 3)]
    return core.Sequential(layers, seed=seed, dtype=dtype)


class Capture(core.Callback):
    """Requests ``wanted`` at every step and copies what each ``on_after_backward`` hands out."""

    def __init__(self, wanted=frozenset(REQUESTS)):
        self.wanted = set(wanted)
        self.steps = []
        self.clip_coefs = []

    def requests(self, step):
        return self.wanted

    def on_after_backward(self, state):
        copy = lambda arrays: None if arrays is None else {k: v.copy() for k, v in arrays.items()}
        self.steps.append({
            "grads": copy(state.grads), "activations": copy(state.activations), "alive": copy(state.alive),
            "sq": None if state.grad_sq_norms is None else state.grad_sq_norms.copy(),
            "norm": state.grad_norm, "loss_known": state.loss_known, "lrs": state.lrs,
            "writeable": [a.flags.writeable for a in (state.grad_sq_norms, *(state.alive or {}).values())
                          if a is not None],
        })

    def on_step_end(self, state):
        self.clip_coefs.append(state.clip_coef)


def _fit(callbacks=(), epochs=2, net=None, **kw):
    batchnorm = kw.pop("batchnorm", False)
    dtype = kw.pop("dtype", "float32")
    optimizer = kw.pop("optimizer", "momentum")
    net = net or _net(batchnorm=batchnorm, dtype=dtype, seed=3)
    trainer = core.Trainer(net, optimizer=core.get_optimizer(optimizer, lr={"momentum": 0.1, "adam": 1e-2}[optimizer]),
                           batch_size=16, seed=4, callbacks=list(callbacks), progress=False, **kw)
    history = trainer.fit(*_data(), epochs=epochs, validation=_data(30, seed=1))
    return net, history


def _oracle_sq(grads):
    return np.array([np.dot(g.astype(np.float64).ravel(), g.astype(np.float64).ravel()) for g in grads.values()])


# -- grad_sq_norms and grad_norm ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"l2": 0.01}, {"batchnorm": True}, {"batchnorm": True, "l2": 0.003},
                                {"clip_norm": 0.05}, {"clip_norm": 0.05, "l2": 0.01, "dtype": "float64"}],
                         ids=["plain", "l2", "batchnorm", "batchnorm-l2", "clip_norm", "clip_norm-l2-f64"])
def test_grad_sq_norms_are_the_squared_norms_of_the_handed_out_gradients(kw):
    cap = Capture({"grad_norms"})
    _fit([cap], **kw)
    assert len(cap.steps) == 12
    for s in cap.steps:
        sq = s["sq"]
        assert sq.dtype == np.float64 and sq.shape == (len(s["grads"]),)
        np.testing.assert_allclose(sq, _oracle_sq(s["grads"]), rtol=1e-6, atol=0)
        assert s["norm"] == pytest.approx(math.sqrt(sq.sum()), rel=1e-12)
        assert s["writeable"] == [False]
        assert s["loss_known"] is True and s["lrs"] is None
    if "clip_norm" in kw:
        # the premise: clipping happened, and the norms handed out are those of the gradient before it
        clipped = [i for i, c in enumerate(cap.clip_coefs) if c < 1]
        assert clipped
        for i in clipped:
            assert cap.steps[i]["norm"] > kw["clip_norm"]
            assert cap.clip_coefs[i] == pytest.approx(kw["clip_norm"] / cap.steps[i]["norm"], rel=1e-12)


def test_norms_and_alive_only_when_requested():
    cap = Capture(set())
    _fit([cap], epochs=1)
    assert all(s["sq"] is None and s["norm"] is None and s["alive"] is None and s["activations"] is None
               for s in cap.steps)
    cap = Capture(set())  # clipping by norm computes them at every step anyway: handed out for free
    _fit([cap], epochs=1, clip_norm=1.0)
    assert all(s["sq"] is not None and s["norm"] is not None for s in cap.steps)


def test_sq_norms_of_backward_must_have_one_entry_per_parameter():
    net = _net()
    ctx = core.Context(training=True, rng=np.random.default_rng(0))
    X, y = _data(8)
    _, g = core.get_loss("cross_entropy")(net.forward(X, ctx=ctx), y)
    with pytest.raises(ValueError, match=r"sq_norms must be an array of shape \(8,\), one entry per parameter"):
        net.backward(g, ctx, sq_norms=np.zeros(3))


# -- alive ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batchnorm", [False, True])
def test_alive_is_which_rectifier_units_fired_for_some_example(batchnorm):
    net = _net(batchnorm=batchnorm, seed=3)
    p = net.parameters()
    p["dense0.weight"][:, 1] = 0.0
    p["dense0.bias"][1] = -1.0  # relu1's unit 1 outputs max(-1, 0) = 0 for every input: it never fires
    cap = Capture({"activations"})
    _fit([cap], net=net)
    rectifiers = [l.name for l in net.layers if isinstance(l, (core.ReLU, core.LeakyReLU))]
    assert rectifiers == ["relu1", "leakyrelu5" if batchnorm else "leakyrelu4"]
    for s in cap.steps:
        assert sorted(s["alive"]) == sorted(rectifiers)
        for name in rectifiers:
            out = s["activations"][name]
            expected = (out > 0).any(axis=0)  # independently, from the layer's output
            assert s["alive"][name].dtype == np.bool_ and s["alive"][name].shape == (out.shape[1],)
            np.testing.assert_array_equal(s["alive"][name], expected, err_msg=name)
        assert s["writeable"] == [False, False]
        assert not s["alive"]["relu1"][1]  # the comparison covers a unit that did not fire


# -- a callback never changes training ---------------------------------------------------------------------------
class Meddler(Capture):
    """Requests everything and uses everything: copies the payloads, re-evaluates the batch (gradient and a
    Hessian-vector product) and asks the probe for curvature."""

    def on_train_begin(self, run):
        self.probe = run.probe(32, 0)

    def on_after_backward(self, state):
        super().on_after_backward(state)
        _, grads = state.grad_fn(state.params)
        state.objective.hvp(grads)
        self.probe.hvp(grads)


@pytest.mark.parametrize("kw", [{}, {"l2": 0.01, "batchnorm": True}, {"clip_norm": 0.05},
                                {"clip_norm": 0.05, "l2": 0.003, "clip_value": 0.01},
                                {"optimizer": "adam", "dtype": "float64", "batchnorm": True}],
                         ids=["plain", "l2-batchnorm", "clip_norm", "clip_norm-l2-clip_value", "adam-f64-bn"])
def test_watching_changes_nothing_bit_for_bit(kw):
    runs = []
    for callbacks in ([], [], [Meddler()]):
        net, history = _fit(callbacks, epochs=3, **kw)
        runs.append(({k: v.copy() for k, v in net.parameters().items()},
                     {l.name: l.running_var.copy() for l in net.layers if isinstance(l, core.BatchNorm)}, history))
    reference = runs[0]
    for params, stats, history in runs[1:]:
        for k, v in reference[0].items():
            assert np.array_equal(v, params[k]), k
        for k, v in reference[1].items():
            assert np.array_equal(v, stats[k]), k
        assert history["loss"] == reference[2]["loss"] and history["val_loss"] == reference[2]["val_loss"]
