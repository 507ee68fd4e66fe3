"""A monitor must never be the reason a training run is lost: checkpoints resume exactly, failures and
interrupts still leave readable reports and event files, and no input makes the spec parser or the
detectors crash (property tests)."""

from __future__ import annotations

import json
import math
import os
import re
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core
import core.build
import gradmon
from core.checkpoint import load_checkpoint, save_checkpoint
from core.spec import SpecError, load_spec
from gradmon.detectors import JudgeContext, default_detectors
from gradmon.findings import HealthReport
from gradmon.history import LAYER_QUANTITIES, Window
from gradmon.layout import units_from_run
from gradmon.run import run_spec
from gradmon.scenarios import scenario_path
from tests.tbutil import read_scalars
from tests.test_monitor import mlp, moons


def make_trainer(seed=0):
    net = core.Sequential([core.Dense(2, 16, init="he_normal"), core.BatchNorm(16), core.ReLU(), core.Dropout(0.2),
                           core.Dense(16, 2)], seed=seed)
    return core.Trainer(net, optimizer=core.Adam(1e-2), batch_size=16, seed=seed, progress=False)


def test_checkpoint_resumes_training_exactly(tmp_path):
    X, y = moons(200)
    straight = make_trainer()
    straight.fit(X, y, epochs=4)
    first = make_trainer()
    first.fit(X, y, epochs=2, checkpoint=tmp_path / "ckpt.npz")
    resumed = make_trainer(seed=0)
    meta = load_checkpoint(tmp_path / "ckpt.npz", resumed)
    assert meta["epoch"] == 2 and meta["step"] == 26
    resumed.fit(X, y, epochs=2)
    for k, v in straight.model.parameters().items():
        assert np.array_equal(v, resumed.model.parameters()[k]), k
    bn = straight.model.layer("batchnorm1")
    assert np.array_equal(bn.running_var, resumed.model.layer("batchnorm1").running_var)


def test_checkpoint_errors(tmp_path):
    trainer = make_trainer()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.npz", trainer)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.npz", trainer)
    save_checkpoint(tmp_path / "adam.npz", trainer)
    other = core.Trainer(trainer.model, optimizer=core.SGD(0.1), progress=False)
    with pytest.raises(ValueError, match="Adam state"):
        load_checkpoint(tmp_path / "adam.npz", other)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_nonfinite_run_keeps_report_events_and_a_finite_checkpoint(tmp_path):
    spec = load_spec(scenario_path("exploding"))
    result = run_spec(spec, tmp_path, progress=False, console=False)
    report = HealthReport.load(tmp_path)
    assert report.ended == "nonfinite" and report.status == "error"
    nonfinite = [f for f in report.findings if f.code == "nonfinite_values"][0]
    assert nonfinite.layer is not None and nonfinite.first_step == result.train_history["steps"]
    trainer = core.build.build(spec).trainer
    load_checkpoint(tmp_path / "checkpoint.npz", trainer)
    assert all(np.isfinite(v).all() for v in trainer.model.parameters().values())
    assert "loss/train" in read_scalars(tmp_path)


@pytest.mark.parametrize("exc,ended", [(KeyboardInterrupt(), "interrupted"),
                                       (RuntimeError("disk on fire"), "exception: RuntimeError: disk on fire")])
def test_interrupts_and_crashes_leave_a_partial_report(tmp_path, exc, ended):
    X, y = moons(320)
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=0, console=False, tensorboard_every=1)

    class Crash(core.Callback):
        def on_step_end(self, state):
            if state.step == 12:
                raise exc

    trainer = core.Trainer(mlp("relu", "he_normal", [16]), batch_size=32, callbacks=[monitor, Crash()],
                           progress=False)
    with pytest.raises(type(exc)):
        trainer.fit(X, y, epochs=5)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["ended"] == ended and data["steps"] == 13
    assert (tmp_path / "report.html").exists()
    steps = [s for s, _ in read_scalars(tmp_path)["loss/train"]]
    assert steps == list(range(13))  # every recorded step reached the event file


