"""Curvature against oracles: explicit matrices (eigvalsh, trace), a linear model's exact Hessian
(2/n)AᵀA, a tiny tanh net's dense Hessian from finite differences, and a trained ReLU net where a careless
finite-difference step fails while the checked one does not."""

from __future__ import annotations

import numpy as np
import pytest

import core
import gradmon
from gradmon.quantities.curvature import (estimate_curvature, fd_hvp, flat_hvp, flatten, hutchinson_trace, lanczos,
                                          power_iteration, stability_threshold, unflatten)


def sym(dim, spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return (q * spectrum) @ q.T


# -- explicit matrices ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [5, 60, 500])
def test_lanczos_top_eigenvalues_match_eigvalsh(dim):
    spectrum = 10 * 0.8 ** np.arange(dim) - 0.3  # a Hessian-like decay with some negative curvature
    H = sym(dim, spectrum)
    exact = np.sort(np.linalg.eigvalsh(H))[::-1]
    top1 = lanczos(lambda v: H @ v, dim, k=1, rtol=1e-3)
    assert top1.lambda_max == pytest.approx(exact[0], rel=1e-3)
    assert top1.hvps <= 30 and top1.converged
    top3 = lanczos(lambda v: H @ v, dim, k=3, rtol=1e-6, max_iter=80)
    np.testing.assert_allclose(top3.eigenvalues, exact[:3], rtol=1e-4)


def test_lanczos_in_float32_keeps_its_basis_in_float32():
    """An operator computing in float32 (a quick first estimate of a float32 model): the basis and products stay
    float32 (half the memory traffic), the eigenvalues agree with eigvalsh to float32's rounding."""
    dim = 300
    H = sym(dim, 10 * 0.8 ** np.arange(dim)).astype(np.float32)
    exact = np.linalg.eigvalsh(H.astype(np.float64))[-1]
    start = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    r = lanczos(lambda v: H @ v, dim, rtol=1e-4, v0=start, want_vectors=True, keep_basis=True)
    assert r.basis.dtype == np.float32 and r.converged
    assert r.lambda_max == pytest.approx(exact, rel=1e-4)
    assert abs(r.eigenvectors[:, 0] @ np.linalg.eigh(H.astype(np.float64))[1][:, -1]) == pytest.approx(1, abs=1e-3)


def test_indefinite_and_degenerate_spectra():
    spectrum = np.concatenate([[5.0, 5.0, 5.0], np.linspace(-4, 1, 97)])
    H = sym(100, spectrum, seed=1)
    r = lanczos(lambda v: H @ v, 100, rtol=1e-6, max_iter=100)
    assert r.lambda_max == pytest.approx(5.0, rel=1e-5)
    assert r.lambda_min == pytest.approx(-4.0, rel=1e-2)


def test_breakdown_on_a_small_matrix_is_exact():
    H = sym(4, np.array([3.0, 1.0, -2.0, 0.5]))
    r = lanczos(lambda v: H @ v, 4, k=4, rtol=1e-12, max_iter=40)
    assert r.hvps <= 4 and r.converged
    np.testing.assert_allclose(np.sort(r.eigenvalues), np.sort(np.linalg.eigvalsh(H)), atol=1e-10)


def test_hutchinson_is_unbiased_and_its_stderr_is_honest():
    H = sym(40, np.linspace(-1, 3, 40), seed=2)
    estimates = [hutchinson_trace(lambda v: H @ v, 40, samples=20, rng=np.random.default_rng(s)) for s in range(200)]
    values = np.array([e.trace for e in estimates])
    assert values.mean() == pytest.approx(np.trace(H), abs=4 * values.std() / np.sqrt(len(values)))
    assert np.mean([e.stderr for e in estimates]) == pytest.approx(values.std(), rel=0.25)


def test_power_iteration_baseline():
    H = sym(50, np.linspace(0.1, 7, 50), seed=3)
    value, hvps = power_iteration(lambda v: H @ v, 50, iters=100)
    assert value == pytest.approx(7.0, rel=1e-3) and hvps == 100


def test_fd_hvp_on_a_smooth_function():
    a = np.random.default_rng(0).normal(size=(6, 6))
    # L(x) = sum(x^4)/4 + x·Ax/2: grad = x^3 + (A+Aᵀ)x/2, Hessian = diag(3x^2) + (A+Aᵀ)/2
    grad = lambda p: (0.0, {"x": p["x"] ** 3 + 0.5 * (a + a.T) @ p["x"]})  # noqa: E731
    x = np.linspace(-1, 1, 6)
    v = np.random.default_rng(1).normal(size=6)
    hv, info = fd_hvp(grad, {"x": x}, {"x": v})
    exact = (np.diag(3 * x ** 2) + 0.5 * (a + a.T)) @ v
    np.testing.assert_allclose(hv["x"], exact, rtol=1e-5)
    assert info["grad_evals"] >= 2


def test_stability_threshold():
    assert stability_threshold(0.1) == pytest.approx(20.0)
    assert stability_threshold(0.1, momentum=0.9) == pytest.approx(38.0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="learning rate"):
            stability_threshold(bad)
    with pytest.raises(ValueError, match="momentum"):
        stability_threshold(0.1, momentum=1.0)


def test_flatten_round_trip():
    like = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
    vec = np.arange(10.0)
    back = unflatten(vec, like)
    assert back["a"].shape == (2, 3) and np.array_equal(flatten(back), vec)
    with pytest.raises(ValueError, match="does not match"):
        unflatten(np.arange(9.0), like)


# -- networks -----------------------------------------------------------------------------------------------------
def test_linear_model_hessian_is_exact():
    rng = np.random.default_rng(0)
    n, d = 64, 5
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 1))
    net = core.Sequential([core.Dense(d, 1)], seed=0, dtype="float64")
    obj = core.BatchObjective(net, core.get_loss("mse"), X, Y)
    A = np.hstack([X, np.ones((n, 1))])
    H = 2.0 / n * A.T @ A  # parameter order: the d weights, then the bias
    params = net.parameters()
    hvp = flat_hvp(obj.hvp, params)
    for _ in range(3):
        v = rng.normal(size=d + 1)
        np.testing.assert_allclose(hvp(v), H @ v, rtol=1e-10)
    est = estimate_curvature(hvp, d + 1, rtol=1e-8, trace_samples=200, seed=1)
    assert est.lambda_max == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-6)
    assert est.trace == pytest.approx(np.trace(H), rel=0.1)


