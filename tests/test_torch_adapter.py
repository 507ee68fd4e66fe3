"""The PyTorch adapter with real torch: same quantities and findings as core from the same weights, what
crosses to the host, and the statistics budget.  (Over 450 lines: the adapter's whole contract with a loop.)"""

from __future__ import annotations

import math

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
    # the same fixes, said in code: a torch loop has no spec for a patch to apply to
    core_fix = [f for f in mon.report().findings if f.code == "vanishing_gradients"][0].suggestions
    torch_fix = [f for f in report.findings if f.code == "vanishing_gradients"][0].suggestions
    assert [s.code for s in torch_fix] == [s.code for s in core_fix] and all(s.patch for s in core_fix)
    assert all(s.patch == {} and "In PyTorch:" in s.text for s in torch_fix)
    assert "kaiming_normal_" in next(s.text for s in torch_fix if s.code == "relu")


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


# -- pre-clip gradient norms (the audit's A1) -------------------------------------------------------------------
def small_relu_net(seed=0, width=16):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(inplace=True), torch.nn.Linear(width, width),
                               torch.nn.ReLU(inplace=True), torch.nn.Linear(width, 2)).double()


def xor_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return X, (X[:, 0] * X[:, 1] > 0).long()


def layer_grad_norms(net):
    """Per nn.Linear, the L2 norm of its weight and bias gradients together (the oracle)."""
    return [float(torch.sqrt(m.weight.grad.pow(2).sum() + m.bias.grad.pow(2).sum()))
            for m in net if isinstance(m, torch.nn.Linear)]


def watched_xor_net():
    """XOR data, a small ReLU net, SGD at 0.1 and a watcher with curvature and TensorBoard off."""
    X, y = xor_data()
    net = small_relu_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    watcher = gradmon.torch.watch(net, optimizer=opt, console=False, curvature_every=0, tensorboard=False)
    return X, y, net, opt, watcher


def test_norms_are_read_before_clip_grad_norm():
    X, y, net, opt, watcher = watched_xor_net()
    totals, per_layer, coefs = [], [], []
    for i in range(0, 256, 32):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
        loss.backward()
        per_layer.append(layer_grad_norms(net))
        total = float(torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=0.05))
        totals.append(total)
        coefs.append(min(1.0, 0.05 / (total + 1e-6)))  # what clip_grad_norm_ multiplied by
        opt.step()
        watcher.log_loss(loss)
    watcher.close()
    h = watcher.monitor.history
    assert min(totals) > 0.05  # every step was clipped: a post-clip reading would give 0.05
    np.testing.assert_allclose(h.scalar("grad_norm"), totals, rtol=1e-10)
    np.testing.assert_allclose(h.layer("grad_norm"), per_layer, rtol=1e-10)
    np.testing.assert_allclose(h.scalar("clip_coef"), coefs, rtol=1e-6)


def test_gradient_accumulation_gives_the_norm_of_the_accumulated_gradient():
    X, y, net, opt, watcher = watched_xor_net()
    totals, per_layer, first_micro = [], [], []
    for i in range(0, 256, 64):
        opt.zero_grad()
        for j in range(i, i + 64, 16):  # four micro-batches, one step
            loss = torch.nn.functional.cross_entropy(net(X[j:j + 16]), y[j:j + 16]) / 4
            loss.backward()
            if j == i:
                first_micro.append(layer_grad_norms(net))
        per_layer.append(layer_grad_norms(net))
        totals.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1e-3)))
        opt.step()
        watcher.log_loss(loss)
    watcher.close()
    h = watcher.monitor.history
    assert not np.allclose(per_layer, first_micro, rtol=1e-3)  # the accumulated gradient is another one
    np.testing.assert_allclose(h.scalar("grad_norm"), totals, rtol=1e-10)
    np.testing.assert_allclose(h.layer("grad_norm"), per_layer, rtol=1e-10)


