"""Curvature estimates for core models against oracles: products against the dense finite-difference Hessian,
one forward and backward pass per estimate, the exact Gauss-Newton trace against the dense trace, the deflated
trace against plain Hutchinson on known spectra, warm starts, the one-call API leaving the model untouched,
the time budget's scheduling (injected clock) and its share on a real run, the size check of the workspace,
and the trace's error bar in the report files and TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest

import core
import gradmon
from core.spec import SpecError, load_spec
from gradmon.quantities.curvature import estimate_curvature, fd_hvp, flatten, unflatten
from gradmon.quantities.curvature_budget import TimeBudget
from gradmon.quantities.lanczos import lanczos
from gradmon.quantities.trace import deflated_trace, hutchinson_trace


def dense_fd_hessian(obj, params):
    """The oracle: the Hessian column by column from central differences of the gradient, with a step that
    no rectifier unit changes side across (checked: :func:`fd_hvp` with the objective's kink pattern)."""
    dim = flatten(params).size
    H = np.zeros((dim, dim))
    for i in range(dim):
        e = np.zeros(dim)
        e[i] = 1.0
        column, info = fd_hvp(obj.grad, params, unflatten(e, params), eps=1e-5, kink_fn=obj.kinks)
        assert info["kinks_crossed"] == 0
        H[:, i] = flatten(column)
    return 0.5 * (H + H.T)


def data(loss, n=40, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if loss == "cross_entropy":
        return X, rng.integers(0, k, size=n), k
    if loss == "binary_cross_entropy":
        return X, rng.integers(0, 2, size=n), 1
    return X, rng.normal(size=(n, k)), k


def net(act, k, batchnorm=False, dropout=0.0, seed=1, dtype="float64"):
    """A small net; biases start at 0.1, so that no rectifier sits exactly at its kink (a unit dead for an
    example gives the next layer a pre-activation of exactly its bias)."""
    layers = [core.Dense(4, 6, bias_init=0.1), act()]
    if batchnorm:
        layers.append(core.BatchNorm(6))
    if dropout:
        layers.append(core.Dropout(dropout))
    layers += [core.Dense(6, 5, bias_init=0.1), act(), core.Dense(5, k)]
    return core.Sequential(layers, seed=seed, dtype=dtype)


# -- products ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act,loss,batchnorm,dropout", [
    (core.Tanh, "cross_entropy", True, 0.3), (core.Sigmoid, "mse", False, 0.0),
    (core.ELU, "binary_cross_entropy", True, 0.0), (core.ReLU, "cross_entropy", False, 0.5)])
def test_linearised_products_match_the_dense_finite_difference_hessian(act, loss, batchnorm, dropout):
    X, y, k = data(loss)
    model = net(act, k, batchnorm, dropout)
    name = "dropout3" if batchnorm else "dropout2"
    masks = {name: (np.random.default_rng(5).random((40, 6)) > dropout) / (1 - dropout)} if dropout else None
    obj = core.BatchObjective(model, core.get_loss(loss), X, y, l2=0.01, masks=masks)
    params = {key: v.copy() for key, v in model.parameters().items()}
    H = dense_fd_hessian(obj, params)
    op = obj.linearize()
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.normal(size=op.dim)
        np.testing.assert_allclose(op.hvp(v), H @ v, rtol=1e-5, atol=1e-7 * np.abs(H).max())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_products_in_the_models_float32_match_the_float64_ones_to_its_rounding(loss):
    X, y, k = data(loss)
    model = net(core.Tanh, k, dropout=0.5, dtype="float32")
    masks = {"dropout2": (np.random.default_rng(5).random((40, 6)) > 0.5) * 2.0}
    obj = core.BatchObjective(model, core.get_loss(loss), X, y, l2=0.01, masks=masks)
    exact, rough = obj.linearize(), obj.linearize(dtype="float32")
    v = np.random.default_rng(0).normal(size=exact.dim)
    hv = rough.hvp(v)
    assert rough.dtype == np.float32 and hv.dtype == np.float32 and exact.hvp(v).dtype == np.float64
    np.testing.assert_allclose(hv, exact.hvp(v), rtol=1e-4, atol=1e-5 * np.abs(exact.hvp(v)).max())
    assert rough.value == pytest.approx(exact.value, rel=1e-5)