def test_keep_going_on_nonfinite_when_asked():
    X, y = moons(200)
    monitor = gradmon.Monitor(curvature_every=0, console=False, stop_on_nonfinite=False)
    trainer = core.Trainer(mlp("relu", "he_normal", [16]), optimizer=core.SGD(1e9), batch_size=50,
                           callbacks=[monitor], progress=False, stop_on_nonfinite=False)
    history = trainer.fit(X * 1e3, y, epochs=3)
    assert history["steps"] == 12 and history["stopped"] is None
    assert "nonfinite_values" in {f.code for f in monitor.report().findings}


# -- property tests ---------------------------------------------------------------------------------------------
values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(-3, 300), max_size=4))
keys = st.sampled_from(["lr", "epochs", "hidden", "activation", "batch_size", "name", "noise", "init", "x", "dropout",
                        "every", "curvature_every", "n_samples", "clip_norm", "optimizer", "loss", "path"])
sections = st.sampled_from(["data", "model", "train", "monitor", "extra"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(sections, st.dictionaries(keys, values, max_size=4), max_size=3))
def test_spec_parser_never_crashes(raw):
    try:
        spec = load_spec(raw)
    except SpecError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert spec["train"]["lr"] > 0 and spec["train"]["epochs"] >= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=3))
def test_overrides_never_crash(items):
    try:
        load_spec({}, items)
    except SpecError as exc:
        assert "\n" not in str(exc)


def _run_info():
    net = mlp("tanh", "xavier_normal", [4, 4])
    return core.Trainer(net, progress=False).run_info(np.zeros((8, 2)), np.zeros(8, dtype=int), 1)


series = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=80),
    st.builds(lambda v, n: [v] * n, st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 80)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series, series, st.floats(allow_nan=True, allow_infinity=True))
def test_detectors_never_crash(loss, norms, lam):
    run = _run_info()
    units = units_from_run(run)
    window = Window([u.name for u in units], size=60)
    rng = np.random.default_rng(len(loss))
    for i in range(max(len(loss), len(norms))):
        layer_values = {q: rng.choice([np.nan, 0.0, 1e-30, 1.0, 1e30, np.inf, -1.0], size=len(units))
                        for q in LAYER_QUANTITIES}
        window.append(i, {"loss": loss[i] if i < len(loss) else np.nan,
                          "grad_norm": norms[i] if i < len(norms) else np.nan}, layer_values)
    ctx = JudgeContext(step=len(loss), window=window, units=units, run=run,
                       initial_loss=loss[0] if loss else math.nan, best_loss=min(loss) if loss else math.nan,
                       initial_grad_norm=norms[0] if norms else math.nan, sizes=np.ones(len(units)),
                       curvature=[{"step": 0, "lambda_max": lam}])
    for det in default_detectors():
        for obs in det.judge(ctx):
            assert obs.code in gradmon.FINDING_CODES and obs.severity in ("info", "warning", "error")
            json.dumps(gradmon.Finding(obs.code, obs.severity, obs.layer, 0, 1, obs.message,
                                       obs.evidence).to_dict())


# -- checkpoints: atomic, never pickled, never the reason a run is lost ------------------------------------------
def _state(trainer):
    return {k: v.copy() for k, v in trainer.model.parameters().items()}


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_training_goes_on(tmp_path, monkeypatch, capsys):
    X, y = moons(96)
    trainer = make_trainer()
    path = tmp_path / "ckpt.npz"
    real, calls, saved = np.savez, {"n": 0}, {}

    def savez(file, **arrays):  # the first write succeeds; later ones fail halfway, as on a full disk
        calls["n"] += 1
        if calls["n"] == 1:
            saved.update(_state(trainer))
            return real(file, **arrays)
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.checkpoint.np, "savez", savez)
    history = trainer.fit(X, y, epochs=3, checkpoint=path)
    assert history["steps"] == 18 and history["stopped"] is None and len(history["loss"]) == 3
    assert "No space left on device" in history["checkpoint_error"]
    err = capsys.readouterr().err
    assert err.count("could not write the checkpoint") == 1 and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temp files left behind
    restored = make_trainer(seed=1)
    assert load_checkpoint(path, restored)["epoch"] == 1  # the previous checkpoint, intact
    for k, v in saved.items():
        assert np.array_equal(v, restored.model.parameters()[k]), k