# -- shared activation modules (A2) -----------------------------------------------------------------------------
class SharedReLUNet(torch.nn.Module):
    """One ReLU module, registered after the Linears, called after each hidden layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(4, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        self.out = torch.nn.Linear(32, 2)
        self.act = torch.nn.ReLU()
        with torch.no_grad():
            self.fc1.bias.fill_(-3.0)       # most of fc1's units are off for every input
            self.fc3.bias.fill_(-0.5)

    def forward(self, x):
        return self.out(self.act(self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))))


def test_a_shared_activation_module_is_attributed_by_call_order():
    torch.manual_seed(0)
    X = torch.randn(512, 4)
    y = (X[:, 0] * X[:, 1] > 0).long()
    net = SharedReLUNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    watcher = gradmon.torch.watch(net, optimizer=opt, console=False, curvature_every=0, tensorboard=False)
    expected = []  # oracle: per step, the fraction of each layer's ReLU units that are zero for the whole batch
    for i in list(range(0, 512, 64)) * 4:
        xb = X[i:i + 64]
        with torch.no_grad():
            h1 = torch.relu(net.fc1(xb))
            h2 = torch.relu(net.fc2(h1))
            h3 = torch.relu(net.fc3(h2))
        expected.append([float((h.amax(0) <= 0).float().mean()) for h in (h1, h2, h3)])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), y[i:i + 64])
        loss.backward()
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    units = watcher.monitor.units
    assert [(u.name, u.activation_layer) for u in units] == \
        [("fc1", "act"), ("fc2", "act#2"), ("fc3", "act#3"), ("out", None)]
    dead = watcher.monitor.history.layer("dead_fraction")
    np.testing.assert_allclose(dead[:, :3], expected, atol=1e-12)
    assert np.isnan(dead[:, 3]).all()
    assert max(e[0] for e in expected) > 0.5
    assert any(f.code == "dead_units" and f.layer == "fc1" for f in report.findings)


def test_evaluation_passes_are_not_captured():
    X, y, net, opt, watcher = watched_xor_net()
    with torch.no_grad():  # a validation pass on inputs that switch every unit off must not count
        net(-1e3 * torch.ones(8, 4, dtype=torch.float64))
    with torch.no_grad():
        expected = float((net[0](X[:64]).amax(0) <= 0).double().mean())  # dead fraction of the training batch
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(X[:64]), y[:64])
    loss.backward()
    with torch.no_grad():
        net(-1e3 * torch.ones(8, 4, dtype=torch.float64))
    opt.step()
    watcher.log_loss(loss)
    watcher.close()
    dead = watcher.monitor.history.layer("dead_fraction")[0]
    assert expected < 0.5
    assert dead[0] == pytest.approx(expected)  # with the validation activations it would be 1.0
    assert watcher.monitor.history.steps.tolist() == [0]


# -- loops without an optimizer (A3) ----------------------------------------------------------------------------
def test_without_optimizer_updates_are_measured_between_step_calls():
    X, y = xor_data(512)
    net = small_relu_net()
    lr = 0.1
    watcher = gradmon.torch.watch(net, console=False, curvature_every=0, tensorboard=False, weight_every=1)
    expected = []  # oracle: |lr * dW| / |W| per Linear, W before the update
    for epoch in range(3):
        for i in range(0, 512, 32):
            net.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
            loss.backward()
            watcher.step(lr=lr)
            expected.append([float((lr * m.weight.grad).norm() / m.weight.detach().norm())
                             for m in net if isinstance(m, torch.nn.Linear)])
            with torch.no_grad():
                for p in net.parameters():
                    p -= lr * p.grad
            watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    h = watcher.monitor.history
    ratios = h.layer("update_ratio")
    np.testing.assert_allclose(ratios[:-1], expected[:-1], rtol=1e-9)
    assert np.isnan(ratios[-1]).all()  # the last step's update is unknown: NaN, not 0
    np.testing.assert_allclose(h.scalar("lr"), lr)
    assert not [f for f in report.findings if f.code == "update_ratio"]
    with pytest.raises(RuntimeError, match="optimizer"):
        gradmon.torch.watch(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), console=False).step()


# -- learning-rate schedules and curvature on the last batch (A5, A11) -----------------------------------------
def flat_hessian_top_eigenvalue(net, x, y, loss_fn):
    params = [p.detach().clone() for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.reshape(-1) for p in params])

    def f(flat):
        parts, k = {}, 0
        for n, s in zip(names, shapes):
            size = int(np.prod(s))
            parts[n] = flat[k:k + size].reshape(s)
            k += size
        return loss_fn(torch.func.functional_call(net, parts, (x,)), y)
    H = torch.autograd.functional.hessian(f, flat0)
    return float(np.linalg.eigvalsh(H.numpy()).max())


def test_lr_follows_the_scheduler_and_curvature_uses_the_last_batch():
    torch.manual_seed(0)
    X = torch.randn(128, 3, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(3, 1, dtype=torch.float64))
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 6 else 0.1)
    loss_fn = torch.nn.functional.mse_loss
    watcher = gradmon.torch.watch(net, optimizer=opt, loss_fn=loss_fn, console=False, curvature_every=5,
                                  tensorboard=False)
    lrs, oracle = [], {}
    batches = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 128, 32)]
    for step in range(12):
        xb, yb = batches[step % 4]
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0 and step > 0:  # curvature of this step: the previous batch (its targets came last)
            px, py = batches[(step - 1) % 4]
            oracle[step] = flat_hessian_top_eigenvalue(net, px, py, loss_fn)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        watcher.log_loss(loss, target=yb)
    watcher.close()
    h = watcher.monitor.history
    np.testing.assert_allclose(h.scalar("lr"), lrs)
    curv = {c["step"]: c for c in watcher.monitor.curvature}
    assert sorted(curv) == [5, 10]  # step 0 had no targets yet
    for step, lam in oracle.items():
        assert curv[step]["lambda_max"] == pytest.approx(lam, rel=1e-3)
        assert curv[step]["lr"] == lrs[step]


def test_without_loss_fn_the_report_says_curvature_is_off(capsys):
    X, y = xor_data()
    net = small_relu_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    watcher = gradmon.torch.watch(net, optimizer=opt, curvature_every=2, tensorboard=False)
    for i in range(0, 128, 32):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
        loss.backward()
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    assert report.curvature == []
    notes = report.to_dict()["extra"]["notes"]
    assert any("curvature is off" in n and "loss_fn" in n for n in notes)
    assert "curvature is off" in capsys.readouterr().err
    from gradmon.report import render_html, render_markdown

    assert '<ul id="notes"><li>curvature is off' in render_html(report)
    assert "## Notes" in render_markdown(report) and "curvature is off" in render_markdown(report)


def test_watching_never_changes_training():
    def train(watched):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.2), torch.nn.Linear(16, 2)).double()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        X, y = xor_data()
        watcher = gradmon.torch.watch(net, optimizer=opt, loss_fn=torch.nn.functional.cross_entropy,
                                      console=False, curvature_every=3, tensorboard=False) if watched else None
        for i in range(0, 256, 32):
            loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
            if watcher is not None:
                watcher.log_loss(loss, target=y[i:i + 32])
        if watcher is not None:
            watcher.close()
            assert len(watcher.monitor.curvature) >= 2
        return {**dict(net.named_parameters()), **dict(net.named_buffers())}

    torch.manual_seed(1)
    plain = train(False)
    torch.manual_seed(1)
    watched = train(True)
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k


# -- names (C4) and the optional import (C8) ------------------------------------------------------------------
def test_units_have_readable_names_and_torch_parameter_keys():
    net = small_relu_net()
    watcher = gradmon.torch.watch(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), console=False,
                                  curvature_every=0, tensorboard=False)
    X, y = xor_data(64)
    torch.nn.functional.cross_entropy(net(X), y).backward()
    watcher.optimizer.step()
    watcher.close()
    units = watcher.monitor.units
    assert [u.name for u in units] == ["linear0", "linear2", "linear4"]
    assert [u.weight for u in units] == ["0.weight", "2.weight", "4.weight"]
    assert [u.activation_layer for u in units] == ["relu1", "relu3", None]
    nested = torch.nn.Module()
    nested.net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    assert gradmon.torch.layer_infos(nested)[0].name == "net.linear0"


def test_gradmon_torch_attribute_without_torch(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None          # as if torch were not installed
        import gradmon
        assert getattr(gradmon, "torch", None) is None
        assert not hasattr(gradmon, "torch")
        try:
            gradmon.torch
        except AttributeError as exc:
            print("MESSAGE:", exc)
        try:
            import gradmon.torch
        except ImportError as exc:
            print("IMPORT:", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MESSAGE: gradmon.torch needs PyTorch" in proc.stdout and "pip install torch==2.13.0" in proc.stdout
    assert "IMPORT: gradmon.torch needs PyTorch" in proc.stdout


def test_a_grad_scaler_is_divided_out_and_unscaling_is_not_clipping():
    """Mixed-precision loops scale the loss; after backward the gradients carry the scale.  Oracle: the
    gradient norms after scaler.unscale_ (what the optimizer applies)."""
    X, y = xor_data()
    net = small_relu_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14)
    watcher = gradmon.torch.watch(net, optimizer=opt, scaler=scaler, console=False, curvature_every=0,
                                  tensorboard=False)
    totals, per_layer = [], []
    for i in range(0, 256, 32):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        per_layer.append(layer_grad_norms(net))
        totals.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))))
        scaler.step(opt)
        scaler.update()
        watcher.log_loss(loss)
    watcher.close()
    h = watcher.monitor.history
    np.testing.assert_allclose(h.scalar("grad_norm"), totals, rtol=1e-6)
    np.testing.assert_allclose(h.layer("grad_norm"), per_layer, rtol=1e-6)
    np.testing.assert_allclose(h.scalar("clip_coef"), 1.0, rtol=1e-6)


def test_a_skipped_optimizer_step_does_not_shift_the_losses():
    """A loop that skips a step (a non-finite guard, a GradScaler) logs a loss without a step: the losses
    recorded afterwards must still be those of their own steps."""
    X, y, net, opt, watcher = watched_xor_net()
    applied = []
    for k, i in enumerate(range(0, 256, 32)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
        loss.backward()
        watcher.log_loss(loss)                 # logged before the step, as many loops do
        if k != 3:                             # iteration 3 skips its step
            opt.step()
            applied.append(loss.item())
    watcher.close()
    np.testing.assert_allclose(watcher.monitor.history.scalar("loss"), applied, rtol=1e-7)


def test_an_inf_gradient_is_reported_even_when_clip_grad_value_hides_it():
    X, y, net, opt, watcher = watched_xor_net()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)][0]
    for k, i in enumerate(range(0, 128, 32)):
        opt.zero_grad()
        handle = linear.weight.register_hook(lambda g: torch.full_like(g, float("inf"))) if k == 2 else None
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
        loss.backward()
        if handle is not None:
            handle.remove()
            assert torch.isinf(linear.weight.grad).all()
        torch.nn.utils.clip_grad_value_(net.parameters(), 1.0)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())  # the step sees finite gradients
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    (f,) = [f for f in report.findings if f.code == "nonfinite_values"]
    assert f.first_step == 2 and f.layer == watcher.monitor.units[0].name and "gradients" in f.message


# -- statistics on the tensors' device: what crosses to the host ------------------------------------------------
class HostReads(torch.overrides.TorchFunctionMode):
    """Counts, independently of gradmon's own counter, every conversion of a tensor into host values
    (``.numpy()``, ``.item()``, ``.tolist()``, ``float()``/``int()``/``bool()``) and every copy to the CPU
    from another device, with the number of elements each moves."""

    READS = {torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__}
    MOVES = {torch.Tensor.cpu, torch.Tensor.to}

    def __init__(self):
        super().__init__()
        self.calls, self.elements, self.largest = 0, 0, 0
        self.sizes: list[int] = []  # elements of each read, in order

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        moved = func in self.MOVES and t is not None and t.device.type != "cpu" and \
            isinstance(out, torch.Tensor) and out.device.type == "cpu"
        if t is not None and (func in self.READS or moved):
            self.calls += 1
            self.elements += t.numel()
            self.largest = max(self.largest, t.numel())
            self.sizes.append(t.numel())
        return out


def benchmark_mlp(device="cpu", seed=0):
    """The benchmark's MLP (784-256-256-256-10, ReLU), SGD, and 40 batches of 128."""
    torch.manual_seed(seed)
    sizes = (784, 256, 256, 256, 10)
    layers = []
    for i in range(4):
        layers += [torch.nn.Linear(sizes[i], sizes[i + 1])] + ([torch.nn.ReLU()] if i < 3 else [])
    model = torch.nn.Sequential(*layers).to(device)
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(40 * 128, 784, generator=g).to(device), torch.randint(0, 10, (40 * 128,), generator=g).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01), X, y


