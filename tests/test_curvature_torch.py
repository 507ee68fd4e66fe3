"""Curvature of PyTorch models against torch's own dense Hessian (``torch.autograd.functional.hessian``): the
products of one gradient graph, one forward pass per estimate, vectors kept as tensors, the exact trace of
Sequential ReLU stacks, the one-call API leaving mode, buffers, dropout, gradients and RNG as they were, and
the watcher's default budget measuring from the first step it can."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradmon  # noqa: E402
import gradmon.torch  # noqa: E402
from gradmon.adapters.torch_objective import TorchObjective  # noqa: E402
from gradmon.quantities.curvature import estimate_curvature  # noqa: E402

pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


def dense_hessian(model, loss_fn, x, y):
    """The oracle: torch's dense Hessian of the loss in all parameters (named_parameters order), float64."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().double() for _, p in model.named_parameters())
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    shadow = _double(model)

    def loss(*ps):
        out = torch.func.functional_call(shadow, {**dict(zip(names, ps)), **buffers}, (x.double(),))
        return loss_fn(out, y.double() if y.is_floating_point() else y)

    blocks = torch.autograd.functional.hessian(loss, params)
    sizes = [p.numel() for p in params]
    return torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                      for i in range(len(sizes))], 0).numpy()


def _double(model):
    import copy

    shadow = copy.deepcopy(model).double()
    for m in shadow.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return shadow


def mlp(act, out=3, batchnorm=False, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6), act()]
    if batchnorm:
        layers.append(nn.BatchNorm1d(6))
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(6, 5), act(), nn.Linear(5, out)]
    return nn.Sequential(*layers).double()


def batch(loss, n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g) if loss == "ce" else torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("act,batchnorm,dropout", [(nn.Tanh, True, 0.3), (nn.Sigmoid, False, 0.0),
                                                   (nn.ReLU, False, 0.5)])
def test_products_of_one_gradient_graph_match_torch_dense_hessian(act, batchnorm, dropout):
    model = mlp(act, batchnorm=batchnorm, dropout=dropout)
    x, y = batch("ce")
    H = dense_hessian(model, F.cross_entropy, x, y)
    op = TorchObjective(model, x, y, F.cross_entropy).linearize()
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = op.vector(rng.normal(size=op.dim))
        hv = op.hvp(v)
        assert isinstance(hv, torch.Tensor) and hv.dtype == torch.float64  # a tensor of the model's dtype, never numpy
        np.testing.assert_allclose(hv.numpy(), H @ v.numpy(), rtol=1e-8, atol=1e-10)


def test_an_estimate_runs_one_forward_pass_and_lanczos_works_on_tensors():
    model = mlp(nn.Tanh)
    x, y = batch("ce")
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    op = TorchObjective(model, x, y, F.cross_entropy).linearize()
    est = estimate_curvature(op, rtol=1e-8, max_iter=40, seed=0)
    assert len(calls) == 1 and op.n_hvp == est.hvps and est.lanczos_hvps >= 10
    H = dense_hessian(model, F.cross_entropy, x, y)
    assert est.lambda_max == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-7)
    assert isinstance(est.top_vector, torch.Tensor)
    assert abs(est.trace - np.trace(H)) < 4 * est.trace_stderr  # tanh: deflated, with an error bar


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU])
@pytest.mark.parametrize("loss_fn,kind", [(F.cross_entropy, "ce"), (nn.CrossEntropyLoss(), "ce"),
                                          (F.mse_loss, "mse"), (nn.MSELoss(), "mse")])
def test_the_exact_trace_of_sequential_rectifier_stacks(act, loss_fn, kind):
    model = mlp(act, dropout=0.5)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.fill_(0.1)  # no unit exactly at its kink
    x, y = batch(kind)
    H = dense_hessian(model, loss_fn, x, y)
    op = TorchObjective(model, x, y, loss_fn).linearize()
    assert op.exact_trace() == pytest.approx(np.trace(H), rel=1e-9)
    layers = op.layer_traces()
    assert list(layers) == ["0", "3", "5"] and sum(layers.values()) == pytest.approx(np.trace(H), rel=1e-9)


