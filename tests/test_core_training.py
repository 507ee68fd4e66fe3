"""Optimizers against their formulas, initializers against their variances, BatchNorm/Dropout modes,
the trainer's batch modes, determinism, and the hook protocol (order, read-only, no effect on training).
(Over 450 lines: one oracle per optimizer, initializer and mode.)"""

from __future__ import annotations

import io
import math
import sys
import warnings

import numpy as np
import pytest

import core
from core.checkpoint import load_checkpoint
from core.initializers import expected_variance
from core.layers import Context
from core.progress import progress_bar


# -- optimizers ---------------------------------------------------------------------------------------
def _run_optimizer(opt, grads_seq, w0):
    params = {"w": w0.copy()}
    for g in grads_seq:
        opt.step(params, {"w": g})
    return params["w"]


@pytest.fixture
def grads_seq():
    rng = np.random.default_rng(0)
    return [rng.normal(size=5) for _ in range(6)]


def test_sgd_formula(grads_seq):
    w0 = np.linspace(-1, 1, 5)
    w = _run_optimizer(core.SGD(0.1), grads_seq, w0)
    np.testing.assert_allclose(w, w0 - 0.1 * np.sum(grads_seq, axis=0), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_formula(grads_seq, nesterov):
    w0 = np.linspace(-1, 1, 5)
    w, v = w0.copy(), np.zeros(5)
    for g in grads_seq:
        v = 0.9 * v + g
        w = w - 0.05 * ((g + 0.9 * v) if nesterov else v)
    got = _run_optimizer(core.SGD(0.05, momentum=0.9, nesterov=nesterov), grads_seq, w0)
    np.testing.assert_allclose(got, w, rtol=1e-12)


def test_adagrad_formula(grads_seq):
    w0 = np.ones(5)
    w, G = w0.copy(), np.zeros(5)
    for g in grads_seq:
        G += g * g
        w = w - 0.1 * g / (np.sqrt(G) + 1e-8)
    np.testing.assert_allclose(_run_optimizer(core.AdaGrad(0.1), grads_seq, w0), w, rtol=1e-12)


def test_rmsprop_formula(grads_seq):
    w0 = np.ones(5)
    w, s = w0.copy(), np.zeros(5)
    for g in grads_seq:
        s = 0.9 * s + 0.1 * g * g
        w = w - 0.01 * g / (np.sqrt(s) + 1e-8)
    np.testing.assert_allclose(_run_optimizer(core.RMSprop(0.01), grads_seq, w0), w, rtol=1e-12)


def test_adam_formula(grads_seq):
    w0 = np.ones(5)
    w, m, v = w0.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads_seq, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(_run_optimizer(core.Adam(0.01), grads_seq, w0), w, rtol=1e-10)


def test_optimizer_registry_and_errors():
    assert isinstance(core.get_optimizer("momentum", lr=0.1), core.SGD)
    assert core.get_optimizer("momentum", lr=0.1).momentum == 0.9
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'.*sgd"):
        core.get_optimizer("adamw")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        core.SGD(lr=-1)


# -- clipping -------------------------------------------------------------------------------------------
def test_clipping_is_pure_and_reports():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0])}
    clipped, info = core.clip_by_global_norm(grads, 1.0)
    assert info["norm"] == pytest.approx(5.0) and info["coef"] == pytest.approx(0.2)
    assert core.global_norm(clipped) == pytest.approx(1.0)
    assert grads["a"][0] == 3.0  # input untouched
    same, info = core.clip_by_global_norm(grads, 10.0)
    assert same is grads and info["coef"] == 1.0
    by_value, info = core.clip_by_value(grads, 2.0)
    np.testing.assert_array_equal(by_value["b"], [0.0, 2.0])
    assert info["clipped"] == 2


# -- initializers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "lecun_normal",
                                  "normal", "uniform"])
def test_initializer_variance(name):
    rng = np.random.default_rng(0)
    kw = {"std": 0.05} if name == "normal" else {"limit": 0.3} if name == "uniform" else {}
    w = core.get_initializer(name)((400, 300), rng, **kw)
    target = expected_variance(name, 400, 300, **kw)
    assert abs(w.mean()) < 5 * np.sqrt(target / w.size)
    assert w.var() == pytest.approx(target, rel=0.02)