def test_tiny_tanh_net_against_dense_finite_difference_hessian():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 2, size=20)
    net = core.Sequential([core.Dense(3, 4), core.Tanh(), core.Dense(4, 2)], seed=1, dtype="float64")
    obj = core.BatchObjective(net, core.get_loss("cross_entropy"), X, y)
    params = {k: v.copy() for k, v in net.parameters().items()}
    theta = flatten(params)
    dim = theta.size
    H = np.zeros((dim, dim))
    eps = 1e-5
    for i in range(dim):  # column i from central differences of the gradient
        e = np.zeros(dim)
        e[i] = eps
        gp = flatten(obj.grad(unflatten(theta + e, params))[1])
        gm = flatten(obj.grad(unflatten(theta - e, params))[1])
        H[:, i] = (gp - gm) / (2 * eps)
    H = 0.5 * (H + H.T)
    exact = np.linalg.eigvalsh(H)
    result = lanczos(flat_hvp(obj.hvp, params), dim, k=1, rtol=1e-3)
    assert result.lambda_max == pytest.approx(exact.max(), rel=1e-3)
    assert result.hvps <= 25


def test_trained_relu_net_careless_fd_fails_where_the_checked_step_does_not():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(256, 2))
    y = ((X[:, 0] ** 2 + X[:, 1]) > 0.5).astype(np.int64)
    net = core.Sequential([core.Dense(2, 64, init="he_normal"), core.ReLU(), core.Dense(64, 64, init="he_normal"),
                           core.ReLU(), core.Dense(64, 2)], seed=2, dtype="float64")
    core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=32, progress=False).fit(X, y, epochs=30)
    obj = core.BatchObjective(net, core.get_loss("cross_entropy"), X, y)
    params = {k: v.copy() for k, v in net.parameters().items()}
    dim = flatten(params).size
    exact_hvp = flat_hvp(obj.hvp, params)
    exact = lanczos(exact_hvp, dim, rtol=1e-6, max_iter=60).lambda_max

    def fd_operator(checked):
        def hvp(v):
            hv, info = fd_hvp(obj.grad, params, unflatten(v, params), eps=0.1,
                              kink_fn=obj.kinks if checked else None, max_shrink=12 if checked else 0)
            hvp.crossed = max(hvp.crossed, info["kinks_crossed"])
            hvp.eps = info["eps"]
            return flatten(hv)
        hvp.crossed = 0
        return hvp

    v = rng.normal(size=dim)
    v /= np.linalg.norm(v)
    vd = unflatten(v, params)
    crossing = np.count_nonzero(obj.kinks({k: params[k] + 0.1 * vd[k] for k in params}) != obj.kinks(params))
    assert crossing > 0                                  # a step of 0.1 moves ReLU units across zero
    careless, checked = fd_operator(False), fd_operator(True)
    careless_error = np.linalg.norm(careless(v) - exact_hvp(v)) / np.linalg.norm(exact_hvp(v))
    checked_error = np.linalg.norm(checked(v) - exact_hvp(v)) / np.linalg.norm(exact_hvp(v))
    assert careless_error > 0.05 and checked_error < 1e-6 and checked.crossed == 0 and checked.eps < 0.1
    wrong = lanczos(careless, dim, rtol=1e-3, max_iter=40).lambda_max
    right = lanczos(checked, dim, rtol=1e-3, max_iter=40).lambda_max
    assert abs(wrong - exact) > 10 * 1e-3 * exact     # off by more than ten times the tolerance asked for
    assert right == pytest.approx(exact, rel=1e-3)