def count_host_traffic(device, steps=30, watched=True):
    from gradmon.quantities.xp import HOST_TRANSFERS

    model, opt, X, y = benchmark_mlp(device)
    watcher = gradmon.torch.watch(model, optimizer=opt, curvature_every=0, console=False, tensorboard=False) \
        if watched else None
    mode = HostReads()
    HOST_TRANSFERS.reset()
    with mode:
        for s in range(steps):
            xb, yb = X[s * 128:(s + 1) * 128], y[s * 128:(s + 1) * 128]
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watcher is not None:
                watcher.log_loss(loss)  # a tensor: no synchronisation of its own
    counted = (HOST_TRANSFERS.calls, HOST_TRANSFERS.elements)
    if watcher is not None:
        watcher.close()
        assert watcher.error is None
    return model, mode, counted, watcher


def test_a_recorded_step_moves_per_unit_scalars_to_the_host_once():
    params = sum(p.numel() for p in benchmark_mlp()[0].parameters())
    with HostReads() as probe:  # the counter sees what a loop that reads values would do
        float(torch.ones(3).sum()), torch.ones(5).numpy(), torch.ones(2).tolist()
    assert (probe.calls, probe.elements) == (3, 8)
    _, control, _, _ = count_host_traffic("cpu", watched=False)
    assert control.calls == 0  # the loop itself reads nothing: what is counted below is gradmon's
    model, mode, (calls, elements), watcher = count_host_traffic("cpu")
    units, tensors = len(watcher.monitor.units), len(watcher.monitor.recorder.grad_keys)
    assert (units, tensors) == (4, 8) and params == 335_114
    assert len(watcher.monitor.history) == 30
    assert calls == 30  # gradmon's own counter: one transfer per recorded step
    # the independent count: host reads of tensors, each a short vector, O(units) elements per step
    assert mode.calls == 30 and mode.elements == elements
    # while the data's scale is measured (the first 1024 examples: 8 batches of 128) a step also brings
    # 3 numbers per input feature (sum, sum of squares, non-zero count); after that, per-unit scalars only
    features, measuring = 784, -(-watcher.monitor.recorder.inputs.limit // 128)
    small = 4 * (units + tensors)
    measured = [n for n in mode.sizes if n > small]
    assert len(measured) == measuring and all(n - 3 * features <= small for n in measured)
    assert elements - 3 * features * measuring <= 3 * (units + tensors) * 30
    assert mode.elements - 3 * features * measuring < 1e-3 * params * 30  # against O(parameters) per step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_statistics_stay_on_the_device_and_agree_with_the_cpu():
    _, cpu_mode, _, cpu_watcher = count_host_traffic("cpu")
    _, mode, (calls, elements), watcher = count_host_traffic("cuda")
    measuring = -(-watcher.monitor.recorder.inputs.limit // 128)  # steps that also bring the inputs' scale
    assert calls == 30 and mode.calls == 30 and sorted(mode.sizes)[-measuring - 1] <= 4 * 12
    a, b = cpu_watcher.monitor.history, watcher.monitor.history
    np.testing.assert_allclose(b.layer("grad_norm"), a.layer("grad_norm"), rtol=1e-3)
    np.testing.assert_allclose(b.layer("dead_fraction"), a.layer("dead_fraction"), atol=0.02)
    np.testing.assert_allclose(b.scalar("loss"), a.scalar("loss"), rtol=1e-3)


# -- the cost budget of the statistics ---------------------------------------------------------------------------
def test_the_budget_chooses_the_sparsest_cadence_that_fits():
    from gradmon.adapters.torch_budget import AIM, StatisticsBudget

    def run(budget, cost_measured, cost_unmeasured, bare, steps):
        """Feed ``steps`` intervals measured at the budget's own cadence; the cadence it ends with."""
        for s in range(steps):
            every = budget.every
            measured = s % every == 0
            cost = cost_measured if measured else cost_unmeasured
            budget.record(bare + cost, cost)
        return budget.every

    # a tiny model: measuring costs 300 us on a 2 ms step (15%): thinned to the cadence the cost model gives
    budget = StatisticsBudget(0.05, warmup=40, period=30)
    every = run(budget, 300e-6, 20e-6, 2e-3, 400)
    room = AIM * 0.05 * 2e-3
    assert every == math.ceil((300e-6 - 20e-6) / (room - 20e-6)) == 5
    # (the first 20 intervals hold one-off costs; the first decision comes after a full period of 30 more)
    assert budget.unmeasured_cost == pytest.approx(20e-6, rel=0.2) and budget.thinned_at == 20 + 30
    assert "every 5 steps" in budget.describe() and "15%" in budget.describe()
    # a large model: the same cost is under 1% of a 40 ms step: every step, and nothing to say
    big = StatisticsBudget(0.05, warmup=40, period=30)
    assert run(big, 300e-6, 20e-6, 40e-3, 400) == 1 and big.describe() is None
    with pytest.raises(ValueError, match="statistics_budget"):
        StatisticsBudget(1.5)


def test_a_fast_model_is_measured_within_the_budget_and_every_is_a_promise():
    from gradmon.adapters.torch_budget import StatisticsBudget

    X, y = xor_data(512)

    def train(**options):
        net = small_relu_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        watcher = gradmon.torch.watch(net, optimizer=opt, console=False, curvature_every=0, tensorboard=False,
                                      **options)
        for s in range(160):
            i = (s * 32) % 480
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
            watcher.log_loss(loss)
        report = watcher.report()
        watcher.close()
        return watcher, report

    # a budget no measurement fits (a millionth of the step time), so that the cadence chosen does not depend
    # on how fast this machine is right now: the sparsest one from the first decision on
    watcher, report = train(statistics_budget=StatisticsBudget(1e-6, warmup=40, period=20))
    steps = watcher.monitor.history.steps
    assert list(steps[:40]) == list(range(40))  # the warm-up: every step
    assert watcher.monitor.recorder.every > 1 and len(steps) < 120
    assert any("statistics were measured at every step until step" in n for n in report.extra["notes"])
    for options in ({"every": 1}, {"statistics_budget": None}):
        watcher, report = train(**options)
        assert list(watcher.monitor.history.steps) == list(range(160))
        assert not any("statistics were measured" in n for n in report.extra.get("notes", []))