def test_dense_bias_init_and_unknown_init():
    net = core.Sequential([core.Dense(3, 4, init="zeros", bias_init=0.5)], seed=0)
    assert np.all(net.parameters()["dense0.bias"] == 0.5)
    with pytest.raises(ValueError, match="unknown init 'glorot'"):
        core.Dense(3, 4, init="glorot")


# -- model structure --------------------------------------------------------------------------------------
def test_names_parameters_and_dtype():
    net = core.Sequential([core.Dense(2, 4), core.ReLU(), core.BatchNorm(4), core.Dropout(0.1), core.Dense(4, 3)])
    assert [l.name for l in net.layers] == ["dense0", "relu1", "batchnorm2", "dropout3", "dense4"]
    assert list(net.parameters()) == ["dense0.weight", "dense0.bias", "batchnorm2.gamma", "batchnorm2.beta",
                                      "dense4.weight", "dense4.bias"]
    assert net.parameters()["dense0.weight"].shape == (2, 4)
    assert net.parameters()["dense0.weight"].dtype == np.float32
    with pytest.raises(ValueError, match="unique"):
        core.Sequential([core.Dense(2, 2, name="a"), core.Dense(2, 2, name="a")])
    with pytest.raises(ValueError, match="dense1 expects 5 inputs"):
        core.Sequential([core.Dense(2, 4), core.Dense(5, 3)])


# -- BatchNorm and Dropout modes -----------------------------------------------------------------------------
def test_batchnorm_train_and_eval():
    bn = core.BatchNorm(3, momentum=0.5)
    net = core.Sequential([core.Dense(2, 3), bn], seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2)) * 3 + 1
    ctx = Context(training=True, update_stats=True)
    out = net.forward(X, ctx=ctx)
    np.testing.assert_array_equal(bn.running_mean, 0)  # batch statistics wait for the commit
    ctx.commit_stats()
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(0), 1, rtol=1e-3)
    h = X @ net.parameters()["dense0.weight"] + net.parameters()["dense0.bias"]
    np.testing.assert_allclose(bn.running_mean, 0.5 * h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * h.var(0, ddof=1), rtol=1e-12)
    ev = net.predict(X)
    expected = (h - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(ev, expected, rtol=1e-10)


def test_dropout_train_and_eval():
    net = core.Sequential([core.Dropout(0.25)], seed=0, dtype="float64")
    X = np.ones((2000, 50))
    out = net.forward(X, ctx=Context(training=True, rng=np.random.default_rng(0)))
    kept = out != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.01)
    np.testing.assert_allclose(out[kept], 1 / 0.75)          # inverted scaling
    assert out.mean() == pytest.approx(1.0, abs=0.01)        # expectation preserved
    np.testing.assert_array_equal(net.predict(X), X)          # identity in eval


# -- the trainer -----------------------------------------------------------------------------------------------
def _blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def _model(seed=0, dtype="float32"):
    return core.Sequential([core.Dense(2, 16, init="he_normal"), core.ReLU(), core.Dropout(0.1),
                            core.Dense(16, 2)], seed=seed, dtype=dtype)


@pytest.mark.parametrize("batch_size,steps_per_epoch", [(None, 1), (32, 7), (1, 200)])
def test_batch_modes(batch_size, steps_per_epoch):
    X, y = _blobs()
    seen = []

    class Count(core.Callback):
        def on_train_begin(self, run):
            seen.append(run.batch_mode)

        def on_after_backward(self, state):
            seen.append(state.batch_size)

    trainer = core.Trainer(_model(), optimizer=core.SGD(0.1), batch_size=batch_size, callbacks=[Count()],
                           progress=False)
    history = trainer.fit(X, y, epochs=2)
    assert history["steps"] == 2 * steps_per_epoch
    assert seen[0] == {None: "batch", 32: "mini-batch", 1: "stochastic"}[batch_size]
    assert sum(seen[1:]) == 2 * len(X)
    assert history["loss"][-1] < history["loss"][0]


def test_training_reduces_loss_and_validates():
    X, y = _blobs()
    trainer = core.Trainer(_model(), optimizer=core.Adam(1e-2), batch_size=32, progress=False)
    history = trainer.fit(X, y, epochs=15, validation=_blobs(100, seed=1))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9


def test_same_seed_is_bitwise_reproducible():
    X, y = _blobs()
    finals = []
    for _ in range(2):
        net = _model(seed=3)
        core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=16, seed=3, progress=False).fit(X, y, epochs=3)
        finals.append({k: v.copy() for k, v in net.parameters().items()})
    for k in finals[0]:
        assert np.array_equal(finals[0][k], finals[1][k])