def test_monitor_reports_curvature_per_measurement(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    Y = np.tanh(X @ rng.normal(size=(10, 1)))
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=10, curvature_samples=200, console=False,
                              tensorboard=False)
    net = core.Sequential([core.Dense(10, 16), core.Tanh(), core.Dense(16, 1)], seed=0)
    core.Trainer(net, loss="mse", optimizer=core.SGD(0.05), batch_size=None, callbacks=[monitor],
                 progress=False).fit(X, Y, epochs=30)
    report = gradmon.HealthReport.load(tmp_path)
    assert [c["step"] for c in report.curvature] == [0, 10, 20]
    for c in report.curvature:
        assert c["hvps"] >= 2 and c["lambda_max"] > 0 and np.isfinite(c["trace"])
        assert c["threshold"] == pytest.approx(2 / 0.05)
    # step 0 is measured at the initial weights on the whole data set (the probe holds all 200 examples):
    # compare with the dense Hessian's top eigenvalue at those weights
    fresh = core.Sequential([core.Dense(10, 16), core.Tanh(), core.Dense(16, 1)], seed=0, dtype="float64")
    obj = core.BatchObjective(fresh, core.get_loss("mse"), X, Y)
    params = fresh.parameters()
    dim = flatten(params).size
    hvp = flat_hvp(obj.hvp, params)
    H = np.stack([hvp(e) for e in np.eye(dim)])
    assert report.curvature[0]["lambda_max"] == pytest.approx(np.linalg.eigvalsh(0.5 * (H + H.T)).max(), rel=2e-3)
    assert report.curvature[0]["trace"] == pytest.approx(np.trace(H), rel=0.5)


# -- sharpness against 2/lr -------------------------------------------------------------------------------------
def _teacher_run(lr, epochs, momentum=0.0):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 10))
    Y = np.tanh(X @ rng.normal(size=(10, 1)))
    monitor = gradmon.Monitor(curvature_every=5, curvature_samples=400, console=False)
    net = core.Sequential([core.Dense(10, 32, init="xavier_normal"), core.Tanh(),
                           core.Dense(32, 32, init="xavier_normal"), core.Tanh(),
                           core.Dense(32, 1, init="xavier_normal")], seed=0)
    core.Trainer(net, loss="mse", optimizer=core.SGD(lr, momentum=momentum), batch_size=None, callbacks=[monitor],
                 progress=False).fit(X, Y, epochs=epochs)
    return monitor.report()


def test_sharpness_edge_of_stability_is_information_with_a_concrete_lr():
    report = _teacher_run(0.4, 60)
    f = [f for f in report.findings if f.code == "sharpness_above_stability"]
    assert f and f[0].severity == "info" and report.status == "healthy"
    ev = f[0].evidence
    assert ev["lambda_max"] > ev["threshold"] == pytest.approx(2 / 0.4)
    # the bound is set by the sharpest curvature measured while the loss was sane (here: the whole run)
    measured = [c["lambda_max"] for c in report.curvature if c["loss"] <= 2 * report.loss[0]["train"]]
    assert ev["reference_lambda_max"] == pytest.approx(max(measured), rel=1e-2)
    assert ev["reference_lambda_max"] >= ev["lambda_max"]
    assert ev["max_stable_lr"] == pytest.approx(2 / max(measured), rel=1e-2)
    lower = [s for s in f[0].suggestions if s.code == "lower_lr"][0]
    assert 0 < lower.patch["train.lr"] < ev["max_stable_lr"]