def test_an_estimate_runs_the_forward_pass_once(monkeypatch):
    X, y, k = data("cross_entropy", n=64)
    model = net(core.Tanh, k)
    obj = core.BatchObjective(model, core.get_loss("cross_entropy"), X, y)
    calls = []
    forward = core.Sequential.forward
    monkeypatch.setattr(core.Sequential, "forward", lambda self, *a, **kw: calls.append(1) or forward(self, *a, **kw))
    est = estimate_curvature(obj.linearize(), rtol=1e-6, max_iter=30)
    assert est.hvps >= 20 and len(calls) == 1 and obj.n_hvp == est.hvps


# -- the trace ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", [core.ReLU, core.LeakyReLU])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "binary_cross_entropy"])
def test_the_gauss_newton_trace_is_the_exact_hessian_trace_of_piecewise_linear_nets(act, loss):
    X, y, k = data(loss)
    model = net(act, k, dropout=0.5)
    masks = {"dropout2": (np.random.default_rng(5).random((40, 6)) > 0.5) * 2.0}
    obj = core.BatchObjective(model, core.get_loss(loss), X, y, l2=0.05, masks=masks)
    H = dense_fd_hessian(obj, {key: v.copy() for key, v in model.parameters().items()})
    op = obj.linearize()
    assert op.exact_trace() == pytest.approx(np.trace(H), rel=1e-6)
    per_layer = op.layer_traces()
    assert set(per_layer) == {"dense0", "dense3", "dense5"}
    start = 0
    for name in ("dense0", "dense3", "dense5"):  # the diagonal block of each layer
        size = sum(model.parameters()[f"{name}.{p}"].size for p in ("weight", "bias"))
        assert per_layer[name] == pytest.approx(np.trace(H[start:start + size, start:start + size]), rel=1e-6)
        start += size


def test_no_exact_route_for_smooth_activations_or_batchnorm():
    X, y, k = data("cross_entropy")
    for model in (net(core.Tanh, k), net(core.ReLU, k, batchnorm=True)):
        op = core.BatchObjective(model, core.get_loss("cross_entropy"), X, y).linearize()
        assert op.exact_trace() is None
        est = estimate_curvature(op, seed=0)
        assert est.trace_method == "deflated" and est.trace_stderr > 0


def hessian_like(dim, seed):
    """A spectrum like a network's: a few large outliers over a bulk of small, mostly positive values."""
    rng = np.random.default_rng(seed)
    spectrum = np.concatenate([[40.0, 25.0, 12.0, 8.0, 5.0], rng.gamma(0.5, 0.05, dim - 5) - 0.01])
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * spectrum) @ q.T