def test_bad_data_is_one_clear_error():
    trainer = core.Trainer(_model(), progress=False)
    X, y = _blobs()
    with pytest.raises(ValueError, match="NaN"):
        Xn = X.copy(); Xn[3, 1] = np.nan
        trainer.fit(Xn, y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        trainer.fit(X, y + 1)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="3 features"):
        trainer.fit(np.zeros((5, 3)), np.zeros(5, dtype=int))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rejected, not cast to real with a ComplexWarning
        with pytest.raises(ValueError, match=r"training X holds complex numbers \(dtype complex128\)") as exc:
            trainer.fit(X + 1j, y)
    assert "\n" not in str(exc.value)


# -- hook protocol --------------------------------------------------------------------------------------------
class Recorder(core.Callback):
    def __init__(self):
        self.events = []
        self.activation_keys = None

    def requests(self, step):
        return {"activations"} if step % 2 == 0 else set()

    def on_train_begin(self, run):
        self.events.append("begin")
        self.run = run

    def on_after_backward(self, state):
        self.events.append(("after_backward", state.step))
        if state.activations is not None:
            self.activation_keys = sorted(state.activations)
            for arr in list(state.params.values()) + list(state.grads.values()):
                with pytest.raises(ValueError):
                    arr[...] = 0  # read-only
        else:
            assert state.step % 2 == 1

    def on_step_end(self, state):
        assert state.update is not None
        self.events.append(("step_end", state.step))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, logs):
        self.events.append("end")


def test_event_order_and_watching_changes_nothing():
    X, y = _blobs(64)
    base = _model(seed=1)
    core.Trainer(base, optimizer=core.SGD(0.1, momentum=0.9), batch_size=32, progress=False).fit(X, y, epochs=2)
    rec = Recorder()
    watched = _model(seed=1)
    core.Trainer(watched, optimizer=core.SGD(0.1, momentum=0.9), batch_size=32, callbacks=[rec],
                 progress=False).fit(X, y, epochs=2)
    expected = ["begin"]
    step = 0
    for epoch in range(2):
        for _ in range(2):
            expected += [("after_backward", step), ("step_end", step)]
            step += 1
        expected.append(("epoch_end", epoch))
    expected.append("end")
    assert rec.events == expected
    assert rec.activation_keys == ["dense0", "dense3", "dropout2", "relu1"]
    for k, v in base.parameters().items():
        assert np.array_equal(v, watched.parameters()[k]), k
    assert rec.run.optimizer == "momentum" and rec.run.hyperparams["momentum"] == 0.9


def test_objective_regrads_the_batch_and_exception_hook():
    X, y = _blobs(64)
    checked = []

    class Check(core.Callback):
        def on_after_backward(self, state):
            loss, grads = state.grad_fn(state.params)
            assert loss == pytest.approx(state.loss, rel=1e-5)
            for k in grads:
                np.testing.assert_allclose(grads[k], state.grads[k], rtol=1e-3, atol=1e-5)
            checked.append(state.step)
            if state.step == 3:
                raise RuntimeError("boom")

        def on_exception(self, exc, state):
            checked.append(("exception", str(exc), state.step))

    trainer = core.Trainer(_model(), batch_size=16, callbacks=[Check()], progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(X, y, epochs=1)
    assert checked == [0, 1, 2, 3, ("exception", "boom", 3)]


def test_nonfinite_loss_stops_cleanly():
    X, y = _blobs(64)
    net = _model()
    trainer = core.Trainer(net, optimizer=core.SGD(1e6), batch_size=64, progress=False)
    history = trainer.fit(X * 1e3, y, epochs=50)
    assert history["stopped"] is not None and "non-finite" in history["stopped"]
    assert history["steps"] < 50


# -- the vanishing gradient, from the lecture notes -------------------------------------------------------------
def _first_last_ratio(act, init, depth=10):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 20))
    y = rng.integers(0, 2, size=256)
    layers = []
    width = 20
    for _ in range(depth):
        layers += [core.Dense(width, 64, init=init), act()]
        width = 64
    layers.append(core.Dense(width, 2, init=init))
    net = core.Sequential(layers, seed=0, dtype="float64")
    _, grads = core.Trainer(net).loss_and_grad(X, y)
    # the second and the last hidden Dense layers have the same (64, 64) shape
    first = np.linalg.norm(grads["dense2.weight"])
    last = np.linalg.norm(grads[f"dense{2 * depth - 2}.weight"])
    return first / last


