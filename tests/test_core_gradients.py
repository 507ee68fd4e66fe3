"""Gradients and Hessian-vector products of every layer and loss against central finite differences
(float64), and the whole network against an independent computation (PyTorch autograd when installed,
else a hand-written chain rule)."""

from __future__ import annotations

import numpy as np
import pytest

import core
from core.layers import Context

ACTS = [core.Sigmoid, core.Tanh, core.ReLU, lambda: core.LeakyReLU(0.1), core.ELU]
ACT_IDS = ["sigmoid", "tanh", "relu", "leaky_relu", "elu"]


def _net(act, batchnorm=False, dropout=0.0, out=3, seed=0):
    layers = [core.Dense(4, 6, init="xavier_normal", bias_init=0.1), act()]
    if batchnorm:
        layers.append(core.BatchNorm(6))
    if dropout:
        layers.append(core.Dropout(dropout))
    layers += [core.Dense(6, 5, init="he_normal"), act(), core.Dense(5, out, init="lecun_normal")]
    return core.Sequential(layers, seed=seed, dtype="float64")


def _data(loss, n=7, out=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    if loss == "cross_entropy":
        y = rng.integers(0, out, size=n)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=n)
    else:
        y = rng.normal(size=(n, out))
    return X, y


def _fd_grad(obj, params, eps=1e-6):
    out = {}
    for k, p in params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            plus = {kk: vv.copy() for kk, vv in params.items()}
            minus = {kk: vv.copy() for kk, vv in params.items()}
            plus[k][i] += eps
            minus[k][i] -= eps
            g[i] = (obj.value(plus) - obj.value(minus)) / (2 * eps)
        out[k] = g
    return out


def _rel_err(a, b):
    a = np.concatenate([v.ravel() for v in a.values()])
    b = np.concatenate([v.ravel() for v in b.values()])
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "bn"])
def test_gradient_matches_finite_differences(act, loss, batchnorm):
    out = 1 if loss == "binary_cross_entropy" else 3
    net = _net(act, batchnorm=batchnorm, dropout=0.3, out=out)
    X, y = _data(loss, out=out)
    # fixed dropout masks: the objective re-evaluates the same stochastic function
    ctx = Context(training=True, rng=np.random.default_rng(5))
    net.forward(X, ctx=ctx)
    obj = core.BatchObjective(net, core.get_loss(loss), X, y, l2=0.01, masks=ctx.masks)
    params = {k: v.copy() for k, v in net.parameters().items()}
    _, grads = obj.grad(params)
    assert _rel_err(grads, _fd_grad(obj, params)) < 1e-6


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "bn"])
def test_hvp_matches_finite_differences_of_gradient(act, loss, batchnorm):
    out = 1 if loss == "binary_cross_entropy" else 3
    net = _net(act, batchnorm=batchnorm, out=out)
    X, y = _data(loss, out=out)
    obj = core.BatchObjective(net, core.get_loss(loss), X, y, l2=0.01)
    params = {k: v.copy() for k, v in net.parameters().items()}
    rng = np.random.default_rng(3)
    v = {k: rng.normal(size=p.shape) for k, p in params.items()}
    hv = obj.hvp(v, params)
    # kinks of ReLU units don't move for a step this small (checked via the sign pattern)
    eps = 1e-6
    plus = {k: params[k] + eps * v[k] for k in params}
    minus = {k: params[k] - eps * v[k] for k in params}
    assert np.array_equal(obj.kinks(plus), obj.kinks(minus))
    fd = {k: (obj.grad(plus)[1][k] - obj.grad(minus)[1][k]) / (2 * eps) for k in params}
    assert _rel_err(hv, fd) < 1e-6


