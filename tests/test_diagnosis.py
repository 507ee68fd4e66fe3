"""Diagnosis by root cause, on real training runs (core and PyTorch): each class of failure of issue #13 in
several variations (depth 20-60, optimizers, seeds, data), each beside a healthy twin that must stay silent.  (Over 450 lines: seven classes of failure, each
with its twins.)

1. gradual vanishing in deep nets, judged as the fall across depth, with its direction and cause;
2. a loss that blows up and stays up (or never recovers): a lower learning rate, the symptoms linked to it;
3. every warning and error carries a suggestion, never one already in place or one the cause does not support;
4. one root cause and one first fix, the same in every output, and ``gradmon demo`` runs the fix it prints;
5. frozen and zero-gradient layers neither enter depth profiles nor switch detectors off;
6. unscaled inputs, with standardisation as the fix (``data.standardize``);
7. λmax above 2/lr at initialisation, against a power-iteration oracle.

Runs are small (widths 16-64, a few hundred steps) and cached per case, so the checks of classes 3 and 4 reuse
them.  This file is longer than most: one module per issue keeps each class beside its twins.
"""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest

import core
import gradmon
from gradmon import diagnosis
from gradmon.advice import Context, advise
from gradmon.findings import FINDING_CODES, Finding
from gradmon.vocabulary import HE_INITS, XAVIER_INITS
from tests.test_monitor import mlp, moons, teacher