def test_deep_sigmoid_vanishes_while_he_relu_does_not():
    sig = _first_last_ratio(core.Sigmoid, "xavier_normal")
    relu = _first_last_ratio(core.ReLU, "he_normal")
    assert sig < 1e-3          # orders of magnitude below the last layer
    assert 0.1 < relu < 10     # same order of magnitude


# -- non-finite steps are never applied (oracle: np.isfinite on the arrays themselves) -------------------------
class SpikyMSE(core.losses.MSE):
    """MSE whose gradient turns infinite on call ``bad`` (0-based) while the loss stays finite."""

    def __init__(self, bad):
        self.bad, self.calls = bad, 0

    def __call__(self, z, y):
        value, g = super().__call__(z, y)
        if self.calls == self.bad:
            g = g.copy()
            g[0, 0] = np.inf
        self.calls += 1
        return value, g


def _regression(n=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, X @ rng.normal(size=(3, 1))


def _finite(params):
    return all(np.isfinite(v).all() for v in params.values())


class EpochsOnly(core.Callback):
    def on_epoch_end(self, epoch, logs):
        pass


@pytest.mark.parametrize("callbacks", [[], [EpochsOnly()]], ids=["no-callbacks", "epoch-callback"])
def test_nonfinite_gradient_is_never_applied(tmp_path, callbacks):
    X, Y = _regression()
    ref = core.Sequential([core.Dense(3, 4), core.Tanh(), core.Dense(4, 1)], seed=0)
    core.Trainer(ref, loss="mse", optimizer=core.SGD(0.1), batch_size=8, shuffle=False, progress=False).fit(
        X[:16], Y[:16], epochs=1)  # the two steps before the bad one
    net = core.Sequential([core.Dense(3, 4), core.Tanh(), core.Dense(4, 1)], seed=0)
    trainer = core.Trainer(net, loss=SpikyMSE(bad=2), optimizer=core.SGD(0.1), batch_size=8, shuffle=False,
                           callbacks=callbacks, progress=False)
    history = trainer.fit(X, Y, epochs=3, checkpoint=tmp_path / "c.npz")
    assert history["stopped"] == "non-finite gradient at step 2" and history["steps"] == 2
    assert _finite(net.parameters())
    for k, v in ref.parameters().items():
        assert np.array_equal(v, net.parameters()[k]), k
    resumed = core.Trainer(core.Sequential([core.Dense(3, 4), core.Tanh(), core.Dense(4, 1)], seed=5), loss="mse")
    load_checkpoint(tmp_path / "c.npz", resumed)
    assert _finite(resumed.model.parameters())
    for k, v in ref.parameters().items():
        assert np.array_equal(v, resumed.model.parameters()[k]), k


def test_nonfinite_step_is_skipped_when_training_goes_on():
    X, Y = _regression()
    net = core.Sequential([core.Dense(3, 4), core.BatchNorm(4), core.Tanh(), core.Dense(4, 1)], seed=0)
    trainer = core.Trainer(net, loss=SpikyMSE(bad=1), optimizer=core.Adam(1e-2), batch_size=8, shuffle=False,
                           progress=False, stop_on_nonfinite=False)
    seen = []

    class Watch(core.Callback):
        def on_step_end(self, state):
            seen.append((state.step, float(sum(np.abs(u).sum() for u in state.update.values()))))

    trainer.callbacks = core.CallbackList([Watch()])
    running = net.layer("batchnorm1").running_var.copy()
    before = {k: v.copy() for k, v in net.parameters().items()}
    history = trainer.fit(X[:16], Y[:16], epochs=1)  # step 0 applied, step 1 skipped
    assert history["stopped"] is None and history["steps"] == 2 and history["skipped"] == 1
    assert seen[0][1] > 0 and seen[1] == (1, 0.0)
    assert _finite(net.parameters()) and trainer.optimizer.t == 1
    assert not np.array_equal(before["dense0.weight"], net.parameters()["dense0.weight"])
    # the skipped step did not move the BatchNorm running statistics either: as after step 0 alone
    ref = core.Sequential([core.Dense(3, 4), core.BatchNorm(4), core.Tanh(), core.Dense(4, 1)], seed=0)
    core.Trainer(ref, loss="mse", optimizer=core.Adam(1e-2), batch_size=8, shuffle=False, progress=False).fit(
        X[:8], Y[:8], epochs=1)
    assert not np.array_equal(running, net.layer("batchnorm1").running_var)
    assert np.array_equal(ref.layer("batchnorm1").running_var, net.layer("batchnorm1").running_var)
    for k, v in ref.parameters().items():
        assert np.array_equal(v, net.parameters()[k]), k


class InfLossCE(core.losses.CrossEntropy):
    """Cross-entropy whose value is inf on the calls in ``bad`` (0-based); the gradient stays finite."""

    def __init__(self, bad):
        self.bad, self.calls = set(bad), 0

    def __call__(self, z, y):
        value, g = super().__call__(z, y)
        if self.calls in self.bad:
            value = math.inf
        self.calls += 1
        return value, g


def test_skipped_steps_stay_out_of_the_epoch_averages():
    X, y = _blobs(32)
    net = core.Sequential([core.Dense(2, 4), core.Tanh(), core.Dense(4, 2)], seed=0)
    steps = []  # (loss, correct predictions) of every step, at the parameters the step starts from

    class Watch(core.Callback):
        def on_after_backward(self, state):
            batch = slice(8 * (state.step % 4), 8 * (state.step % 4 + 1))
            correct = int(np.sum(np.argmax(net.predict(X[batch]), 1) == y[batch]))
            steps.append((state.loss, correct))

    trainer = core.Trainer(net, loss=InfLossCE(bad={1, 4, 5, 6, 7}), optimizer=core.SGD(0.1), batch_size=8,
                           shuffle=False, callbacks=[Watch()], progress=False, stop_on_nonfinite=False)
    history = trainer.fit(X, y, epochs=2)  # epoch 0: step 1 skipped; epoch 1: every step skipped
    assert history["stopped"] is None and history["steps"] == 8 and history["skipped"] == 5
    applied = [steps[i] for i in (0, 2, 3)]
    assert steps[1][0] == math.inf and all(math.isfinite(v) for v, _ in applied)
    assert history["loss"][0] == pytest.approx(np.mean([v for v, _ in applied]), rel=1e-12)
    assert history["accuracy"][0] == sum(c for _, c in applied) / 24
    assert len(history["loss"]) == len(history["accuracy"]) == 2
    assert math.isnan(history["loss"][1]) and math.isnan(history["accuracy"][1])  # nothing applied: no average


def test_clip_norm_clips_huge_finite_gradients():
    """Gradient values near 1.5e19 are finite, but their float32 squared norm overflows: the norm must be
    exact (float64) so clip_norm clips them instead of calling them non-finite."""
    net = core.Sequential([core.Dense(2, 2)], seed=0)
    X = np.array([[3e19, 0.0], [0.0, 3e19]], dtype=np.float32)
    y = np.array([0, 1])
    _, g = core.Trainer(net).loss_and_grad(X, y)
    flat = np.concatenate([v.ravel() for v in g.values()]).astype(np.float64)
    with np.errstate(over="ignore"):
        assert np.isfinite(flat).all() and not np.isfinite(np.dot(flat.astype(np.float32), flat.astype(np.float32)))
    norm = float(np.sqrt(np.dot(flat, flat)))
    assert core.global_norm(g) == pytest.approx(norm, rel=1e-6)
    sq = np.zeros(len(net.parameters()))
    ctx = Context(training=True)
    with np.errstate(over="ignore", invalid="ignore"):  # the caller's job, as in Trainer.fit
        net.backward(core.get_loss("cross_entropy")(net.forward(X, ctx=ctx), y)[1], ctx, sq_norms=sq)
    assert np.isfinite(sq).all()
    assert sq.sum() == pytest.approx(norm ** 2, rel=1e-6)
    before = net.flat().astype(np.float64)
    history = core.Trainer(net, optimizer=core.SGD(0.5), batch_size=None, clip_norm=1.0,
                           progress=False).fit(X, y, epochs=1)
    assert history["stopped"] is None and history["steps"] == 1
    step = net.flat().astype(np.float64) - before
    np.testing.assert_allclose(step, -0.5 * flat / norm, rtol=1e-5, atol=1e-7)


def test_huge_finite_gradient_without_clipping_is_not_called_nonfinite():
    net = core.Sequential([core.Dense(2, 2)], seed=0)
    X = np.array([[3e19, 0.0], [0.0, 3e19]], dtype=np.float32)
    history = core.Trainer(net, optimizer=core.SGD(1e-30), batch_size=None, progress=False).fit(
        X, np.array([0, 1]), epochs=1)
    assert history["stopped"] is None and _finite(net.parameters())


# -- the trainer's training path against formulas ------------------------------------------------------------
def _one_step(trainer_kw, X, y, dtype="float64"):
    net = _model(seed=2, dtype=dtype)
    net.layers[2].p = 0.0  # no dropout: the formula needs a deterministic gradient
    grad_net = _model(seed=2, dtype=dtype)
    grad_net.layers[2].p = 0.0
    data_loss, g = core.Trainer(grad_net).loss_and_grad(X, y)  # the data term alone: no L2, no clipping
    before = {k: v.copy() for k, v in net.parameters().items()}
    trainer = core.Trainer(net, optimizer=core.SGD(0.1), batch_size=None, progress=False, **trainer_kw)
    history = trainer.fit(X, y, epochs=1)
    return before, (data_loss, g), net.parameters(), history


def test_l2_in_the_training_step_matches_the_formula():
    X, y = _blobs(50)
    before, (data_loss, g), after, history = _one_step({"l2": 0.05}, X, y)
    for k in before:
        expected = g[k] + (2 * 0.05 * before[k] if k.endswith(".weight") else 0.0)
        np.testing.assert_allclose(after[k], before[k] - 0.1 * expected, rtol=1e-12, atol=1e-15)
    penalty = 0.05 * sum(float(np.sum(before[k] ** 2)) for k in before if k.endswith(".weight"))
    assert history["loss"][0] == pytest.approx(data_loss + penalty, rel=1e-12)


def test_clip_value_in_the_training_step_matches_the_formula():
    X, y = _blobs(50)
    before, (_, g), after, _ = _one_step({"clip_value": 0.02}, X, y)
    assert any((np.abs(v) > 0.02).any() for v in g.values())  # the premise: some elements are clipped
    for k in before:
        np.testing.assert_allclose(after[k], before[k] - 0.1 * np.clip(g[k], -0.02, 0.02), rtol=1e-12, atol=1e-15)


# -- reproducibility, progress bar, per-step cost ------------------------------------------------------------
def test_loss_and_grad_changes_nothing_later():
    X, y = _blobs(96)
    finals = []
    for probe in (False, True):
        net = _model(seed=4)
        trainer = core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=16, seed=4, progress=False)

        class Probe(core.Callback):
            def on_epoch_end(self, epoch, logs):
                if probe:
                    trainer.loss_and_grad(X[:32], y[:32])

        trainer.callbacks = core.CallbackList([Probe()])
        trainer.fit(X, y, epochs=3)
        finals.append({k: v.copy() for k, v in net.parameters().items()})
    for k in finals[0]:
        assert np.array_equal(finals[0][k], finals[1][k]), k