def test_hvp_is_symmetric():
    net = _net(core.Tanh, batchnorm=True)
    X, y = _data("cross_entropy")
    obj = core.BatchObjective(net, core.get_loss("cross_entropy"), X, y)
    rng = np.random.default_rng(0)
    params = net.parameters()
    u = {k: rng.normal(size=p.shape) for k, p in params.items()}
    w = {k: rng.normal(size=p.shape) for k, p in params.items()}
    hu, hw = obj.hvp(u), obj.hvp(w)
    a = sum(float(np.sum(w[k] * hu[k])) for k in params)
    b = sum(float(np.sum(u[k] * hw[k])) for k in params)
    assert abs(a - b) < 1e-10 * max(abs(a), 1.0)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_loss_gradients_closed_form(loss):
    """Each loss's value and gradient in z against finite differences and its closed form."""
    rng = np.random.default_rng(0)
    k = 1 if loss == "binary_cross_entropy" else 4
    z = rng.normal(size=(6, k)) * 3
    _, y = _data(loss, n=6, out=k)
    fn = core.get_loss(loss)
    value, g = fn(z.copy(), y)
    fd = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += 1e-6
        zm[i] -= 1e-6
        fd[i] = (fn(zp, y)[0] - fn(zm, y)[0]) / 2e-6
    assert np.allclose(g, fd, rtol=1e-6, atol=1e-9)
    if loss == "mse":
        assert value == pytest.approx(np.mean((z - y) ** 2))
    elif loss == "cross_entropy":
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        assert value == pytest.approx(-np.mean(np.log(p[np.arange(6), y])))
    else:
        s = 1 / (1 + np.exp(-z[:, 0]))
        assert value == pytest.approx(-np.mean(y * np.log(s) + (1 - y) * np.log(1 - s)))


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 1.0]])
    value, g = core.get_loss("cross_entropy")(z.copy(), np.array([0, 1]))
    assert np.isfinite(value) and np.isfinite(g).all()
    assert value == pytest.approx(0.0, abs=1e-12)


def test_network_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    net = core.Sequential([core.Dense(4, 8, init="he_normal"), core.Tanh(), core.Dense(8, 8), core.ReLU(),
                           core.BatchNorm(8), core.Dense(8, 3)], seed=4, dtype="float64")
    X, y = _data("cross_entropy", n=16)
    loss, grads = core.Trainer(net, l2=0.003).loss_and_grad(X, y)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in net.parameters().items()}
    h = torch.tensor(X)
    h = torch.tanh(h @ P["dense0.weight"] + P["dense0.bias"])
    h = torch.relu(h @ P["dense2.weight"] + P["dense2.bias"])
    h = torch.nn.functional.batch_norm(h, None, None, P["batchnorm4.gamma"], P["batchnorm4.beta"],
                                       training=True, eps=1e-5)
    z = h @ P["dense5.weight"] + P["dense5.bias"]
    t_loss = torch.nn.functional.cross_entropy(z, torch.tensor(y))
    t_loss = t_loss + 0.003 * sum((P[k] ** 2).sum() for k in P if k.endswith(".weight"))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for k in P:
        np.testing.assert_allclose(grads[k], P[k].grad.numpy(), rtol=1e-9, atol=1e-12)


def test_network_gradient_matches_hand_chain_rule():
    """Independent of core's layer code: a 2-layer sigmoid net with MSE, derived by hand."""
    net = core.Sequential([core.Dense(3, 4), core.Sigmoid(), core.Dense(4, 2)], seed=2, dtype="float64")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    loss, grads = core.Trainer(net, loss="mse").loss_and_grad(X, Y)
    p = net.parameters()
    a = 1 / (1 + np.exp(-(X @ p["dense0.weight"] + p["dense0.bias"])))
    z = a @ p["dense2.weight"] + p["dense2.bias"]
    dz = 2 * (z - Y) / Y.size
    da = dz @ p["dense2.weight"].T * a * (1 - a)
    assert loss == pytest.approx(np.mean((z - Y) ** 2))
    np.testing.assert_allclose(grads["dense2.weight"], a.T @ dz, rtol=1e-12)
    np.testing.assert_allclose(grads["dense2.bias"], dz.sum(0), rtol=1e-12)
    np.testing.assert_allclose(grads["dense0.weight"], X.T @ da, rtol=1e-12)
    np.testing.assert_allclose(grads["dense0.bias"], da.sum(0), rtol=1e-12)


# -- the training hot path (reused buffers, in-place backward) against PyTorch autograd ---------------------------
def _torch_loss(torch, layers, params, x, y, masks, loss, l2):
    """The loss of one batch in PyTorch, layer by layer from core's layer list (float64)."""
    F = torch.nn.functional
    h = torch.tensor(x)
    for layer in layers:
        p = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(layer.name + ".")}
        if isinstance(layer, core.Dense):
            h = h @ p["weight"] + p["bias"]
        elif isinstance(layer, core.BatchNorm):
            h = F.batch_norm(h, None, None, p["gamma"], p["beta"], training=True, eps=layer.eps)
        elif isinstance(layer, core.Dropout):
            h = h * torch.tensor(masks[layer.name]) if layer.name in masks else h
        elif isinstance(layer, core.LeakyReLU):
            h = F.leaky_relu(h, layer.alpha)
        elif isinstance(layer, core.ELU):
            h = F.elu(h, layer.alpha)
        else:
            h = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[layer.activation](h)
    if loss == "cross_entropy":
        value = F.cross_entropy(h, torch.tensor(y))
    elif loss == "binary_cross_entropy":
        value = F.binary_cross_entropy_with_logits(h[:, 0], torch.tensor(y, dtype=torch.float64))
    else:
        value = F.mse_loss(h, torch.tensor(y))
    return value + l2 * sum((w ** 2).sum() for k, w in params.items() if k.endswith(".weight"))