def test_checkpoints_never_load_pickles(tmp_path):
    trainer = make_trainer()
    save_checkpoint(tmp_path / "c.npz", trainer)
    with np.load(tmp_path / "c.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["model/extra"] = np.array([{"pickled": "object"}], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.npz", make_trainer())


def test_checkpoint_has_the_usual_file_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    save_checkpoint(tmp_path / "c.npz", make_trainer())
    assert stat.S_IMODE((tmp_path / "c.npz").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("hook,exc,ended", [("on_train_begin", KeyboardInterrupt(), "interrupted"),
                                            ("on_train_end", RuntimeError("boom"), "exception: RuntimeError: boom")])
def test_failures_in_train_begin_and_end_leave_a_report(tmp_path, hook, exc, ended):
    X, y = moons(64)
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=0, console=False)

    def crash(self, *args):
        raise exc

    Crash = type("Crash", (core.Callback,), {hook: crash})
    trainer = core.Trainer(mlp("relu", "he_normal", [8]), batch_size=32, callbacks=[Crash(), monitor],
                           progress=False)
    with pytest.raises(type(exc)):
        trainer.fit(X, y, epochs=1)
    assert json.loads((tmp_path / "report.json").read_text())["ended"] == ended


def test_ctrl_c_on_the_real_command_line_leaves_a_readable_partial_run(tmp_path):
    """SIGINT to a real `gradmon run` mid-training: exit 130, a message saying where the partial run is,
    report.json recording the interruption, and TensorBoard events readable up to the last step."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("tensorboard")
    from gradmon.scenarios import scenario_path
    from tests.tbutil import read_scalars

    logdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gradmon", "run", str(scenario_path("healthy")), "--logdir",
                             str(logdir), "--quiet", "--set", "train.epochs=5000", "--set",
                             "monitor.curvature_every=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(logdir.glob("events.out.tfevents.*")) or \
            list(logdir.glob("events.out.tfevents.*"))[0].stat().st_size < 20_000:  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"gradmon: interrupted; the partial run's report.json and event files " \
                                           f"are in {logdir}"
    report = gradmon.HealthReport.load(logdir)
    assert report.ended == "interrupted" and 0 < report.steps < 5000 * 25
    losses = read_scalars(logdir)["loss/train"]
    assert losses and losses[-1][0] <= report.steps


def test_ctrl_c_before_training_says_no_report_was_written(tmp_path, monkeypatch, capsys):
    import gradmon.run
    from gradmon.cli import main
    from gradmon.scenarios import scenario_path

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradmon.run, "run_spec", interrupted)
    assert main(["run", str(scenario_path("healthy")), "--logdir", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "gradmon: interrupted before a report was written"


# -- the monitor never changes training ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("clip", [{}, {"clip_norm": 0.5}, {"clip_value": 0.01}, {"clip_norm": 0.5, "clip_value": 0.01}])
def test_the_monitor_never_changes_training(optimizer, clip):
    """Parameters after training are bitwise equal with and without a monitor that measures everything it
    can (every step, curvature, histograms), whatever the optimizer and the clipping."""
    X, y = moons(192)

    def train(monitored: bool) -> dict[str, np.ndarray]:
        net = core.Sequential([core.Dense(2, 12, init="he_normal"), core.BatchNorm(12), core.Tanh(), core.Dropout(0.1),
                               core.Dense(12, 12), core.ReLU(), core.Dense(12, 2)], seed=3)
        callbacks = [gradmon.Monitor(console=False, curvature_every=5, curvature_samples=48, histogram_every=3,
                                     weight_every=1)] if monitored else []
        trainer = core.Trainer(net, optimizer=core.get_optimizer(optimizer, lr=0.05), batch_size=32, l2=1e-3, seed=1,
                               progress=False, callbacks=callbacks, **clip)
        trainer.fit(X, y, epochs=2)
        return {k: v.copy() for k, v in {**net.state_dict(), **trainer.optimizer.state_dict()}.items()}

    plain, monitored = train(False), train(True)
    assert plain.keys() == monitored.keys()
    for k, v in plain.items():
        assert np.array_equal(v, monitored[k]), k


# -- checkpoints: checked whole before anything changes -----------------------------------------------------------
def _trainer_state(trainer):
    return ({k: v.copy() for k, v in trainer.model.state_dict().items()},
            {k: np.array(v, copy=True) for k, v in trainer.optimizer.state_dict().items()},
            trainer.step, trainer.epoch, trainer.rng.bit_generator.state, trainer.model.dropout_rng.bit_generator.state)


def _same_state(a, b):
    return all(np.array_equal(v, b[0][k]) for k, v in a[0].items()) and a[1].keys() == b[1].keys() and \
        all(np.array_equal(v, b[1][k]) for k, v in a[1].items()) and a[2:] == b[2:]


@pytest.mark.parametrize("damage,message", [
    (lambda a: a.update({"optimizer/all/m": a["optimizer/all/m"][:-1]}), "optimizer slot 'm' is float32 of shape"),
    (lambda a: a.update({"optimizer/all/v": a["optimizer/all/v"].astype(np.float64)}), "optimizer slot 'v'"),
    (lambda a: a.pop("model/batchnorm1.running_var"), "it has no batchnorm1.running_var"),
    (lambda a: a.update({"model/dense0.weight": np.zeros((3, 16), np.float32)}), "dense0.weight is float32 of shape"),
    (lambda a: a.update({"meta": np.array(json.dumps({**json.loads(str(a["meta"])), "dropout_rng": {"x": 1}}))}),
     "dropout_rng"),
    (lambda a: a.update({"meta": np.array(json.dumps({**json.loads(str(a["meta"])), "step": -4}))}), "step -4"),
    (lambda a: a.update({"meta": np.array("[" * 5000 + "]" * 5000)}), "not a readable checkpoint"),
    (lambda a: a.update({"extra": np.zeros(3)}), "unexpected array 'extra'"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_at_load_and_changes_nothing(tmp_path, damage, message):
    X, y = moons(96)
    source = make_trainer()
    source.fit(X, y, epochs=1, checkpoint=tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        arrays = {k: data[k] for k in data.files}
    damage(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    target = make_trainer(seed=5)
    target.fit(X, y, epochs=1)
    before = _trainer_state(target)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_checkpoint(tmp_path / "bad.npz", target)
    assert "\n" not in str(info.value) and str(tmp_path / "bad.npz") in str(info.value)
    assert _same_state(before, _trainer_state(target))


def test_damaged_checkpoint_files_are_one_clear_error(tmp_path):
    """Truncated at every length class and bit-flipped: always ValueError naming the file, never BadZipFile,
    EOFError, zlib.error or NotImplementedError, and the trainer untouched."""
    X, y = moons(96)
    trainer = make_trainer()
    trainer.fit(X, y, epochs=1, checkpoint=tmp_path / "c.npz")
    raw = (tmp_path / "c.npz").read_bytes()
    rng = np.random.default_rng(0)
    before = _trainer_state(trainer)
    cases = [raw[:n] for n in (0, 1, 10, 100, len(raw) // 2, len(raw) - 22, len(raw) - 1)]
    for _ in range(40):
        flipped = bytearray(raw)
        flipped[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        cases.append(bytes(flipped))
    refused = 0
    for i, case in enumerate(cases):
        path = tmp_path / f"d{i}.npz"
        path.write_bytes(case)
        try:
            load_checkpoint(path, trainer)
        except ValueError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            assert _same_state(before, _trainer_state(trainer))
            refused += 1
        else:  # a flip in a field nothing reads (a timestamp, padding) loads the same state
            assert _same_state(before, _trainer_state(trainer))
    assert refused >= len(cases) // 2