def test_progress_bar_is_off_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    X, y = _blobs(64)
    core.Trainer(_model(), batch_size=16).fit(X, y, epochs=2)  # progress=None: decided by stderr
    assert capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(10, None, "training", "step")
    assert bar is not None
    bar.close()
    assert progress_bar(10, False, "training", "step") is None


def test_epoch_only_callbacks_cost_nothing_per_step(monkeypatch):
    def no_state(*args, **kwargs):
        raise AssertionError("a StepState was built although no callback watches steps")

    X, y = _blobs(64)
    trainer = core.Trainer(_model(), batch_size=16, callbacks=[EpochsOnly()], progress=False)
    monkeypatch.setattr(trainer, "_state", no_state)
    assert trainer.fit(X, y, epochs=2)["steps"] == 8


def test_exceptions_in_train_begin_and_end_reach_on_exception():
    X, y = _blobs(32)
    for hook in ("on_train_begin", "on_train_end"):
        seen = []

        class Crash(core.Callback):
            pass

        setattr(Crash, hook, lambda self, *a: (_ for _ in ()).throw(KeyboardInterrupt()))

        class Watch(core.Callback):
            def on_exception(self, exc, state):
                seen.append(type(exc).__name__)

        with pytest.raises(KeyboardInterrupt):
            core.Trainer(_model(), callbacks=[Crash(), Watch()], progress=False).fit(X, y, epochs=1)
        assert seen == ["KeyboardInterrupt"], hook