def test_the_deflated_trace_beats_hutchinson_at_the_same_products_and_its_error_bar_is_honest():
    H = hessian_like(300, 0)
    exact = np.trace(H)
    deflated_err, plain_err, z_scores = [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        lz = lanczos(lambda v: H @ v, 300, rtol=1e-3, rng=rng, keep_basis=True)
        d = deflated_trace(lambda v: H @ v, lz.basis, lz.ritz_trace, lz.hvps, rng=rng)
        h = hutchinson_trace(lambda v: H @ v, 300, samples=lz.hvps + d.hvps, rng=np.random.default_rng(100 + seed))
        deflated_err.append(abs(d.trace - exact) / exact)
        plain_err.append(abs(h.trace - exact) / exact)
        z_scores.append(abs(d.trace - exact) / d.stderr)
    assert np.median(deflated_err) < 0.05 and np.median(deflated_err) < np.median(plain_err) / 4
    assert np.mean(np.array(z_scores) < 2.5) >= 0.85  # about 1.96 standard errors cover 95%


def test_a_basis_spanning_the_whole_space_gives_the_exact_trace_for_free():
    H = hessian_like(12, 1)
    lz = lanczos(lambda v: H @ v, 12, k=12, rtol=1e-12, max_iter=12, keep_basis=True)
    d = deflated_trace(lambda v: H @ v, lz.basis, lz.ritz_trace, 10)
    assert d.hvps == 0 and d.stderr == 0 and d.trace == pytest.approx(np.trace(H), rel=1e-10)


# -- warm starts --------------------------------------------------------------------------------------------------
def test_a_warm_start_converges_in_fewer_products_to_the_same_eigenvalue():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 8))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    model = core.Sequential([core.Dense(8, 32, init="he_normal"), core.Tanh(), core.Dense(32, 32), core.Tanh(),
                             core.Dense(32, 2)], seed=0, dtype="float64")
    trainer = core.Trainer(model, optimizer=core.SGD(0.1), batch_size=32, progress=False)
    obj = core.BatchObjective(model, core.get_loss("cross_entropy"), X, y)
    first = estimate_curvature(obj.linearize(), seed=0, trace=False)
    trainer.fit(X, y, epochs=1)  # ten steps move the weights a little
    op = obj.linearize()
    H = np.stack([op.hvp(e) for e in np.eye(op.dim)])
    exact = np.linalg.eigvalsh(0.5 * (H + H.T)).max()
    cold = estimate_curvature(op, seed=1, trace=False)
    warm = estimate_curvature(op, seed=1, trace=False, warm_start=first.top_vector)
    assert warm.warm_start and not cold.warm_start
    assert warm.lambda_max == pytest.approx(exact, rel=1e-3) and cold.lambda_max == pytest.approx(exact, rel=1e-3)
    assert warm.lanczos_hvps < cold.lanczos_hvps


# -- one call -----------------------------------------------------------------------------------------------------
def test_one_call_against_the_dense_hessian_and_the_model_left_as_it_was():
    X, y, k = data("cross_entropy", n=60)
    model = core.Sequential([core.Dense(4, 6), core.ReLU(), core.BatchNorm(6), core.Dropout(0.3), core.Dense(6, k)],
                            seed=2, dtype="float64")
    core.Trainer(model, optimizer=core.SGD(0.1), batch_size=20, progress=False).fit(X, y, epochs=2)
    before = model.state_dict()
    rng_state = json.dumps(model.dropout_rng.bit_generator.state)
    result = gradmon.curvature(model, X, y, loss="cross_entropy", tol=1e-6)
    after = model.state_dict()
    assert all(np.array_equal(before[key], after[key]) for key in before) and set(before) == set(after)
    assert json.dumps(model.dropout_rng.bit_generator.state) == rng_state
    obj = core.BatchObjective(model, core.get_loss("cross_entropy"), X, y, dropout=False)  # dropout off
    H = dense_fd_hessian(obj, {key: v.copy() for key, v in model.parameters().items()})
    assert result.lambda_max == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-5)
    assert result.converged and result.hvps >= result.lanczos_hvps > 0 and result.seconds > 0
    assert result.trace_method == "deflated"  # BatchNorm: no exact route
    assert abs(result.trace - np.trace(H)) < 4 * result.trace_stderr


def test_one_call_exact_trace_and_bad_input():
    X, y, k = data("mse", n=30)
    model = net(core.ReLU, k)
    result = gradmon.curvature(model, X, y, loss="mse", l2=0.01)
    obj = core.BatchObjective(model, core.get_loss("mse"), X, y, l2=0.01)
    H = dense_fd_hessian(obj, {key: v.copy() for key, v in model.parameters().items()})
    assert result.trace == pytest.approx(np.trace(H), rel=1e-6) and result.trace_stderr == 0
    assert sum(result.layer_traces.values()) == pytest.approx(result.trace)
    assert result.to_dict()["trace_method"] == "exact (Gauss-Newton)"
    with pytest.raises(TypeError, match="core.Sequential"):
        gradmon.curvature(object(), X, y)
    with pytest.raises(ValueError, match="one target per row"):
        gradmon.curvature(model, X, y[:5], loss="mse")
    with pytest.raises(ValueError, match="tol"):
        gradmon.curvature(model, X, y, loss="mse", tol=2)


