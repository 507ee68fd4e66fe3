"""Run specs (TOML/JSON/dict, overrides, validation, patches, building) and data sets (generators, files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import core
import core.memory
from core.data import DATASETS, load_dataset, load_file
from core.build import build
from core.spec import SpecError, apply_patch, flatten, load_spec, parse_override
from gradmon.scenarios import FIXES, SCENARIOS, scenario_path

# -- data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_generated_sets_are_deterministic_and_well_formed(name):
    a = load_dataset(name, n_samples=300, seed=3)
    b = load_dataset(name, n_samples=300, seed=3)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_train, b.y_train)
    assert len(a.X_train) + len(a.X_test) == 300 and len(a.X_test) == 60
    assert a.X_train.dtype == np.float64 and a.X_train.ndim == 2
    if name == "teacher":
        assert a.task == "regression" and a.y_train.shape == (240, 1) and a.n_outputs == 1
    else:
        assert a.task == "classification" and a.y_train.dtype == np.int64
        assert set(np.unique(a.y_train)) == set(range(a.n_classes))
        np.testing.assert_allclose(a.X_train.mean(0), 0, atol=1e-12)  # standardised on the train split
    c = load_dataset(name, n_samples=300, seed=4)
    assert not np.array_equal(a.X_train, c.X_train)


def test_digits_is_the_real_data_set():
    pytest.importorskip("sklearn")
    d = load_dataset("digits", n_samples=5000, test_fraction=0.0)
    assert d.X_train.shape == (1797, 64) and d.n_classes == 10 and d.X_test.shape == (0, 64)
    assert d.X_train.min() >= 0 and d.X_train.max() <= 1


def test_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)), rng.integers(5, 8, size=50)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    from_npz = load_dataset(path=tmp_path / "d.npz", test_fraction=0.0)
    assert from_npz.n_classes == 8 and set(np.unique(from_npz.y_train)) == {5, 6, 7}  # labels kept as given
    rows = "\n".join(",".join(f"{v:.17g}" for v in (*x, t)) for x, t in zip(X, y))
    (tmp_path / "h.csv").write_text("a,b,c,label\n" + rows + "\n")
    (tmp_path / "n.csv").write_text(rows + "\n")
    for name in ("h.csv", "n.csv"):
        Xc, yc = load_file(tmp_path / name)
        np.testing.assert_allclose(Xc, X)
        assert np.array_equal(yc, y)
    (tmp_path / "r.csv").write_text("\n".join(f"{a:.5f},{b:.5f}" for a, b in rng.normal(size=(20, 2))))
    assert load_dataset(path=tmp_path / "r.csv").task == "regression"


@pytest.mark.parametrize("content,message", [
    (None, "no such data file"),
    ("", "empty"),
    ("1,2\n3\n", "same number"),
    ("1,2\n3,x\n4,5\n", "not a number"),
    ("nan,1\n2,0\n", "NaN"),
    ("1,-1\n2,0\n", ">= 0"),
])
def test_bad_csv_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as exc:
        load_file(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_npz_files(tmp_path):
    np.savez(tmp_path / "a.npz", X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="missing array y"):
        load_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="3 rows but y has 4"):
        load_file(tmp_path / "b.npz")


def _write(path, kind):
    X = np.arange(12, dtype=float).reshape(6, 2)
    if kind == "object":
        np.savez(path, X=np.array([[1, "a"], [2, None]], dtype=object), y=np.array([0, 1]))
    elif kind == "strings":
        np.savez(path, X=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    elif kind == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"X": X}))
    elif kind == "y2d":
        np.savez(path, X=X, y=np.ones((6, 2), dtype=int))
    elif kind == "npy":  # np.save's format under an .npz name
        with open(path, "wb") as fh:
            np.save(fh, X)
    elif kind == "text":
        path.write_text("X,y\n1,0\n")
    elif kind == "yobject":
        np.savez(path, X=X, y=np.array([0, None, 1, 0, 1, 0], dtype=object))


@pytest.mark.parametrize("kind,message", [
    ("object", "object arrays"), ("strings", "array X holds <U1 values"), ("pickle", "not an .npz archive"),
    ("y2d", r"y has shape \(6, 2\) and holds integers"),
    ("npy", r"not an .npz archive \(it holds one array\)"), ("text", "not an .npz archive"),
    ("yobject", "array y holds Python objects, and object arrays"),
])
def test_bad_npz_errors_name_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.npz"
    _write(path, kind)
    with pytest.raises(ValueError, match=message) as exc:
        load_file(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_an_npy_under_an_npz_name_is_a_spec_error(tmp_path):
    path = tmp_path / "a.npz"
    _write(path, "npy")
    with pytest.raises(SpecError, match=r"not an .npz archive \(it holds one array\)") as exc:
        build(load_spec({"data": {"path": str(path)}}))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_generated_sets_have_the_classes_asked_for():
    assert load_dataset("spirals", n_samples=2, n_classes=3).n_classes == 3  # a sample too small to show them all
    assert load_dataset("blobs", n_samples=2).n_classes == 3 and load_dataset("moons", n_samples=2).n_classes == 2
    assert build(load_spec({"data": {"name": "spirals", "n_samples": 2, "n_classes": 3, "test_fraction": 0.0},
                            "model": {"hidden": [4]}})).model.n_outputs == 3


def test_class_labels_are_kept_as_given_and_checked(tmp_path):
    X = np.arange(16, dtype=float).reshape(8, 2)
    np.savez(tmp_path / "gaps.npz", X=X, y=np.array([0, 1, 3, 7, 0, 1, 3, 7]))
    gaps = load_dataset(path=tmp_path / "gaps.npz", test_fraction=0.0)
    assert gaps.n_classes == 8 and set(gaps.y_train) == {0, 1, 3, 7}
    assert load_dataset(path=tmp_path / "gaps.npz", test_fraction=0.0, n_classes=10).n_classes == 10
    with pytest.raises(ValueError, match="class label 7 is out of range for n_classes = 5"):
        load_dataset(path=tmp_path / "gaps.npz", n_classes=5)
    np.savez(tmp_path / "one.npz", X=X, y=np.full(8, 2))
    with pytest.raises(ValueError, match="at least 2 distinct classes") as exc:
        load_dataset(path=tmp_path / "one.npz")
    assert str(tmp_path / "one.npz") in str(exc.value)


def test_integral_regression_targets_stay_regression_when_asked(tmp_path):
    X = np.arange(20, dtype=float).reshape(10, 2)
    np.savez(tmp_path / "counts.npz", X=X, y=np.arange(10.0) * 3)  # whole numbers, but a regression target
    assert load_dataset(path=tmp_path / "counts.npz").task == "classification"  # auto: read as labels
    as_regression = load_dataset(path=tmp_path / "counts.npz", task="regression", test_fraction=0.0)
    assert as_regression.task == "regression" and as_regression.y_train.dtype == np.float64
    assert sorted(as_regression.y_train[:, 0]) == list(np.arange(10.0) * 3)
    base = {"data": {"path": str(tmp_path / "counts.npz")}, "model": {"hidden": [4]}}
    assert build(load_spec({**base, "data": {**base["data"], "task": "regression"}})).spec["train"]["loss"] == "mse"
    assert build(load_spec({**base, "train": {"loss": "mse"}})).data.task == "regression"  # the loss says so
    np.savez(tmp_path / "real.npz", X=X, y=np.linspace(0, 1, 10))
    with pytest.raises(SpecError, match="class labels must be whole numbers, found 0.111111"):
        build(load_spec({"data": {"path": str(tmp_path / "real.npz"), "task": "classification"}}))


# -- specs ----------------------------------------------------------------------------------------------------
def test_defaults_and_equivalent_toml_json(tmp_path):
    spec = load_spec({})
    assert spec["model"]["hidden"] == [64, 64] and spec["train"]["batch_size"] == 32
    assert spec["monitor"] == {"every": 1, "curvature_every": None, "curvature_budget": 0.05,
                               "curvature_samples": 1024, "thresholds": {}, "tensorboard_every": 10,
                               "histogram_every": None}
    (tmp_path / "s.toml").write_text('seed = 3\n[data]\nname = "moons"\n[model]\nhidden = [8]\n'
                                     '[train]\nlr = 0.5\nbatch_size = "full"\n')
    (tmp_path / "s.json").write_text(json.dumps({"seed": 3, "data": {"name": "moons"}, "model": {"hidden": [8]},
                                                 "train": {"lr": 0.5, "batch_size": "full"}}))
    assert load_spec(tmp_path / "s.toml") == load_spec(tmp_path / "s.json")
    assert load_spec(tmp_path / "s.toml")["name"] == "s"


def test_overrides_are_typed():
    spec = load_spec({}, ["train.lr=0.5", "model.hidden=[16, 8]", "model.batchnorm=true",
                          "model.activation=tanh", "train.batch_size=full", 'data.name="xor"'])
    assert spec["train"]["lr"] == 0.5 and spec["model"]["hidden"] == [16, 8]
    assert spec["model"]["batchnorm"] is True and spec["model"]["activation"] == "tanh"
    assert spec["train"]["batch_size"] == "full" and spec["data"]["name"] == "xor"
    assert parse_override("train.epochs=3") == ("train.epochs", 3)


@pytest.mark.parametrize("source,overrides,key", [
    ({"model": {"hiden": [3]}}, [], "model.hiden (did you mean model.hidden?)"),
    ({"trian": {"lr": 1}}, [], "unknown key trian"),
    ({}, ["train.lr=-1"], "train.lr: expected a positive number"),
    ({}, ["train.lr=true"], "train.lr: expected a number"),
    ({}, ["train.epochs=0"], "train.epochs: expected an integer >= 1"),
    ({}, ["train.batch_size=0"], "train.batch_size"),
    ({}, ["model.hidden=[64, -1]"], "model.hidden[1]"),
    ({}, ["model.dropout=1.5"], "model.dropout"),
    ({}, ["data.test_fraction=1"], "data.test_fraction"),
    ({}, ["model.activation=relux"], "model.activation: unknown value 'relux' (did you mean 'relu'?)"),
    ({}, ["train.optimizer=adamw"], "train.optimizer: unknown value 'adamw'"),
    ({}, ["data.name=mnist"], "data.name: unknown value 'mnist'"),
    ({}, ["train.lr"], "expected KEY=VALUE"),
    ({"data": {"name": "moons", "path": "x.npz"}}, [], "exactly one of data.name"),
])
def test_validation_errors_are_one_line_naming_the_key(source, overrides, key):
    with pytest.raises(SpecError) as exc:
        load_spec(source, overrides)
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "bad.json").write_text('{"train": {"lr": }')
    with pytest.raises(SpecError, match="invalid JSON at line 1"):
        load_spec(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("a: 1")
    with pytest.raises(SpecError, match="use .toml or .json"):
        load_spec(tmp_path / "bad.yaml")


def test_apply_patch_is_pure_and_validated():
    spec = load_spec({})
    patched = apply_patch(spec, {"train.clip_norm": 5.0, "model.activation": "tanh"})
    assert patched["train"]["clip_norm"] == 5.0 and spec["train"]["clip_norm"] == 0.0
    assert spec["model"]["activation"] == "relu"
    with pytest.raises(SpecError, match="train.lr"):
        apply_patch(spec, {"train.lr": 0})
    assert flatten(spec)["train.lr"] == 0.1


def test_build_gives_what_the_spec_asks():
    spec = load_spec({"data": {"name": "spirals", "n_samples": 200}, "model": {
        "hidden": [16, 8], "activation": "tanh", "init": "xavier_normal", "batchnorm": True, "dropout": 0.1},
        "train": {"optimizer": "momentum", "lr": 0.05, "clip_norm": 2.0, "batch_size": "full"}})
    run = build(spec)
    kinds = [l.kind for l in run.model.layers]
    assert kinds == ["dense", "batchnorm", "tanh", "dropout", "dense", "batchnorm", "tanh", "dropout", "dense"]
    assert run.model.layers[0].in_features == 2 and run.model.n_outputs == 3
    assert isinstance(run.trainer.optimizer, core.SGD) and run.trainer.optimizer.momentum == 0.9
    assert run.trainer.clip_norm == 2.0 and run.trainer.batch_size is None
    assert run.spec["train"]["loss"] == "cross_entropy"
    regression = build(load_spec({"data": {"name": "teacher", "n_samples": 100}, "model": {"hidden": []}}))
    assert regression.spec["train"]["loss"] == "mse" and len(regression.model.layers) == 1
    with pytest.raises(SpecError, match="train.loss"):
        build(load_spec({"data": {"name": "teacher"}, "train": {"loss": "cross_entropy"}}))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_loads_and_builds(name):
    spec = load_spec(scenario_path(name))
    assert spec["name"] == name
    run = build(spec)
    assert run.model.n_inputs == run.data.n_features


@pytest.mark.parametrize("overrides,key", [
    (["data.n_samples=1e12"], "data.n_samples: 1,000,000,000,000 examples"),
    (["model.hidden=[100000000000]"], "model.hidden: a network of"),
    (["data.name=moons", "data.n_samples=3000000", "train.batch_size=full", "model.hidden=[4096, 4096]"],
     "train.batch_size: batches of"),
])
def test_impossible_sizes_are_one_line_naming_the_key(overrides, key):
    with pytest.raises(SpecError, match="over the 8 GiB limit") as exc:
        load_spec({}, overrides)
    assert str(exc.value).startswith(key) and "\n" not in str(exc.value)


def test_a_file_too_big_for_its_network_is_rejected_at_build(tmp_path, monkeypatch):
    monkeypatch.setattr(core.memory, "MEMORY_LIMIT", 2**20)  # 1 MiB: small sizes show the rule
    np.savez(tmp_path / "wide.npz", X=np.zeros((4, 3000)), y=np.array([0, 1, 0, 1]))
    spec = load_spec({"data": {"path": str(tmp_path / "wide.npz")}, "model": {"hidden": [1000]},
                      "monitor": {"curvature_every": 0}})  # fine alone (without the curvature workspace)
    with pytest.raises(SpecError, match="^model.hidden: a network of 3,003,002 parameters .* over the 1 MiB"):
        build(spec)  # 3000 input features make it too big


@pytest.mark.parametrize("source,overrides,key", [
    ({}, ["train.optimizer=adam", "train.momentum=0.9"], "train.momentum: the adam optimizer has no momentum"),
    ({}, ["train.optimizer=rmsprop", "train.nesterov=true"], "train.nesterov: the rmsprop optimizer"),
    ({}, ["train.nesterov=true"], "train.nesterov: Nesterov needs momentum"),
    ({"train": {"optimizer": "momentum", "momentum": 0, "nesterov": True}}, [], "train.nesterov: Nesterov needs"),
    ({}, ["data.name=moons", "data.n_classes=4"], "data.n_classes: moons has a fixed number of classes"),
    ({}, ["data.name=teacher", "data.task=classification"], "data.task: teacher is a regression data set"),
    ({}, ["model.batchnorm=true", "train.batch_size=1"], "train.batch_size: 1 (stochastic GD) cannot train"),
])
def test_keys_that_would_be_ignored_or_cannot_work_are_rejected(source, overrides, key):
    with pytest.raises(SpecError) as exc:
        load_spec(source, overrides)
    assert str(exc.value).startswith(key) and "\n" not in str(exc.value)


def test_momentum_keys_follow_the_optimizer():
    assert load_spec({}, ["train.optimizer=momentum"])["train"]["momentum"] == 0.9
    sgd = build(load_spec({"data": {"n_samples": 50}, "model": {"hidden": [4]}}, ["train.momentum=0.5"]))
    assert sgd.trainer.optimizer.momentum == 0.5  # applied, not ignored
    exploding = load_spec(scenario_path("exploding"))
    assert exploding["train"]["momentum"] == 0.9
    for switched in (load_spec(scenario_path("exploding"), ["train.optimizer=adam"]),
                     apply_patch(exploding, {"train.optimizer": "adam", "train.lr": 0.001})):
        assert switched["train"]["optimizer"] == "adam" and switched["train"]["momentum"] is None
    assert load_spec({"data": {"path": "x.npz"}}, ["data.name=moons"])["data"]["path"] is None


def test_relative_data_path_is_relative_to_the_spec_file(tmp_path, monkeypatch):
    (tmp_path / "rel").mkdir()
    np.savez(tmp_path / "rel" / "d.npz", X=np.arange(20.0).reshape(10, 2), y=np.arange(10) % 2)
    (tmp_path / "rel" / "s.toml").write_text('[data]\npath = "d.npz"\n[model]\nhidden = [4]\n')
    monkeypatch.chdir(tmp_path)
    spec = load_spec("rel/s.toml")
    assert spec["data"]["path"] == str(Path("rel") / "d.npz")
    assert build(spec).data.n_classes == 2
    assert load_spec("rel/s.toml", ["data.path=other.npz"])["data"]["path"] == "other.npz"  # --set: cwd


#: per scenario: overrides for a quick run, the finding it must show, and that finding's lowest severity
#: (healthy: none at all).  Vanishing runs without curvature: no finding of it needs one, and curvature
#: on its 10-layer net is most of its cost.
SCENARIO_PATHOLOGY = {
    "vanishing": (["train.epochs=4", "monitor.curvature_every=0"], "vanishing_gradients", "warning"),
    "exploding": (["train.epochs=3"], "exploding_gradients", "warning"),
    "dead-relu": (["train.epochs=4"], "dead_units", "warning"),
    "saturation": (["train.epochs=4"], "saturated_activations", "warning"),
    "sharpness": (["train.epochs=80"], "sharpness_above_stability", "info"),
    "healthy": (["train.epochs=5"], None, None),
}


def test_every_scenario_has_a_pathology_case():
    assert set(SCENARIO_PATHOLOGY) == set(SCENARIOS)
    assert set(FIXES) <= set(SCENARIOS) - {"healthy"}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_demo_shows_each_scenarios_pathology_and_its_fix(name, tmp_path, capsys):
    """``gradmon demo NAME`` end to end: the scenario shows its pathology (healthy shows none) in the report
    and in the summary table, and its fix, run beside it, is healthy and reaches a lower loss."""
    from gradmon.cli import main
    from gradmon.findings import severity_rank

    overrides, code, severity = SCENARIO_PATHOLOGY[name]
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["demo", name, "--logdir", str(tmp_path), "-q", *sets]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.split() and line.split()[0] in (name, f"{name}-fixed")}
    run_dir = tmp_path / name if name in FIXES else tmp_path
    report = json.loads((run_dir / "report.json").read_text())
    found = {f["code"]: f["severity"] for f in report["findings"]}
    if code is None:
        assert report["status"] == "healthy" and not found, found
        assert rows[name].split()[1] == "healthy" and rows[name].rstrip().endswith("-")
    else:
        assert code in found and severity_rank(found[code]) >= severity_rank(severity), found
        assert code in rows[name], out
    if name in FIXES:
        fixed = json.loads((tmp_path / f"{name}-fixed" / "report.json").read_text())
        assert fixed["status"] == "healthy", fixed["findings"]
        assert float(rows[f"{name}-fixed"].split()[2]) < float(rows[name].split()[2]), out
    else:
        assert f"{name}-fixed" not in rows and not (tmp_path / f"{name}-fixed").exists()