# -- BatchNorm needs 2+ examples per batch ---------------------------------------------------------------------
def test_batchnorm_refuses_a_batch_of_one():
    net = core.Sequential([core.Dense(2, 4), core.BatchNorm(4), core.Dense(4, 2)], seed=0)
    with pytest.raises(ValueError, match="more than 1 example"):
        core.Trainer(net).loss_and_grad(np.ones((1, 2)), np.array([1]))
    assert net.predict(np.ones((1, 2))).shape == (1, 2)  # eval mode uses running statistics: fine
    with pytest.raises(ValueError, match="batch_size=1 cannot train a model with BatchNorm"):
        core.Trainer(net, batch_size=1)


@pytest.mark.parametrize("batchnorm,sizes", [(True, [32, 33]), (False, [32, 32, 1])])
def test_a_trailing_batch_of_one_joins_the_batch_before_with_batchnorm(batchnorm, sizes):
    X, y = _blobs(65)
    layers = [core.Dense(2, 4)] + ([core.BatchNorm(4)] if batchnorm else []) + [core.ReLU(), core.Dense(4, 2)]
    seen, runs = [], []

    class Count(core.Callback):
        def on_train_begin(self, run):
            runs.append(run.steps_per_epoch)

        def on_after_backward(self, state):
            seen.append(state.batch_size)

    core.Trainer(core.Sequential(layers, seed=0), batch_size=32, callbacks=[Count()], progress=False).fit(
        X, y, epochs=1)
    assert seen == sizes and runs == [len(sizes)]