# -- the time budget ----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_schedule_with_an_injected_clock():
    clock = Clock()
    budget = TimeBudget(0.05, clock)
    taken = []
    for step in range(2000):
        if budget.due(step):
            assert budget.due(step)  # a step's answer is kept for every part of the loop that asks
            taken.append(step)
            cost = 10.0 if not taken[:-1] else 2.0  # the cold estimate costs 10 steps, warm ones 2
            clock.now += cost
            budget.charge(cost)
        clock.now += 1.0  # one training step
    assert taken[0] == 0
    # the first one's 10 is paid back before the second, expected to cost as much: 10 + 10 <= 0.05 (10 + s + 10)
    assert taken[1] == 380
    assert np.all(np.diff(taken)[-10:] == 38)  # in the long run one warm estimate (2) per 40 units of time: 5%
    assert 0.045 <= budget.share <= 0.05
    with pytest.raises(ValueError, match="fraction of wall time"):
        TimeBudget(1.5)


def test_a_default_run_measures_at_the_first_step_within_its_budget_and_warm_starts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 20))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64)
    monitor = gradmon.Monitor(console=False, curvature_samples=256)
    model = core.Sequential([core.Dense(20, 64, init="he_normal"), core.ReLU(), core.Dense(64, 2)], seed=0)
    import time

    t0 = time.perf_counter()
    core.Trainer(model, optimizer=core.SGD(0.05), batch_size=16, callbacks=[monitor], progress=False).fit(
        X, y, epochs=8)
    wall = time.perf_counter() - t0
    entries = monitor.curvature
    assert entries[0]["step"] == 0 and not entries[0]["warm_start"] and len(entries) >= 2
    assert all(e["warm_start"] for e in entries[1:])
    spent = sum(e["seconds"] for e in entries)
    # at most the budget, plus the first measurement that the budget pays back (generous margin: a shared machine)
    assert spent <= 2 * (0.05 * wall + entries[0]["seconds"])
    assert spent / wall <= 0.5
    assert all(e["trace_method"] == "exact (Gauss-Newton)" and e["trace_stderr"] == 0 for e in entries)


@pytest.mark.parametrize("act,dtype", [(core.ReLU, "float64"), (core.Tanh, "float64"), (core.ReLU, "float32")])
def test_the_first_estimate_of_a_budgeted_run_is_quick_and_within_its_tolerance(act, dtype):
    """The oracle: the dense finite-difference Hessian (float64) of the loss on the probe's first 128 examples
    (a batch's worth, at least 128), at the initial weights; Ritz values approach λmax from below.  The quick
    estimate computes in the model's dtype."""
    X, y, k = data("cross_entropy", n=400)
    model = net(act, k, dtype=dtype)
    init = {key: v.astype(np.float64) for key, v in model.parameters().items()}
    monitor = gradmon.Monitor(console=False, tensorboard=False, curvature_samples=300)
    trainer = core.Trainer(model, optimizer=core.SGD(0.1), batch_size=16, callbacks=[monitor], progress=False)
    trainer.fit(X, y, epochs=1)
    first = monitor.curvature[0]
    assert first["step"] == 0 and first["rtol"] == 0.05 and first["examples"] == 128 and not first["warm_start"]
    assert first["dtype"] == dtype and all(e["dtype"] == "float64" for e in monitor.curvature[1:])
    H = dense_fd_hessian(trainer.run_info(X, y, 1).probe(128, 0), init)
    lam = np.linalg.eigvalsh(H)[-1]
    rounding = 1e-6 if dtype == "float64" else 1e-4
    assert 0.95 * lam <= first["lambda_max"] <= lam * (1 + rounding)
    if act is core.ReLU:  # the exact trace costs no product: kept
        assert first["trace"] == pytest.approx(np.trace(H), rel=rounding) and first["trace_stderr"] == 0
    else:  # no product is spent on a stochastic trace at the first estimate
        assert np.isnan(first["trace"]) and first["trace_method"] == "none" and first["hvps"] == first["lanczos_hvps"]