def test_no_exact_trace_where_the_route_cannot_vouch_for_it():
    x, y = batch("ce")

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) ** 2)

    shared = nn.Linear(4, 4)
    cases = [(mlp(nn.Tanh), F.cross_entropy), (Custom().double(), F.cross_entropy),
             (mlp(nn.ReLU), nn.CrossEntropyLoss(label_smoothing=0.1)), (mlp(nn.ReLU), nn.CrossEntropyLoss(reduction="sum")),
             (nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 3)).double(), F.cross_entropy),
             (mlp(nn.ReLU, batchnorm=True), F.cross_entropy)]
    for model, loss_fn in cases:
        assert TorchObjective(model, x, y, loss_fn).linearize().exact_trace() is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_call_leaves_the_model_exactly_as_it_was(mode):
    model = mlp(nn.ReLU, batchnorm=True, dropout=0.3)
    x, y = batch("ce", n=32)
    model.train()
    for _ in range(3):  # running statistics away from their initial values, gradients present
        F.cross_entropy(model(x), y).backward()
    getattr(model, mode)()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    flags = [m.training for m in model.modules()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    result = gradmon.torch.curvature(model, F.cross_entropy, (x, y), tol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, params[n]) and torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    # the oracle: the same model with dropout off and BatchNorm as the mode says
    H = dense_hessian(model, F.cross_entropy, x, y)
    assert result.lambda_max == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-5)
    assert result.converged and result.hvps >= result.lanczos_hvps > 0 and result.seconds > 0
    assert set(result.to_dict()) >= {"lambda_max", "trace", "trace_stderr", "hvps", "seconds", "converged"}


def test_one_call_exact_trace_on_a_float32_model_and_bad_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    result = gradmon.torch.curvature(model, F.cross_entropy, (x, y))
    H = dense_hessian(model, F.cross_entropy, x, y)
    assert result.trace_method == "exact (Gauss-Newton)" and result.trace_stderr == 0
    assert result.trace == pytest.approx(np.trace(H), rel=1e-5)
    assert result.lambda_max == pytest.approx(np.linalg.eigvalsh(H).max(), rel=2e-3)
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"batch=\(x, y\)"):
        gradmon.torch.curvature(model, F.cross_entropy, x)
    with pytest.raises(TypeError, match="nn.Module"):
        gradmon.torch.curvature(lambda t: t, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="scalar tensor"):
        gradmon.torch.curvature(model, lambda out, t: F.cross_entropy(out, t, reduction="none"), (x, y))


def test_the_watcher_measures_from_the_first_step_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    initial = _double(model)
    with_probe = gradmon.torch.watch(model, optimizer=opt, probe=(x, y), loss_fn=F.cross_entropy, console=False,
                                     tensorboard=False)
    last_batch = None
    for step in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with_probe.log_loss(loss)
    with_probe.close()
    first = with_probe.monitor.curvature[0]
    assert first["step"] == 0  # the probe is there before the first step
    # quick (the probe's 64 examples are fewer than 128: all of them), within its tolerance of the dense
    # Hessian's top eigenvalue at the initial weights (Ritz values approach it from below)
    assert first["rtol"] == 0.05 and first["examples"] == 64
    lam = np.linalg.eigvalsh(dense_hessian(initial, F.cross_entropy, x.double(), y))[-1]
    assert 0.95 * lam <= first["lambda_max"] <= lam * (1 + 1e-4)
    model2 = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    last_batch = gradmon.torch.watch(model2, optimizer=opt2, loss_fn=F.cross_entropy, console=False,
                                     tensorboard=False)
    for step in range(5):
        loss = F.cross_entropy(model2(x), y)
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        last_batch.log_loss(loss, target=y)  # the targets come after the step: the first batch is step 1's
    last_batch.close()
    entries = last_batch.monitor.curvature
    assert entries[0]["step"] == 1 and entries[0]["trace_method"] == "exact (Gauss-Newton)"
    assert entries[0]["rtol"] == 0.05 and entries[0]["examples"] == 64  # quick, on the last batch