# -- bad Python API arguments: one clear error naming the argument ----------------------------------------------
def _net():
    return core.Sequential([core.Dense(2, 4), core.ReLU(), core.Dense(4, 2)], seed=0)


@pytest.mark.parametrize("make,error,message", [
    (lambda: core.Trainer(_net(), optimizer=core.Adam), TypeError, r"an instance such as core.Adam\(lr=...\)"),
    (lambda: core.Trainer(_net(), optimizer=3), TypeError, r"core.Adam\(lr=1e-3\), or a name \(sgd"),
    (lambda: core.Trainer(_net(), optimizer="adamw"), ValueError, "unknown optimizer 'adamw'"),
    (lambda: core.Trainer(_net(), loss=5), TypeError, "loss must be a name"),
    (lambda: core.Trainer(_net(), l2="a"), ValueError, "l2 must be a finite number >= 0"),
    (lambda: core.Trainer(_net(), clip_norm="x"), ValueError, "clip_norm must be a positive number"),
    (lambda: core.Trainer(_net(), clip_value=float("nan")), ValueError, "clip_value must be a positive number"),
    (lambda: core.Dropout("a"), ValueError, r"Dropout p must be a number in \[0, 1\)"),
    (lambda: core.BatchNorm(3, eps=0), ValueError, "BatchNorm eps must be a positive number"),
    (lambda: core.BatchNorm(3, momentum=1.5), ValueError, r"BatchNorm momentum must be a number in \[0, 1\)"),
    (lambda: core.BatchNorm(True), ValueError, "num_features must be a positive integer"),
    (lambda: core.SGD(lr=float("inf")), ValueError, r"lr must be a positive number \(finite\)"),
    (lambda: core.SGD(lr=float("nan")), ValueError, "lr must be a positive number"),
    (lambda: core.Sequential([core.Dense(2, 2)], seed=-1), ValueError, "Sequential seed must be an integer >= 0"),
    (lambda: core.Trainer(_net(), progress=False).fit(np.zeros((4, 2)), None), ValueError, "training y is missing"),
    (lambda: core.Trainer(_net(), progress=False).fit(np.zeros((4, 2)), np.zeros(4, int), validation=(np.zeros((4, 2)),)),
     ValueError, r"validation must be a pair \(X_val, y_val\), got a tuple of 1"),
    (lambda: core.Trainer(_net(), loss="mse", progress=False).fit(np.zeros((4, 2)), np.zeros((4, 2), dtype=object)),
     ValueError, "training y must hold numbers"),
])
def test_bad_api_arguments_say_what_to_do(make, error, message):
    with pytest.raises(error, match=message) as exc:
        make()
    assert "\n" not in str(exc.value)


def test_optimizer_by_registry_name():
    trainer = core.Trainer(_net(), optimizer="adam")
    assert isinstance(trainer.optimizer, core.Adam) and trainer.optimizer.lr == 0.001
