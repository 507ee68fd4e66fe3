"""The PyTorch adapter with real torch: same quantities and findings as core from the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import core  # noqa: E402
import gradmon  # noqa: E402
import gradmon.torch  # noqa: E402
from tests.test_monitor import moons  # noqa: E402


def twin_models(act="tanh", hidden=(16, 16), init="xavier_normal", seed=0):
    """A core float64 MLP and a torch MLP with the same weights."""
    layers, width = [], 2
    for h in hidden:
        layers += [core.Dense(width, h, init=init), core.get_activation(act)]
        width = h
    layers.append(core.Dense(width, 2, init=init))
    net = core.Sequential(layers, seed=seed, dtype="float64")
    mods, width = [], 2
    acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": lambda: torch.nn.ReLU(inplace=True)}
    for h in hidden:
        mods += [torch.nn.Linear(width, h), acts[act]()]
        width = h
    mods.append(torch.nn.Linear(width, 2))
    tnet = torch.nn.Sequential(*mods).double()
    dense = [l for l in net.layers if isinstance(l, core.Dense)]
    linear = [m for m in tnet if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for d, lin in zip(dense, linear):
            lin.weight.copy_(torch.from_numpy(net.parameters()[f"{d.name}.weight"].T.copy()))
            lin.bias.copy_(torch.from_numpy(net.parameters()[f"{d.name}.bias"].copy()))
    return net, tnet


def train_torch(tnet, X, y, epochs, lr, batch=32, **watch_kw):
    opt = torch.optim.SGD(tnet.parameters(), lr=lr)
    watch_kw.setdefault("curvature_every", 0)
    watch_kw.setdefault("console", False)
    watcher = gradmon.torch.watch(tnet, optimizer=opt, **watch_kw)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        for start in range(0, len(X), batch):
            xb, yb = Xt[start:start + batch], yt[start:start + batch]
            loss = torch.nn.functional.cross_entropy(tnet(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            watcher.log_loss(loss)
    return watcher


def test_same_gradient_norms_as_core():
    X, y = moons(256)
    net, tnet = twin_models()
    mon = gradmon.Monitor(curvature_every=0, console=False)
    core.Trainer(net, optimizer=core.SGD(0.1), batch_size=32, shuffle=False, callbacks=[mon],
                 progress=False).fit(X, y, epochs=2)
    watcher = train_torch(tnet, X, y, epochs=2, lr=0.1)
    report = watcher.report()
    watcher.close()
    a, b = mon.history, watcher.monitor.history
    assert len(a) == len(b) == 16
    np.testing.assert_allclose(b.layer("grad_norm"), a.layer("grad_norm"), rtol=1e-6)
    np.testing.assert_allclose(b.scalar("loss"), a.scalar("loss"), rtol=1e-6)
    np.testing.assert_allclose(b.layer("saturation"), a.layer("saturation"), rtol=1e-6)
    ok = np.isfinite(a.layer("update_ratio"))
    np.testing.assert_allclose(b.layer("update_ratio")[ok], a.layer("update_ratio")[ok], rtol=1e-6)
    assert report.spec["framework"] == "torch"


def test_deep_sigmoid_torch_net_is_flagged_like_core():
    X, y = moons(1000)
    net, tnet = twin_models("sigmoid", hidden=(64,) * 10)
    mon = gradmon.Monitor(curvature_every=0, console=False, judge_every=10)  # the same cadence on both sides
    core.Trainer(net, optimizer=core.SGD(0.1), batch_size=32, shuffle=False, callbacks=[mon],
                 progress=False).fit(X, y, epochs=5)
    watcher = train_torch(tnet, X, y, epochs=5, lr=0.1, judge_every=10)
    report = watcher.report()
    watcher.close()
    core_codes = {(f.code, f.severity) for f in mon.report().findings}
    torch_codes = {(f.code, f.severity) for f in report.findings}
    assert ("vanishing_gradients", "error") in torch_codes
    assert torch_codes == core_codes


def test_inplace_relu_activations_and_dead_units():
    X, y = moons(512)
    _, tnet = twin_models("relu", hidden=(32, 32), init="he_normal")
    with torch.no_grad():
        for m in tnet:
            if isinstance(m, torch.nn.Linear) and m.out_features == 32:
                m.bias.fill_(-3.0)
    watcher = train_torch(tnet, X, y, epochs=5, lr=0.1)
    report = watcher.report()
    watcher.close()
    dead = watcher.monitor.history.layer("dead_fraction")
    assert np.nanmax(dead) > 0.5
    assert "dead_units" in {f.code for f in report.findings}


def test_exact_hvp_by_double_backward_matches_core():
    X, y = moons(128)
    net, tnet = twin_models()
    obj_core = core.BatchObjective(net, core.get_loss("cross_entropy"), X, y)
    watcher = gradmon.torch.watch(tnet, probe=(torch.from_numpy(X), torch.from_numpy(y)),
                                  loss_fn=torch.nn.functional.cross_entropy, console=False, curvature_every=0)
    obj_torch = watcher.run.probe(128, 0)
    rng = np.random.default_rng(0)
    v_core = {k: rng.normal(size=p.shape) for k, p in net.parameters().items()}
    names = [n for n, _ in tnet.named_parameters()]
    v_torch = {}
    for (kc, vc), nt in zip(v_core.items(), names):
        v_torch[nt] = vc.T if vc.ndim == 2 else vc
    hc = obj_core.hvp(v_core)
    ht = obj_torch.hvp(v_torch)
    for (kc, hvc), nt in zip(hc.items(), names):
        np.testing.assert_allclose(ht[nt], hvc.T if hvc.ndim == 2 else hvc, rtol=1e-8, atol=1e-12)
    watcher.close()


def test_watcher_writes_report_and_curvature(tmp_path):
    X, y = moons(256)
    _, tnet = twin_models()
    watcher = train_torch(tnet, X, y, epochs=3, lr=0.1, logdir=tmp_path, curvature_every=5,
                          probe=(torch.from_numpy(X[:64]), torch.from_numpy(y[:64])),
                          loss_fn=torch.nn.functional.cross_entropy, tensorboard=False)
    watcher.close()
    report = gradmon.HealthReport.load(tmp_path)
    assert report.steps == 24
    assert len(report.curvature) == 5 and all(c["lambda_max"] > 0 for c in report.curvature)
