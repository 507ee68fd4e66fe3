"""Run specs (TOML/JSON/dict, overrides, validation, patches, building) and data sets (generators, files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import core
from core.data import DATASETS, load_dataset, load_file
from core.spec import SpecError, apply_patch, build, flatten, load_spec, parse_override
from gradmon.scenarios import SCENARIOS, scenario_path

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
    assert from_npz.n_classes == 3 and set(np.unique(from_npz.y_train)) == {0, 1, 2}  # labels remapped
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


# -- specs ----------------------------------------------------------------------------------------------------
def test_defaults_and_equivalent_toml_json(tmp_path):
    spec = load_spec({})
    assert spec["model"]["hidden"] == [64, 64] and spec["train"]["batch_size"] == 32
    assert spec["monitor"] == {"every": 1, "curvature_every": 50, "curvature_samples": 1024}
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