def test_sharpness_with_a_diverging_loss_is_an_error_and_small_steps_are_quiet():
    diverging = _teacher_run(0.8, 40)
    f = [f for f in diverging.findings if f.code == "sharpness_above_stability"]
    assert f and f[0].severity == "error"
    calm = _teacher_run(0.02, 40)
    assert "sharpness_above_stability" not in {f.code for f in calm.findings}


def test_momentum_adjusted_bound():
    report = _teacher_run(0.2, 30, momentum=0.9)
    for c in report.curvature:
        assert c["threshold"] == pytest.approx(2 * 1.9 / 0.2)


def test_nesterov_bound_against_a_quadratic():
    """The bound is where core's own optimizer starts to diverge on L = λx²/2: heavy ball at 2(1+β)/lr,
    Nesterov at 2(1+β)/(lr(1+2β)), 2.8 times lower at β = 0.9."""
    def diverges(lam, nesterov, lr=0.1, beta=0.9):
        opt, x = core.SGD(lr, momentum=beta, nesterov=nesterov), {"x": np.array([1.0])}
        for _ in range(4000):
            opt.step(x, {"x": lam * x["x"]})
            if abs(x["x"][0]) > 1e3:
                return True
        return False

    for nesterov in (False, True):
        bound = stability_threshold(0.1, 0.9, nesterov=nesterov)
        assert not diverges(0.98 * bound, nesterov) and diverges(1.02 * bound, nesterov)
    assert stability_threshold(0.1, 0.9) / stability_threshold(0.1, 0.9, nesterov=True) == pytest.approx(2.8)


def test_reported_hvps_are_the_products_actually_spent():
    A = sym(80, np.linspace(-1.0, 10.0, 80))
    spent = []

    def counting(v):
        spent.append(1)
        return A @ v

    est = estimate_curvature(counting, 80, rtol=1e-3, trace_samples=4, seed=0)
    assert est.hvps == len(spent) and est.lambda_max == pytest.approx(10.0, rel=1e-3)


def test_full_reorthogonalisation_keeps_ritz_values_free_of_ghosts():
    """Run long on a spectrum with a few outliers: without full reorthogonalisation the lost orthogonality
    makes copies ("ghosts") of the top eigenvalue appear among the top Ritz values."""
    spectrum = np.concatenate([[100.0, 60.0, 30.0], np.linspace(0.0, 1.0, 397)])
    A = sym(400, spectrum, seed=1)
    # the top five include two from the dense cluster at 1: they take ~150 iterations to resolve
    result = lanczos(lambda v: A @ v, 400, k=5, rtol=1e-10, max_iter=150)
    assert result.hvps > 100
    assert result.eigenvalues == pytest.approx(np.sort(spectrum)[::-1][:5], rel=1e-6)