class TimedQuadratic:
    """A loss over ``n`` examples whose Hessian is ``diag(spectrum)`` whatever ``n``, linearised into itself;
    every product advances the injected clock by ``n · unit`` seconds (a product's cost grows with the
    examples), so what the meter times is known."""

    def __init__(self, clock: Clock, spectrum: np.ndarray, n: int, unit: float) -> None:
        self.clock, self.spectrum, self.unit = clock, spectrum, unit
        self.y = np.zeros(n)
        self.dim = spectrum.size

    def linearize(self) -> "TimedQuadratic":
        return self

    def hvp(self, v: np.ndarray) -> np.ndarray:
        self.clock.now += self.y.size * self.unit
        return self.spectrum * v

    def vector(self, values: np.ndarray) -> np.ndarray:
        return values


def test_the_budget_plans_the_probe_estimate_after_the_quick_first_one():
    """With an injected clock: the first estimate is on 128 of the probe's 1024 examples, without a trace
    (there is no exact route), and the budget expects the next one (on all of them, to a tighter tolerance,
    with a stochastic trace) to cost that much more, so the share stays within the budget right after each
    later estimate (expecting the quick one's cost again would spend more than twice the budget)."""
    from core.callbacks import RunInfo, StepState
    from gradmon.quantities.curvature_meter import CurvatureMeter

    clock = Clock()
    spectrum = np.concatenate([np.linspace(0.1, 1.0, 59), [3.0]])
    run = RunInfo(layers=(), loss="mse", optimizer="sgd", hyperparams={"lr": 0.5}, batch_size=32,
                  batch_mode="mini-batch", n_train=5000, epochs=1, steps_per_epoch=20000,
                  probe=lambda n, seed: TimedQuadratic(clock, spectrum, n, 1e-3))
    meter = CurvatureMeter(samples=1024, clock=clock)
    meter.begin(run)
    after = []
    for step in range(20000):
        if meter.due(step):
            state = StepState(step=step, epoch=0, loss=1.0, batch_size=32, params={"w": np.zeros(60)}, grads={},
                              lr=0.5)
            assert meter.measure(state) is not None
            after.append(meter.budget.spent / (clock.now - meter.budget.t0))
        clock.now += 1.0  # one training step
    first, second = meter.entries[0], meter.entries[1]
    assert first["step"] == 0 and first["examples"] == 128 and first["rtol"] == 0.05
    assert 0.95 * 3.0 <= first["lambda_max"] <= 3.0 + 1e-9 and first["threshold"] == pytest.approx(4.0)
    assert all(e["examples"] == 1024 and e["rtol"] == 1e-3 and e["warm_start"] for e in meter.entries[1:])
    assert all(e["lambda_max"] == pytest.approx(3.0, rel=1e-3) for e in meter.entries[1:])
    # the second is the first step at which the quick one and the next fit in the budget, the next expected to
    # take the quick one's products times log(1e-3)/log(0.05) and a stochastic trace of as many (at least 8),
    # on 8 times the examples
    h, c1 = first["hvps"], first["seconds"]
    assert np.isnan(first["trace"]) and c1 == pytest.approx(h * 0.128)
    lanczos = h * np.log(1e-3) / np.log(0.05)
    expected = 8 * c1 * (lanczos + max(lanczos, 8)) / h
    fits = [s for s in range(20000) if c1 + expected <= 0.05 * (c1 + s + expected)]
    assert second["step"] == fits[0] and second["seconds"] <= expected
    assert len(meter.entries) >= 5 and max(after[1:]) <= 0.05