# -- data and models --------------------------------------------------------------------------------------------
def spirals(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    r = rng.uniform(0.05, 1.0, n)
    theta = y * 2 * np.pi / 3 + r * 4.0 + rng.normal(0, 0.2, n)
    X = np.stack([r * np.sin(theta), r * np.cos(theta)], 1)
    return (X - X.mean(0)) / X.std(0), y.astype(np.int64)


# -- the cases: (build, expected root codes, expected first fix); a twin expects None ----------------------------
# build() -> (model, X, y, trainer/monitor options, the run's init)
V, B, U, S = "vanishing_gradients", ("loss_divergence", "exploding_gradients"), "unscaled_inputs", \
    "sharpness_above_stability"
CORE = {
    # 1. gradual vanishing: 0.1-0.2 decades per layer, 3-9 decades across depth
    "relu30_xavier_sgd": (lambda: (mlp("relu", "xavier_normal", [32] * 30), *moons(), dict(opt=core.SGD(0.1), epochs=8),
                                   "xavier_normal"), (V,), "he_init"),
    "relu30_he_sgd_twin": (lambda: (mlp("relu", "he_normal", [32] * 30), *moons(), dict(opt=core.SGD(0.01), epochs=8),
                                    "he_normal"), None, None),
    "relu40_xavier_momentum": (lambda: (mlp("relu", "xavier_normal", [24] * 40, seed=1), *moons(seed=1),
                                        dict(opt=core.SGD(0.01, momentum=0.9), epochs=6), "xavier_normal"), (V,), "he_init"),
    "relu40_he_momentum_twin": (lambda: (mlp("relu", "he_normal", [24] * 40, seed=1), *moons(seed=1),
                                         dict(opt=core.SGD(0.001, momentum=0.9), epochs=6), "he_normal"), None, None),
    "relu20_lecun_spirals": (lambda: (mlp("relu", "lecun_normal", [32] * 20, out=3, seed=2), *spirals(seed=2),
                                      dict(opt=core.SGD(0.05), epochs=8), "lecun_normal"), (V,), "he_init"),
    "relu20_he_spirals_twin": (lambda: (mlp("relu", "he_normal", [32] * 20, out=3, seed=2), *spirals(seed=2),
                                        dict(opt=core.SGD(0.01), epochs=8), "he_normal"), None, None),
    "tanh20_small_init": (lambda: (mlp("tanh", "normal", [32] * 20, std=0.08, seed=3), *moons(seed=3),
                                   dict(opt=core.SGD(0.1), epochs=6), "normal"), (V,), "xavier_init"),
    "tanh20_xavier_twin": (lambda: (mlp("tanh", "xavier_normal", [32] * 20, seed=3), *moons(seed=3),
                                    dict(opt=core.SGD(0.01), epochs=6), "xavier_normal"), None, None),
    "relu60_xavier_uniform": (lambda: (mlp("relu", "xavier_uniform", [16] * 60, seed=4), *moons(seed=4),
                                       dict(opt=core.SGD(0.05), epochs=4), "xavier_uniform"), (V,), "he_init"),
    "relu60_he_batchnorm_twin": (lambda: (mlp("relu", "he_normal", [16] * 60, batchnorm=True, seed=4), *moons(seed=4),
                                          dict(opt=core.Adam(1e-3), epochs=4), "he_normal"), None, None),
    # 2. blow-ups that stay up (or never recover), whatever the optimizer
    "adam_lr05": (lambda: (mlp("relu", "he_normal", [64, 64]), *moons(), dict(opt=core.Adam(0.5), epochs=6),
                           "he_normal"), B, "lower_lr"),
    "adam_twin": (lambda: (mlp("relu", "he_normal", [64, 64]), *moons(), dict(opt=core.Adam(1e-3), epochs=6),
                           "he_normal"), None, None),
    "momentum_tanh_lr3": (lambda: (mlp("tanh", "xavier_normal", [64, 64], seed=11), *moons(seed=11),
                                   dict(opt=core.SGD(3.0, momentum=0.9), epochs=6), "xavier_normal"), B, "lower_lr"),
    "momentum_tanh_twin": (lambda: (mlp("tanh", "xavier_normal", [64, 64], seed=11), *moons(seed=11),
                                    dict(opt=core.SGD(0.05, momentum=0.9), epochs=6), "xavier_normal"), None, None),
    "momentum_relu_lr10": (lambda: (mlp("relu", "he_normal", [64, 64], seed=11), *moons(seed=11),
                                    dict(opt=core.SGD(10.0, momentum=0.9), epochs=6), "he_normal"), B, "lower_lr"),
    "rmsprop_lr01": (lambda: (mlp("relu", "he_normal", [64] * 4, out=3, seed=6), *spirals(seed=6),
                              dict(opt=core.RMSprop(0.1), epochs=6), "he_normal"), B, "lower_lr"),
    "rmsprop_twin": (lambda: (mlp("relu", "he_normal", [64] * 4, out=3, seed=6), *spirals(seed=6),
                              dict(opt=core.RMSprop(1e-3), epochs=6), "he_normal"), None, None),
    # 6. unscaled inputs
    "moons_feature_x3000": (lambda: (mlp("relu", "he_normal", [32, 32]), moons()[0] * [1.0, 3000.0], moons()[1],
                                     dict(opt=core.SGD(0.01), epochs=6), "he_normal"), (U,), "standardize"),
    "moons_standardised_twin": (lambda: (mlp("relu", "he_normal", [32, 32]), *moons(), dict(opt=core.SGD(0.01), epochs=6),
                                         "he_normal"), None, None),
    "teacher_offset_adam": (lambda: (mlp("tanh", "xavier_normal", [32, 32], inp=10, out=1, seed=7),
                                     teacher(seed=7)[0] * 300 + 500, teacher(seed=7)[1],
                                     dict(opt=core.Adam(1e-3), epochs=6, loss="mse"), "xavier_normal"), (U,),
                            "standardize"),
    "teacher_twin": (lambda: (mlp("tanh", "xavier_normal", [32, 32], inp=10, out=1, seed=7), *teacher(seed=7),
                              dict(opt=core.Adam(1e-3), epochs=6, loss="mse"), "xavier_normal"), None, None),
    "spirals_tiny_feature": (lambda: (mlp("relu", "he_normal", [32, 32], out=3, seed=8), spirals(seed=8)[0] * [1e-4, 1.0],
                                      spirals(seed=8)[1], dict(opt=core.Adam(1e-2), epochs=6), "he_normal"), (U,),
                             "standardize"),
    "spirals_twin": (lambda: (mlp("relu", "he_normal", [32, 32], out=3, seed=8), *spirals(seed=8),
                              dict(opt=core.Adam(1e-2), epochs=6), "he_normal"), None, None),
    # 7. λmax above 2/lr from the first step (curvature measured at every step here: issue #12 schedules it)
    "gd_tanh_lr08": (lambda: (mlp("tanh", "xavier_normal", [32, 32], inp=10, out=1), *teacher(),
                              dict(opt=core.SGD(0.8), batch_size=None, epochs=40, loss="mse", curvature_every=1,
                                   curvature_samples=500), "xavier_normal"), (S,), "lower_lr"),
    "gd_tanh_twin": (lambda: (mlp("tanh", "xavier_normal", [32, 32], inp=10, out=1), *teacher(),
                              dict(opt=core.SGD(0.15), batch_size=None, epochs=40, loss="mse", curvature_every=1,
                                   curvature_samples=500), "xavier_normal"), None, None),
    "gd_momentum_relu": (lambda: (mlp("relu", "he_normal", [32, 32], inp=10, out=1, seed=12), *teacher(seed=12),
                                  dict(opt=core.SGD(0.3, momentum=0.9), batch_size=None, epochs=40, loss="mse",
                                       curvature_every=1, curvature_samples=500), "he_normal"), (S,), "lower_lr"),
    "gd_momentum_twin": (lambda: (mlp("relu", "he_normal", [32, 32], inp=10, out=1, seed=12), *teacher(seed=12),
                                  dict(opt=core.SGD(0.01, momentum=0.9), batch_size=None, epochs=40, loss="mse",
                                       curvature_every=1, curvature_samples=500), "he_normal"), None, None),
    "minibatch_sgd_lr30": (lambda: (mlp("tanh", "xavier_normal", [32, 32], seed=13), *moons(seed=13),
                                    dict(opt=core.SGD(30.0), batch_size=128, epochs=6, curvature_every=1,
                                         curvature_samples=256), "xavier_normal"), (S,), "lower_lr"),
    "minibatch_sgd_twin": (lambda: (mlp("tanh", "xavier_normal", [32, 32], seed=13), *moons(seed=13),
                                    dict(opt=core.SGD(0.5), batch_size=128, epochs=6, curvature_every=1,
                                         curvature_samples=256), "xavier_normal"), None, None),
}


def _context(layers, activation="tanh", init="xavier_uniform", n=60, loss=1.0):
    """A judge context over ``n`` hand-written records of a 2-8-8-8-1 net: the per-layer ``layers`` values at
    every record (unit widths, so gradient norms are RMS per weight once divided by sqrt(size))."""
    from gradmon.detectors import JudgeContext
    from gradmon.history import Window
    from gradmon.layout import units_from_run

    layers_, width = [], 2
    for h in (8, 8, 8):
        layers_ += [core.Dense(width, h, init=init), core.get_activation(activation)]
        width = h
    net = core.Sequential([*layers_, core.Dense(width, 1, init=init)], seed=0)
    run = core.RunInfo(layers=net.layer_infos(), loss="mse", optimizer="sgd", hyperparams={"lr": 0.1},
                       batch_size=32, batch_mode="mini-batch", n_train=256, epochs=1, steps_per_epoch=8)
    units = units_from_run(run)
    window = Window([u.name for u in units], size=n)
    for i in range(n):
        window.append(i, {"loss": loss, "grad_norm": 1.0, "lr": 0.1}, {q: np.asarray(v, float) for q, v in layers.items()})
    return JudgeContext(step=n, window=window, units=units, run=run, initial_loss=loss, best_loss=loss,
                        initial_grad_norm=1.0, sizes=np.ones(len(units)))


@functools.lru_cache(maxsize=None)
def core_run(name):
    """The case's report, training history and monitor (run once per test session)."""
    build = CORE[name][0]
    model, X, y, kw, init = build()
    kw = dict(kw)
    opt, epochs, loss = kw.pop("opt"), kw.pop("epochs"), kw.pop("loss", "cross_entropy")
    batch = kw.pop("batch_size", 32)
    monitor = gradmon.Monitor(console=False, **{"curvature_every": 0, **kw})
    trainer = core.Trainer(model, loss=loss, optimizer=opt, batch_size=batch, callbacks=[monitor], progress=False)
    history = trainer.fit(np.asarray(X, dtype=float), y, epochs=epochs)
    return monitor.report(), history, monitor, init


def problems(report, init=None, batchnorm=False, optimizer=None):
    """What class 3 forbids: a warning or error without a suggestion, a suggestion already in place, a step-size
    root whose fix changes the network."""
    out = []
    for f in report.worst("warning"):
        codes = [s.code for s in f.suggestions]
        if not codes:
            out.append(f"{f.code} has no suggestion")
        if (init in HE_INITS and "he_init" in codes) or (init in XAVIER_INITS and "xavier_init" in codes):
            out.append(f"{f.code} suggests the initialization already in place ({init})")
        if (batchnorm and "batchnorm" in codes) or (optimizer == "adam" and "adam" in codes):
            out.append(f"{f.code} suggests what the run already does")
    root, fix = report.root_cause, report.primary_fix
    if root is not None and root.code in B + (S, "nonfinite_values") and fix is not None and \
            fix.code in ("relu", "leaky_relu", "he_init", "xavier_init", "batchnorm", "shallower"):
        out.append(f"step-size root {root.code} with {fix.code} as its fix")
    if report.status != "healthy" and root is None:
        out.append("no root cause for an unhealthy run")
    return out


@pytest.mark.parametrize("name", list(CORE))
def test_core_cases_name_their_root_cause_and_twins_stay_silent(name):
    report, history, monitor, init = core_run(name)
    _, roots, fix = CORE[name]
    if roots is None:
        assert report.status == "healthy", [(f.code, f.layer, f.message) for f in report.findings]
        assert report.root_cause is None and report.to_dict()["diagnosis"] is None
        return
    root = report.root_cause
    assert root is not None and root.code in roots, [(f.code, f.layer, f.evidence.get("caused_by"))
                                                     for f in report.findings]
    assert report.primary_fix.code == fix and report.primary_fix is root.suggestions[0]
    for f in diagnosis.consequences(root, report.findings):  # a symptom carries its cause's fix
        assert f.suggestions[0].code == fix
    assert problems(report, init, optimizer=monitor.run.optimizer) == []


# -- 1. gradual vanishing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relu30_xavier_sgd", "relu40_xavier_momentum", "relu60_xavier_uniform"])
def test_deep_relu_nets_lose_decades_across_depth_at_a_slope_the_per_layer_rule_missed(name):
    report, _, monitor, _ = core_run(name)
    f = report.root_cause
    logs = np.array(list(f.evidence["log10_grad_rms"].values()))
    # the oracle: the fall from the output side to the input side, read off the profile itself
    n = logs.size
    sides = np.median(logs[-n // 3:]) - np.median(logs[: n // 3])
    assert f.evidence["drop_decades"] >= 2 and sides >= 1.5
    assert f.evidence["slope_decades_per_layer"] < 0.25  # what the old detector asked for, per layer
    # the forward collapse: the activations' scale falls with depth (from the recorded std, not the finding)
    stds = monitor.history.layer("act_std")[:30, :-1]  # hidden layers, early records (measured every tenth)
    first = np.maximum(np.nanmedian(stds[np.isfinite(stds).all(axis=1)], axis=0), 1e-12)
    assert np.log10(first[0]) - np.log10(first.min()) >= 1.0
    assert f.evidence["direction"] == "forward" and f.evidence["cause"] == "initialization"
    assert "forward pass" in f.message and f.suggestions[0].patch == {"model.init": "he_normal"}
    # the dead units the collapse switched off are its consequences, not causes of their own
    dead = [g for g in report.findings if g.code == "dead_units"]
    assert all(diagnosis.cause_of(g) == (f.code, f.layer) for g in dead)
    # the collapse is visible in the report's layers table and TensorBoard's per-layer chart data
    assert all("act_std" in layer for layer in report.layers)


def test_tanh_with_a_small_init_is_blamed_on_the_init_and_sigmoid_on_the_activation():
    report, _, _, _ = core_run("tanh20_small_init")
    f = report.root_cause
    assert f.evidence["cause"] == "initialization" and f.evidence["weight_gain"] < 0.85
    assert report.primary_fix.patch == {"model.init": "xavier_normal"}
    X, y = moons(seed=5)
    monitor = gradmon.Monitor(console=False, curvature_every=0)
    core.Trainer(mlp("sigmoid", "xavier_normal", [32] * 10), optimizer=core.SGD(0.1), callbacks=[monitor],
                 progress=False).fit(X, y, epochs=4)
    sig = monitor.report().root_cause
    assert sig.code == V and sig.evidence["cause"] == "activation" and sig.evidence["direction"] == "backward"
    assert sig.suggestions[0].code == "relu"


def test_vanishing_that_training_caused_is_blamed_on_the_step():
    """A hand-built window: the profile fell 3 decades, but in the run's first records it was flat, under He."""
    ctx = _context({"grad_norm": [1e-3, 1e-2, 1e-1, 1.0], "weight_norm": [1.0] * 4, "act_std": [0.5] * 4,
                    "dead_fraction": [0.1] * 3 + [np.nan]}, activation="relu", init="he_normal")
    ctx.early = {"grad_norm": np.ones(4), "weight_norm": np.full(4, np.sqrt(8) * np.sqrt(2)), "saturation":
                 np.full(4, np.nan)}
    from gradmon.detectors.gradients import VanishingGradients

    (obs,) = VanishingGradients().judge(ctx)
    assert obs.evidence["cause"] == "training" and obs.evidence["direction"] == "backward"
    finding = Finding(obs.code, obs.severity, obs.layer, 0, 0, obs.message, obs.evidence)
    assert [s.code for s in advise(finding, Context("relu", "he_normal", "sgd", 0.1))][0] == "lower_lr"


def test_activations_that_were_not_measured_make_the_cause_unknown_never_not_saturated():
    ctx = _context({"grad_norm": [1e-3, 1e-2, 1e-1, 1.0]}, activation="tanh")  # no saturation measured
    from gradmon.detectors.gradients import VanishingGradients

    (obs,) = VanishingGradients().judge(ctx)
    assert obs.evidence["cause"] == "unknown" and "not saturated" not in obs.message
    assert "not measured" in obs.message and obs.evidence["unmeasured"]
    finding = Finding(obs.code, obs.severity, obs.layer, 0, 0, obs.message, obs.evidence)
    assert advise(finding, Context("tanh", None, "adam", 1e-3, batchnorm=True))  # still a suggestion


# -- 2. blow-ups that stay ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adam_lr05", "momentum_tanh_lr3", "momentum_relu_lr10", "rmsprop_lr01"])
def test_a_loss_blown_up_is_fixed_by_a_lower_learning_rate_with_its_symptoms_linked(name):
    report, history, monitor, _ = core_run(name)
    losses = monitor.history.scalar("loss")
    start = float(losses[0])
    assert np.nanmax(losses[:40]) > 10 * start  # the oracle: the recorded loss did blow up early
    root, fix = report.root_cause, report.primary_fix
    lr = monitor.run.lr
    assert fix.code == "lower_lr" and 0 < fix.patch["train.lr"] < lr
    assert re.search(r"to \d", fix.text)  # a number, in the sentence too
    # starved units and gradients that came with the blow-up are its consequences, not causes of their own
    starved = [f for f in report.worst("warning") if f.code in ("dead_units", "saturated_activations", V)]
    assert all(diagnosis.cause_of(f) is not None for f in starved), [(f.code, f.evidence.get("cause"))
                                                                      for f in starved]
    assert {f.code for f in diagnosis.consequences(root, report.findings)} >= {f.code for f in starved}


def test_a_loss_that_stays_above_its_start_is_reported_whatever_the_gradients_did():
    """Hand-built: the loss jumps to 5x its start at the first records and stays there; the gradient norm is
    flat (nothing exploded)."""
    from gradmon.detectors.loss import LossDivergence

    ctx = _context({}, loss=1.0)
    losses = np.r_[1.0, np.full(59, 5.0) + 0.3 * np.sin(np.arange(59))]
    for i, v in enumerate(losses):  # rewrite the window's losses
        ctx.window._scalars[i, 0] = v
    ctx.peak_loss, ctx.peak_step, ctx.low_since_peak = 5.3, 2, 4.7
    (obs,) = LossDivergence().judge(ctx)
    assert obs.evidence["pattern"] == "stuck" and obs.evidence["stays_up"] and "whatever the gradient" in obs.message
    finding = Finding(obs.code, obs.severity, None, 0, 0, obs.message, obs.evidence)
    (first, *_) = advise(finding, Context("relu", "he_normal", "adam", 0.5))
    assert first.code == "lower_lr" and first.patch == {"train.lr": 1e-3}  # adaptive: its usual rate
    (first, *_) = advise(finding, Context("relu", "he_normal", "sgd", 0.5))
    assert first.patch == {"train.lr": 0.05}


def test_the_initial_loss_is_taken_before_a_blow_up_in_the_first_records():
    from gradmon.jury import Jury
    from gradmon.thresholds import Thresholds

    jury = Jury([], Thresholds())
    for loss in (0.84, 16.8, 109.0, 61.0):  # batches of 8: four records make the initial loss
        jury.observe(loss, 1.0, 8)
    assert jury.initial_loss() == pytest.approx(0.84)
    calm = Jury([], Thresholds())
    for loss in (0.9, 0.7, 0.8, 0.75):
        calm.observe(loss, 1.0, 8)
    assert calm.initial_loss() == pytest.approx(np.median([0.9, 0.7, 0.8, 0.75]))


# -- 3. suggestions: always one, never what is in place, never one the cause does not support ---------------------
CONTEXTS = [Context(act, init, opt, lr, batchnorm=bn, clip_norm=clip, depth=depth, framework=fw, bias_init=bias)
            for act, init in (("relu", "he_normal"), ("relu", "xavier_normal"), ("tanh", "xavier_normal"),
                              ("tanh", "normal"), ("sigmoid", "he_normal"), (None, None))
            for opt, lr in (("sgd", 0.1), ("adam", 1e-3)) for bn in (False, True) for clip in (None, 1.0)
            for depth, fw, bias in ((2, "core", 0.0), (8, "torch", -1.0))]
EVIDENCE = [{}, {"cause": "initialization"}, {"cause": "activation"}, {"cause": "training"}, {"cause": "step"},
            {"cause": "bias"}, {"cause": "unknown"}, {"cause": "depth", "gain_suits": True},
            {"direction": "too_small"}, {"direction": "too_large"}, {"log10_grad_rms": {"a": 0.0}},
            {"explained_by": "dead_units"}]


@pytest.mark.parametrize("code", list(FINDING_CODES))
def test_every_warning_gets_a_suggestion_and_none_is_already_in_place(code):
    for ctx in CONTEXTS:
        for evidence in EVIDENCE:
            f = Finding(code, "warning", "dense0", 0, 0, "m", dict(evidence))
            codes = [s.code for s in advise(f, ctx)]
            assert codes, (code, ctx, evidence)
            assert not (ctx.init in HE_INITS and "he_init" in codes), (code, ctx, evidence)
            assert not (ctx.init in XAVIER_INITS and "xavier_init" in codes), (code, ctx, evidence)
            assert not (ctx.batchnorm and "batchnorm" in codes) and not (ctx.optimizer == "adam" and "adam" in codes)
            assert not (ctx.clip_norm and "gradient_clipping" in codes)
            assert not (ctx.activation == "relu" and "relu" in codes)
            if evidence.get("gain_suits"):
                assert "he_init" not in codes and "xavier_init" not in codes
            if code in ("sharpness_above_stability", "loss_divergence", "loss_oscillation", "nonfinite_values"):
                assert not {"relu", "leaky_relu", "batchnorm", "shallower"} & set(codes)  # step-size problems
            if ctx.framework == "torch":
                assert all(not s.patch and "In PyTorch" in s.text for s in advise(f, ctx))


@pytest.mark.parametrize("name", [n for n, case in CORE.items() if case[1] is not None])
def test_no_warning_of_a_real_run_suggests_what_is_in_place_or_what_its_cause_does_not_support(name):
    report, _, monitor, init = core_run(name)
    assert problems(report, init, optimizer=monitor.run.optimizer) == []


def test_dead_units_from_negative_biases_under_he_suggest_zero_biases_not_he_again():
    X, y = moons()
    monitor = gradmon.Monitor(console=False, curvature_every=0)
    core.Trainer(mlp("relu", "he_normal", [64] * 3, bias_init=-3.0), optimizer=core.SGD(0.1), callbacks=[monitor],
                 progress=False).fit(X, y, epochs=6)
    report = monitor.report()
    assert report.root_cause.code == "dead_units" and report.primary_fix.patch == {"model.bias_init": 0.0}
    assert not any(s.code == "he_init" for f in report.findings for s in f.suggestions)
    plateau = [f for f in report.findings if f.code == "loss_plateau"]
    assert all(diagnosis.cause_of(f)[0] == "dead_units" and f.suggestions[0].code == "zero_bias" for f in plateau)


# -- 4. one root cause, one first fix, everywhere ----------------------------------------------------------------
@pytest.fixture(scope="module")
def dead_relu_run(tmp_path_factory):
    """``gradmon run`` on the dead-relu scenario (shortened), with its console output."""
    import contextlib
    import io

    from gradmon.cli import main
    from gradmon.scenarios import scenario_path

    logdir = tmp_path_factory.mktemp("agree") / "run"
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        assert main(["run", str(scenario_path("dead-relu")), "--logdir", str(logdir), "--no-progress",
                     "--set", "train.epochs=6"]) == 0
    return logdir, err.getvalue()


def test_console_json_html_markdown_tensorboard_check_and_doctor_name_the_same_root_and_fix(dead_relu_run):
    import contextlib
    import io

    from gradmon.cli import main
    from gradmon.doctor import doctor, render_doctor
    from gradmon.report.markdown import md_text
    from gradmon.report.text import patch_to_cli
    from tests.tbutil import custom_scalar_layout, read_scalars, read_texts

    logdir, console = dead_relu_run
    doc = json.loads((logdir / "report.json").read_text())
    root, fix = doc["diagnosis"]["root"], doc["diagnosis"]["fix"]
    name = diagnosis.name(root["code"], root["layer"])
    assert root["code"] == "dead_units" and fix["patch"] == {"model.bias_init": 0.0}
    # the report object read back gives the same
    report = gradmon.HealthReport.load(logdir)
    assert (report.root_cause.code, report.root_cause.layer, report.primary_fix.patch) == \
        (root["code"], root["layer"], fix["patch"])
    # console: the closing lines
    assert f"[gradmon] root cause: {name}" in console and f"fix: {fix['text']}  ({patch_to_cli(fix['patch'])})" in console
    # HTML: the status section names it first
    html = (logdir / "report.html").read_text()
    assert f'id="root-cause" data-code="{root["code"]}"' in html and f'id="first-fix" data-code="{fix["code"]}"' in html
    # Markdown and TensorBoard's report text (the same renderer)
    md = report.save(logdir / "report.md").read_text()
    tb = read_texts(logdir)["report/text_summary"][-1][1]
    for text in (md, tb):
        assert f"**Root cause:** `{root['code']}` in `{root['layer']}`" in text
        assert f"**First fix:** {md_text(fix['text'])}" in text
    # TensorBoard's diagnosis text (on top of the alerts) and its first chart are the root's
    alerts = read_texts(logdir)["alerts/text_summary"][-1][1]
    assert f"**Root cause:** `{name}`; **first fix:** {md_text(fix['text'])}" in alerts
    first_chart = next(iter(custom_scalar_layout(logdir)))
    assert first_chart.startswith(f"{root['severity'].upper()} {root['code']}") and \
        patch_to_cli(fix["patch"]) in first_chart
    # the activations' scale per layer is charted (a forward collapse shows there)
    assert any(tag.startswith("log10_act_std/") for tag in read_scalars(logdir))
    # gradmon check, text and JSON
    for fmt in ("text", "json"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["check", str(logdir), "--format", fmt])
        if fmt == "text":
            assert f"root cause: {name}; fix: {fix['text']}" in out.getvalue()
        else:
            assert json.loads(out.getvalue())["diagnosis"] == doc["diagnosis"]
    # the doctor: same root and first fix for the same spec and budget, tried first and reported
    result = doctor(report.spec, budget_steps=report.steps, workers=1, progress=False)
    assert result.baseline.root_cause == {"code": root["code"], "layer": root["layer"]}
    assert result.baseline.first_fix == {"code": fix["code"], "patch": fix["patch"]}
    trial = next(t for t in result.trials if t.is_fix(fix))
    assert trial.verdict == "better" and f"its first fix: {trial.label}" in render_doctor(result)
    assert result.to_dict()["baseline"]["first_fix"]["patch"] == fix["patch"]


@pytest.mark.parametrize("name,epochs", [("dead-relu", 6), ("saturation", 6)])
def test_demo_runs_exactly_the_fix_it_prints(name, epochs, tmp_path, capsys):
    from core.spec import apply_patch
    from gradmon.cli import main
    from gradmon.report.text import patch_to_cli

    assert main(["demo", name, "--logdir", str(tmp_path), "-q", "--set", f"train.epochs={epochs}"]) == 0
    out = capsys.readouterr().out
    printed = re.search(rf"== {name}-fixed  \(the root cause's first fix: (.*)\)", out).group(1)
    first = json.loads((tmp_path / name / "report.json").read_text())
    fixed = json.loads((tmp_path / f"{name}-fixed" / "report.json").read_text())
    fix = first["diagnosis"]["fix"]
    assert printed == patch_to_cli(fix["patch"]) and f"first fix: {fix['text']}" in out
    assert fixed["spec"] == json.loads(json.dumps(apply_patch(first["spec"], fix["patch"])))
    assert fixed["status"] == "healthy"


def test_the_shipped_scenarios_diagnose_the_fix_their_demo_is_documented_with():
    import tomllib

    from core.spec import load_spec
    from gradmon.run import run_spec
    from gradmon.scenarios import FIXES, scenario_text

    for name, patch in FIXES.items():  # curvature off: it is not what these scenarios are about (and it is slow)
        spec = load_spec(tomllib.loads(scenario_text(name)), ["monitor.curvature_every=0"])
        assert run_spec(spec, None, progress=False, console=False).report.primary_fix.patch == patch, name


# -- PyTorch loops: the same classes through gradmon.torch.watch ------------------------------------------------
def torch_data(seed=0, scale=None, offset=None, classes=2):
    torch = pytest.importorskip("torch")
    X, y = moons(1024, seed) if classes == 2 else spirals(1024, seed)
    X = X * np.asarray(scale if scale is not None else 1.0) + np.asarray(offset if offset is not None else 0.0)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def torch_mlp(depth, width, act="relu", init=None, seed=0, out=2, freeze=()):
    """An ``nn.Sequential`` of ``depth`` hidden ``nn.Linear`` + activation modules, ``init`` applied to the
    weights (PyTorch's default otherwise), the Linear layers at ``freeze`` (indices into the Sequential)
    frozen."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    torch.manual_seed(seed)
    layers, width_in = [], 2
    for _ in range(depth):
        lin = nn.Linear(width_in, width)
        if init is not None:
            init(lin.weight)
        layers += [lin, acts[act]()]
        width_in = width
    layers.append(nn.Linear(width_in, out))
    model = nn.Sequential(*layers)
    for i in freeze:
        for p in model[i].parameters():
            p.requires_grad_(False)
    return model


def transformer(seed=0):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 32)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2)
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.enc(self.emb(x)).mean(1))

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, 16, (2048, 12), generator=g)
    return Net(), (X, ((X == 3).sum(1) > (X == 5).sum(1)).long())


def kaiming(w):
    import torch

    return torch.nn.init.kaiming_normal_(w, nonlinearity="relu")


def xavier(w):
    import torch

    return torch.nn.init.xavier_normal_(w)


def small(w):
    import torch

    return torch.nn.init.normal_(w, std=0.05)


TORCH = {  # name: (model, data, optimizer, lr, trainable-only optimizer, expected roots, expected first fix)
    "relu30_xavier_sgd": (lambda: (torch_mlp(30, 32, init=xavier), torch_data()), "sgd", 0.1, (V,), "he_init"),
    "relu30_kaiming_twin": (lambda: (torch_mlp(30, 32, init=kaiming), torch_data()), "sgd", 0.01, None, None),
    "relu25_default_init_momentum": (lambda: (torch_mlp(25, 32, seed=1), torch_data(1)), "momentum", 0.01, (V,),
                                     "he_init"),
    "relu25_kaiming_momentum_twin": (lambda: (torch_mlp(25, 32, init=kaiming, seed=1), torch_data(1)), "momentum",
                                     0.001, None, None),
    "tanh20_small_adam": (lambda: (torch_mlp(20, 32, "tanh", small, seed=2), torch_data(2)), "adam", 1e-3, (V,),
                          "xavier_init"),
    "tanh20_xavier_adam_twin": (lambda: (torch_mlp(20, 32, "tanh", xavier, seed=2), torch_data(2)), "adam", 1e-3,
                                None, None),
    "transformer_adam_lr1": (lambda: transformer(), "adam", 1.0, B, "lower_lr"),
    "transformer_twin": (lambda: transformer(), "adam", 1e-3, None, None),
    "mlp_adamw_lr03": (lambda: (torch_mlp(3, 64, init=kaiming, seed=4), torch_data(4)), "adamw", 0.3, B, "lower_lr"),
    "mlp_adamw_twin": (lambda: (torch_mlp(3, 64, init=kaiming, seed=4), torch_data(4)), "adamw", 1e-3, None, None),
    "feature_x2000": (lambda: (torch_mlp(2, 32, init=kaiming, seed=9), torch_data(9, scale=[1, 2000])), "sgd", 1e-3,
                      (U,), "standardize"),
    "feature_twin": (lambda: (torch_mlp(2, 32, init=kaiming, seed=9), torch_data(9)), "sgd", 0.05, None, None),
    "offset_adam": (lambda: (torch_mlp(2, 32, init=kaiming, seed=10), torch_data(10, [100, 100], [1000, 1000])),
                    "adam", 1e-3, (U,), "standardize"),
    "offset_twin": (lambda: (torch_mlp(2, 32, init=kaiming, seed=10), torch_data(10)), "adam", 1e-3, None, None),
    # 5. frozen layers: never in the depth profile, never an update-ratio finding, never switching detectors off
    "frozen_first_two": (lambda: (torch_mlp(6, 32, init=kaiming, seed=5, freeze=(0, 2)), torch_data(5)), "adam",
                         1e-3, None, None),
    "frozen_middle_momentum": (lambda: (torch_mlp(8, 32, init=kaiming, seed=8, freeze=(4, 6)), torch_data(8)),
                               "momentum", 0.01, None, None),
    "excluded_from_the_optimizer": (lambda: (torch_mlp(6, 32, init=kaiming, seed=7, freeze=()), torch_data(7)),
                                    "adam", 1e-3, None, None),
    "frozen_first_sigmoid12": (lambda: (torch_mlp(12, 32, "sigmoid", xavier, seed=6, freeze=(0,)), torch_data(6)),
                               "sgd", 0.1, (V,), "relu"),
}


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def torch_run(name, steps=300, **watch):
    import torch

    build, kind, lr, _, _ = TORCH[name]
    model, (X, y) = build()
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "excluded_from_the_optimizer":  # trainable, but the optimizer only steps the last layers
        params = [p for i, layer in enumerate(model) if i >= 6 for p in layer.parameters()]
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=lr), "momentum": lambda: torch.optim.SGD(params, lr, 0.9),
           "adam": lambda: torch.optim.Adam(params, lr=lr), "adamw": lambda: torch.optim.AdamW(params, lr=lr)}[kind]()
    watcher = gradmon.torch.watch(model, optimizer=opt, console=False, **{"curvature_every": 0, **watch})
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(X), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        watcher.log_loss(loss, target=y[i])
    report = watcher.report()
    watcher.close()
    return report, watcher


@pytest.mark.parametrize("name", list(TORCH))
def test_torch_loops_name_the_same_root_causes_and_twins_stay_silent(name, one_thread):
    import gradmon.torch  # noqa: F401

    report, watcher = torch_run(name)
    roots, fix = TORCH[name][3:]
    if roots is None:
        assert report.status == "healthy", [(f.code, f.layer, f.message) for f in report.findings]
    else:
        assert report.root_cause.code in roots and report.primary_fix.code == fix, \
            [(f.code, f.layer, f.evidence.get("caused_by")) for f in report.findings]
        assert "In PyTorch" in report.primary_fix.text and not report.primary_fix.patch
    assert problems(report) == []
    assert not [f for f in report.findings if f.code == "update_ratio"]  # frozen layers are not "frozen"


def test_the_transformer_blow_up_explains_its_vanished_gradients(one_thread):
    report, watcher = torch_run("transformer_adam_lr1")
    root = report.root_cause
    assert root.code == "loss_divergence" and "1e-3" in report.primary_fix.text
    vanished = [f for f in report.findings if f.code == V]
    assert vanished and all(diagnosis.cause_of(f) == ("loss_divergence", None) for f in vanished)
    # functional activations inside the encoder are not seen: their cause is said to be unknown, never guessed
    assert all("not saturated" not in f.message for f in vanished)


# -- 5. frozen and zero-gradient layers --------------------------------------------------------------------------
def test_a_frozen_layer_is_left_out_of_the_profile_and_the_rest_is_still_judged(one_thread):
    report, watcher = torch_run("frozen_first_sigmoid12")
    f = report.root_cause
    # a frozen layer is no gradient unit: listed as frozen, absent from the profile and from every series
    assert "linear0" not in [u.name for u in watcher.monitor.units] and "linear0" not in f.evidence["log10_grad_rms"]
    assert report.extra["frozen"] == ["linear0 (weight, bias)"]
    assert f.evidence["cause"] == "activation" and f.layer == "linear2"
    healthy, watcher = torch_run("frozen_first_two")
    assert healthy.status == "healthy" and "linear0" not in watcher.monitor.history.layer_names
    assert healthy.extra["frozen"] == ["linear0 (weight, bias)", "linear2 (weight, bias)"]


def test_zero_gradient_layers_do_not_switch_the_vanishing_detector_off():
    from gradmon.detectors.gradients import ExplodingGradients, VanishingGradients

    ctx = _context({"grad_norm": [1e-3, 0.0, 1e-1, 1.0], "saturation": [0.5, 0.5, 0.5, np.nan]})
    (obs,) = VanishingGradients().judge(ctx)  # the old detector returned nothing when any layer had rms 0
    assert obs.evidence["left_out"] == [ctx.units[1].name] and ctx.units[1].name not in obs.evidence["log10_grad_rms"]
    growth = _context({"grad_norm": [1e3, 0.0, 10.0, 1.0]})
    (obs,) = ExplodingGradients().judge(growth)
    assert "grow" in obs.message and ctx.units[1].name not in obs.evidence["log10_grad_rms"]


def test_frozen_units_and_layers_without_updates_draw_no_update_ratio_finding():
    import dataclasses

    from gradmon.detectors.gradients import VanishingGradients
    from gradmon.detectors.updates import UpdateRatio
    from gradmon.layout import Unit

    @dataclasses.dataclass(frozen=True)
    class FrozenUnit(Unit):
        frozen: bool = True

    ctx = _context({"update_ratio": [0.0, 1e-3, 1e-3, 1e-3], "grad_norm": [0.0, 1.0, 1.0, 1.0]})
    assert UpdateRatio().judge(ctx) == []  # no gradient, no update: frozen on purpose
    twin = _context({"update_ratio": [1e-8, 1e-3, 1e-3, 1e-3], "grad_norm": [1.0, 1.0, 1.0, 1.0]})
    assert [o.evidence["direction"] for o in UpdateRatio().judge(twin)] == ["too_small"]  # merely tiny: a finding
    twin.units = [FrozenUnit(**{f.name: getattr(u, f.name) for f in dataclasses.fields(Unit)}) if u.index == 0
                  else u for u in twin.units]
    assert UpdateRatio().judge(twin) == []
    profile = _context({"grad_norm": [1e-4, 1e-3, 1e-2, 1.0], "saturation": [0.5] * 3 + [np.nan]})
    profile.units = [FrozenUnit(**{f.name: getattr(u, f.name) for f in dataclasses.fields(Unit)}) if u.index == 0
                     else u for u in profile.units]
    (obs,) = VanishingGradients().judge(profile)
    assert profile.units[0].name in obs.evidence["left_out"] and obs.layer == profile.units[1].name


# -- 6. unscaled inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["moons_feature_x3000", "teacher_offset_adam", "spirals_tiny_feature"])
def test_unscaled_inputs_are_measured_on_the_first_layers_inputs(name):
    """The per-feature scale of the first layer's inputs against the data's own, and a sparse feature (an
    image's rarely-lit pixel) is not taken for a tiny one."""
    report, _, monitor, _ = core_run(name)
    f = next(f for f in report.findings if f.code == U)
    _, X, _, _, _ = CORE[name][0]()
    # the oracle: each feature's root mean square over its non-zero values in the whole training set
    X = np.asarray(X, float)
    rms = np.sqrt((X ** 2).sum(axis=0) / (X != 0).sum(axis=0))
    assert f.evidence["spread_decades"] == pytest.approx(np.log10(rms.max() / rms.min()), abs=0.1)
    assert f.evidence["median_scale"] == pytest.approx(10 ** np.median(np.log10(rms)), rel=0.15)
    assert f.evidence["examples"] >= 1024 and report.primary_fix.patch == {"data.standardize": True}


def test_sparse_features_are_not_unscaled():
    """Digits in [0, 1]: most border pixels are zero in almost every image (their root mean square over all
    images is 1e-3 of the others'), but when lit they are as large as any: no finding, and raw 0-255 pixel
    values (a scale far from 1) are one."""
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    X = digits.data / 16.0
    lit = X[:, (X != 0).any(axis=0)]
    assert np.log10(np.sqrt((lit ** 2).mean(0)).max() / np.sqrt((lit ** 2).mean(0)).min()) > 2.5  # rarity
    for scale, expect in ((1.0, False), (255.0, True)):
        monitor = gradmon.Monitor(console=False, curvature_every=0)
        core.Trainer(mlp("relu", "he_normal", [64], inp=64, out=10), optimizer=core.Adam(1e-3), callbacks=[monitor],
                     progress=False).fit(X * scale, digits.target, epochs=3)
        assert (U in {f.code for f in monitor.report().findings}) == expect


def test_data_standardize_false_reproduces_raw_data_and_the_finding_and_true_fixes_it(tmp_path):
    from core.spec import apply_patch, load_spec
    from gradmon.run import run_spec

    X, y = moons(600, seed=3)
    raw = np.c_[X[:, 0] * 2000 + 5000, X[:, 1] * 0.01]  # a price in dollars, a ratio: raw units
    path = tmp_path / "raw.csv"
    np.savetxt(path, np.c_[raw, y], delimiter=",", header="price,ratio,label", comments="")
    spec = load_spec({"name": "raw", "data": {"path": str(path), "standardize": False},
                      "model": {"hidden": [32, 32]}, "train": {"epochs": 6, "lr": 0.01},
                      "monitor": {"curvature_every": 0}})
    result = run_spec(spec, None, progress=False, console=False)
    assert result.report.root_cause.code == U and result.report.primary_fix.patch == {"data.standardize": True}
    fixed = run_spec(apply_patch(spec, result.report.primary_fix.patch), None, progress=False, console=False)
    assert fixed.report.status == "healthy" and fixed.final_loss < result.final_loss
    assert load_spec({"data": {"name": "moons"}})["data"]["standardize"] is True  # the default
    with pytest.raises(ValueError, match="data.standardize"):
        load_spec({"data": {"name": "moons", "standardize": "yes please"}})


# -- 7. λmax above 2/lr at initialisation ------------------------------------------------------------------------
def power_iteration_lambda_max(model, X, y, loss="mse", iters=300, eps=1e-4):
    """The oracle: the top Hessian eigenvalue of the full-batch loss at the model's weights, by power iteration
    on central finite differences of core's own gradient (float64), independent of gradmon's Lanczos."""
    trainer = core.Trainer(model, loss=loss, optimizer=core.SGD(0.1), progress=False)
    params = {k: v.astype(np.float64) for k, v in model.parameters().items()}
    keys = list(params)
    flat = np.concatenate([params[k].ravel() for k in keys])

    def grad(vec):
        offset = 0
        for k in keys:
            n = params[k].size
            model.parameters()[k][...] = vec[offset:offset + n].reshape(params[k].shape)
            offset += n
        _, g = trainer.loss_and_grad(X, y)
        return np.concatenate([np.asarray(g[k], np.float64).ravel() for k in keys])

    v = np.random.default_rng(0).normal(size=flat.size)
    lam = 0.0
    for _ in range(iters):
        v /= np.linalg.norm(v)
        hv = (grad(flat + eps * v) - grad(flat - eps * v)) / (2 * eps)
        lam = float(v @ hv)
        v = hv
    grad(flat)  # the weights as they were
    return lam


@pytest.mark.parametrize("name", ["gd_tanh_lr08", "gd_momentum_relu", "minibatch_sgd_lr30"])
def test_sharpness_above_the_bound_at_the_first_step_is_the_root_with_a_curvature_lr(name):
    report, _, monitor, _ = core_run(name)
    first = monitor.curvature[0]
    assert first["step"] == 0 and first["lambda_max"] > first["threshold"]
    f = report.root_cause
    assert f.code == S and f.evidence["above_at_initialisation"] is True
    assert "initialisation" in f.message and report.primary_fix.patch["train.lr"] < f.evidence["max_stable_lr"]
    if name == "gd_tanh_lr08":  # the first estimate against the oracle, on the same (full-batch) loss
        model, X, y, _, _ = CORE[name][0]()
        model = core.Sequential(model.layers, seed=0, dtype="float64")
        assert first["lambda_max"] == pytest.approx(power_iteration_lambda_max(model, X, y), rel=2e-2)


def test_torch_sharpness_at_the_first_step(one_thread):
    torch = pytest.importorskip("torch")
    import gradmon.torch  # noqa: F401

    for lr, expect in ((3.0, True), (0.05, False)):
        model, (X, y) = torch_mlp(2, 32, "tanh", xavier, seed=14), torch_data(14)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        watcher = gradmon.torch.watch(model, optimizer=opt, console=False, curvature_every=1,
                                      loss_fn=torch.nn.functional.cross_entropy, probe=(X[:256], y[:256]))
        for step in range(60):
            i = torch.arange(step * 16, step * 16 + 128) % len(X)
            loss = torch.nn.functional.cross_entropy(model(X[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            watcher.log_loss(loss)
        report = watcher.report()
        watcher.close()
        first = watcher.monitor.curvature[0]
        assert first["step"] == 0 and (first["lambda_max"] > first["threshold"]) == expect
        sharp = [f for f in report.findings if f.code == S]
        assert bool(sharp) == expect and (not expect or sharp[0].evidence["above_at_initialisation"])
        if not expect:
            assert report.status == "healthy"


# -- the links themselves ----------------------------------------------------------------------------------------
def test_any_set_of_findings_links_into_roots_without_cycles():
    """Property: whatever findings a run has, linking terminates, every consequence's cause is one of them,
    chains end at a root, and a run with a warning or an error always has a root cause with a fix."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from gradmon.causes import link

    causes = st.sampled_from([None, "initialization", "activation", "training", "step", "bias", "depth", "unknown"])
    finding = st.builds(
        lambda code, sev, layer, step, cause, pattern: Finding(
            code, sev, layer, step, step + 5, "m",
            {k: v for k, v in (("cause", cause), ("pattern", pattern),
                               ("direction", "too_large" if step % 2 else "too_small")) if v is not None}),
        st.sampled_from(list(FINDING_CODES)), st.sampled_from(["info", "warning", "error"]),
        st.sampled_from([None, "dense0", "dense2"]), st.integers(0, 50), causes,
        st.sampled_from([None, "stuck", "rising", "spike", "unrecovered"]))

    @hypothesis.settings(max_examples=200, deadline=None)
    @hypothesis.given(st.lists(finding, max_size=12, unique_by=lambda f: (f.code, f.layer)))
    def check(findings):
        ctx = Context("relu", "xavier_normal", "sgd", 0.1)
        for f in findings:
            f.suggestions = advise(f, ctx)
        link(findings)
        keys = {(f.code, f.layer) for f in findings}
        for f in findings:
            seen, g = set(), f
            while diagnosis.cause_of(g) is not None:
                assert diagnosis.cause_of(g) in keys and (g.code, g.layer) not in seen
                seen.add((g.code, g.layer))
                g = next(h for h in findings if (h.code, h.layer) == diagnosis.cause_of(g))
        if any(f.severity != "info" for f in findings):
            root = diagnosis.primary(findings)
            assert root is not None and diagnosis.primary_fix(findings) is root.suggestions[0]

    check()