@pytest.mark.parametrize("act,loss,batchnorm,l2,request_norms", [
    (core.ReLU, "cross_entropy", True, 0.0, True),
    (core.Tanh, "mse", False, 0.01, False),
    (lambda: core.LeakyReLU(0.1), "binary_cross_entropy", True, 0.0, False),
    (core.ELU, "cross_entropy", False, 0.003, True),
    (core.Sigmoid, "mse", True, 0.0, True),
], ids=["relu-ce-bn", "tanh-mse-l2", "leaky-bce-bn", "elu-ce-l2", "sigmoid-mse-bn"])
def test_training_hot_path_matches_torch_autograd(act, loss, batchnorm, l2, request_norms):
    torch = pytest.importorskip("torch")
    out = 1 if loss == "binary_cross_entropy" else 3
    net = _net(act, batchnorm=batchnorm, dropout=0.25, out=out, seed=3)
    X, y = _data(loss, n=40, out=out, seed=2)
    captured = []

    class Capture(core.Callback):
        def requests(self, step):
            return {"grad_norms"} if request_norms else set()

        def on_after_backward(self, state):
            if state.step in (0, 2, 4):  # a first batch, the short trailing batch of 8, a later full batch
                captured.append(({k: v.copy() for k, v in state.params.items()},
                                 {k: v.copy() for k, v in state.grads.items()},
                                 state.objective.x.copy(), state.objective.y.copy(),
                                 {k: m.copy() for k, m in trainer._ctx.masks.items()},
                                 state.loss, None if state.grad_sq_norms is None else
                                 dict(zip(state.grads, state.grad_sq_norms.tolist()))))

    trainer = core.Trainer(net, loss=loss, optimizer=core.SGD(0.05, momentum=0.9), batch_size=16, l2=l2,
                           callbacks=[Capture()], progress=False)
    trainer.fit(X, y, epochs=2)
    assert len(captured) == 3 and captured[1][2].shape[0] == 8
    for params, grads, xb, yb, masks, value, sq in captured:
        P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        t_loss = _torch_loss(torch, net.layers, P, xb, yb, masks, loss, l2)
        t_loss.backward()
        assert value == pytest.approx(t_loss.item(), rel=1e-12)
        for k in P:
            np.testing.assert_allclose(grads[k], P[k].grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=k)
        for k, s in (sq or {}).items():
            assert s == pytest.approx(float((P[k].grad ** 2).sum()), rel=1e-10)
        assert (sq is not None) == request_norms


def test_l2_penalty_and_its_gradient_match_the_formula():
    """The one L2 helper (used by the trainer and the objective): weights only, exact for huge float32 weights."""
    from core.regularization import add_l2_gradient, l2_penalty, weight_keys

    rng = np.random.default_rng(0)
    params = {"dense0.weight": rng.normal(size=(3, 4)), "dense0.bias": rng.normal(size=4),
              "batchnorm1.gamma": rng.normal(size=4), "dense2.weight": rng.normal(size=(4, 2))}
    weights = weight_keys(params)
    assert weights == ["dense0.weight", "dense2.weight"]
    assert l2_penalty(params, 0.01, weights) == pytest.approx(
        0.01 * (np.sum(params["dense0.weight"] ** 2) + np.sum(params["dense2.weight"] ** 2)), rel=1e-14)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    add_l2_gradient(grads, params, 0.01, weights)
    for k, g in grads.items():
        np.testing.assert_allclose(g, 1 + (0.02 * params[k] if k in weights else 0), rtol=1e-15)
    huge = {"dense0.weight": np.full((2, 2), 3e19, dtype=np.float32)}  # Σ W² overflows float32, not float64
    with np.errstate(over="ignore"):
        assert l2_penalty(huge, 0.5, ["dense0.weight"]) == pytest.approx(0.5 * 4 * 9e38, rel=1e-6)