def test_a_fixed_cadence_wins_over_the_budget_and_zero_turns_curvature_off():
    X, y, k = data("cross_entropy", n=64)
    for options, expected in (({"curvature_every": 3}, [0, 3, 6, 9]), ({"curvature_budget": 0}, []),
                              ({"curvature_every": 0}, [])):
        monitor = gradmon.Monitor(console=False, **options)
        core.Trainer(net(core.Tanh, k), optimizer=core.SGD(0.1), batch_size=16, callbacks=[monitor],
                     progress=False).fit(X.astype(np.float32), y, epochs=3)
        assert [e["step"] for e in monitor.curvature] == expected
    with pytest.raises(ValueError, match="curvature_budget"):
        gradmon.Monitor(curvature_budget=1.0)


# -- the size check and the spec ------------------------------------------------------------------------------------
def test_the_curvature_workspace_is_counted_and_refused_with_one_line_naming_the_key():
    wide = ["model.hidden=[8000, 2500]"]  # 20M parameters: 0.8 GB to train, 7.3 GiB of Lanczos basis
    with pytest.raises(SpecError) as exc:
        load_spec({}, wide)
    message = str(exc.value)
    assert message.startswith("monitor.curvature_every: curvature on a network of 20,034,003 parameters")
    assert "41 float64 vectors" in message and "\n" not in message
    assert load_spec({}, wide + ["monitor.curvature_every=0"])["model"]["hidden"] == [8000, 2500]
    assert load_spec({}, wide + ["monitor.curvature_budget=0"])["monitor"]["curvature_budget"] == 0
    with pytest.raises(SpecError, match="^monitor.curvature_budget: expected a share of wall time"):
        load_spec({}, ["monitor.curvature_budget=5"])


# -- presentation -------------------------------------------------------------------------------------------------
def test_the_trace_error_bar_in_json_markdown_html_and_tensorboard(tmp_path):
    from tests.tbutil import custom_scalar_layout, read_scalars

    X, y, k = data("cross_entropy", n=64)
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=4, console=False, tensorboard_every=1)
    core.Trainer(net(core.Tanh, k), optimizer=core.SGD(0.1), batch_size=16, callbacks=[monitor],
                 progress=False).fit(X.astype(np.float32), y, epochs=3)
    report = gradmon.HealthReport.load(tmp_path)
    stderrs = [c["trace_stderr"] for c in report.curvature]
    assert len(stderrs) == 3 and all(s > 0 for s in stderrs)
    report.save(tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert "± (1 s.e.)" in md and f"{stderrs[0]:.4g}" in md
    html = (tmp_path / "report.html").read_text()
    assert "± (1 s.e.)" in html and f"{stderrs[1]:.4g}" in html
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["curvature/trace_stderr"]] == [0, 4, 8]
    np.testing.assert_allclose([v for _, v in scalars["curvature/trace_stderr"]], stderrs, rtol=1e-6)
    assert "curvature/trace_stderr" in json.dumps(custom_scalar_layout(tmp_path))


def test_a_first_estimate_without_a_trace_charts_no_trace_point(tmp_path):
    from tests.tbutil import read_scalars

    X, y, k = data("cross_entropy", n=64)
    monitor = gradmon.Monitor(logdir=tmp_path, console=False, tensorboard_every=1)
    core.Trainer(net(core.Tanh, k), optimizer=core.SGD(0.1), batch_size=16, callbacks=[monitor],
                 progress=False).fit(X.astype(np.float32), y, epochs=2)
    first = monitor.curvature[0]
    assert first["step"] == 0 and np.isnan(first["trace"])
    scalars = read_scalars(tmp_path)
    assert scalars["curvature/lambda_max"][0] == (0, pytest.approx(first["lambda_max"], rel=1e-6))
    traced = scalars.get("curvature/trace", [])
    assert 0 not in [s for s, _ in traced] and all(np.isfinite(v) for _, v in traced)