def test_loops_without_exact_hvps_get_checked_finite_differences():
    """An objective with only ``grad`` (a hand-written loop): curvature by checked central differences,
    agreeing with the exact R-operator value on the same batch."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    Y = np.tanh(X @ rng.normal(size=(4, 1)))
    net = core.Sequential([core.Dense(4, 8), core.Tanh(), core.Dense(8, 1)], seed=0, dtype="float64")
    exact = core.BatchObjective(net, core.get_loss("mse"), X, Y)

    class GradOnly:
        def grad(self, params=None):
            return exact.grad(params)

    monitor = gradmon.Monitor(curvature_every=1, console=False)
    monitor.on_train_begin(core.RunInfo(layers=net.layer_infos(), loss="mse", optimizer="sgd",
                                        hyperparams={"lr": 0.1}, batch_size=64, batch_mode="batch", n_train=64,
                                        epochs=1, steps_per_epoch=1))
    loss, grads = exact.grad()
    monitor.on_after_backward(core.StepState(step=0, epoch=0, loss=loss, batch_size=64, params=net.parameters(),
                                             grads=grads, lr=0.1, objective=GradOnly()))
    entry = monitor.curvature[0]
    params = {k: v.copy() for k, v in net.parameters().items()}
    H = np.stack([flat_hvp(lambda v: exact.hvp(v, params), params)(e) for e in np.eye(flatten(params).size)])
    assert entry["hvp"] == "finite differences"
    assert entry["lambda_max"] == pytest.approx(np.linalg.eigvalsh(0.5 * (H + H.T)).max(), rel=1e-4)


def test_a_failing_curvature_measurement_never_stops_training():
    class Broken:
        def hvp(self, vec, params=None):
            raise RuntimeError("this loop cannot take second derivatives")

    X, y = np.random.default_rng(0).normal(size=(64, 3)), np.tanh(np.arange(64.0) / 64)[:, None]
    net = core.Sequential([core.Dense(3, 8), core.Tanh(), core.Dense(8, 1)], seed=0)
    monitor = gradmon.Monitor(curvature_every=2, console=False)
    trainer = core.Trainer(net, loss="mse", batch_size=16, callbacks=[monitor], progress=False)
    trainer.run_info = lambda *a, _orig=trainer.run_info: _replace_probe(_orig(*a), lambda n, s: Broken())
    history = trainer.fit(X, y, epochs=3)
    assert history["steps"] == 12 and history["stopped"] is None
    assert monitor.curvature == [] and any("curvature" in e for e in monitor.report().extra["sink_errors"])


def _replace_probe(run, probe):
    import dataclasses

    return dataclasses.replace(run, probe=probe)


# -- sharpness judged on sane measurements, at the measurement's own learning rate ----------------------------------
def _scenario(name, *sets):
    from core.spec import load_spec
    from gradmon.run import run_spec
    from gradmon.scenarios import scenario_path

    return run_spec(load_spec(str(scenario_path(name)), list(sets)), None, progress=False, console=False)


@pytest.mark.parametrize("sets", [("train.lr=0.5",), ("train.lr=0.3", "seed=1"), ("train.lr=0.5", "seed=2")])
def test_edge_of_stability_with_catapults_stays_information(sets):
    """Full-batch descent above 2/lr that spikes (catapults) and still converges: one noisy judgment of the
    spike must not make it an error."""
    result = _scenario("sharpness", *sets)
    assert result.final_loss < 0.01 * result.train_history["loss"][0]
    f = [f for f in result.report.findings if f.code == "sharpness_above_stability"]
    assert f and f[0].severity == "info" and result.report.status == "healthy"


def test_suggested_lr_comes_from_curvature_measured_before_the_blow_up():
    result = _scenario("sharpness", "train.lr=0.8")
    f = [f for f in result.report.findings if f.code == "sharpness_above_stability"][0]
    assert f.severity == "error" and f.evidence["lambda_max"] > 1e6  # measured on blown-up weights...
    lower = [s for s in f.suggestions if s.code == "lower_lr"][0]
    lr = lower.patch["train.lr"]
    assert 0.08 <= lr < 0.8                                          # ...but the advice is from before
    fixed = _scenario("sharpness", f"train.lr={lr}")
    assert fixed.report.status == "healthy" and fixed.final_loss < 0.01 * fixed.train_history["loss"][0]


def test_the_stable_lr_comes_from_the_last_usable_measurement_never_nan():
    """A measurement on blown-up weights can be NaN; the bound (and the advice's sentence) must come from the
    usable ones, also when the loop logged no loss with them (NaN loss: unknown, not insane)."""
    from gradmon.detectors.sharpness import SharpnessAboveStability

    net = core.Sequential([core.Dense(2, 4), core.Tanh(), core.Dense(4, 1)], seed=0)
    monitor = gradmon.Monitor(curvature_every=0, console=False)
    monitor.on_train_begin(core.RunInfo(layers=net.layer_infos(), loss="mse", optimizer="sgd",
                                        hyperparams={"lr": 0.1}, batch_size=8, batch_mode="mini-batch", n_train=64,
                                        epochs=1, steps_per_epoch=8))
    grads = {k: np.ones_like(v) for k, v in net.parameters().items()}
    for step in range(3):
        monitor.on_after_backward(core.StepState(step=step, epoch=0, loss=1.0, batch_size=8,
                                                 params=net.parameters(), grads=grads, lr=0.1))
        monitor.on_step_end(core.StepState(step=step, epoch=0, loss=1.0, batch_size=8, params=net.parameters(),
                                           grads=grads, lr=0.1))
    nan = float("nan")
    curvature = [{"step": 0, "lambda_max": 50.0, "lr": 0.1, "threshold": 20.0, "loss": nan},
                 {"step": 2, "lambda_max": nan, "lr": 0.1, "threshold": 20.0, "loss": nan}]
    ctx = monitor.jury.context(curvature, monitor.recorder.sizes, steps=3, records=3)
    (obs,) = SharpnessAboveStability().judge(ctx)
    assert obs.evidence["reference_lambda_max"] == 50.0 and obs.evidence["max_stable_lr"] == pytest.approx(0.04)
    assert "nan" not in obs.message
    finding = gradmon.Finding(obs.code, obs.severity, None, 0, 2, obs.message, obs.evidence)
    monitor.jury.suggest(finding)
    lower = [s for s in finding.suggestions if s.code == "lower_lr"][0]
    assert "λmax = 50" in lower.text and lower.patch["train.lr"] == pytest.approx(0.032)
