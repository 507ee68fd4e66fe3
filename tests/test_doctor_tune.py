"""gradmon doctor: suggested fixes validated by short trials; health-aware hyperparameter search."""

from __future__ import annotations

import json
import math

import pytest

from core.spec import load_spec
from core.tune import expand_grid, parse_grid, sample_grid, search
from gradmon.doctor import doctor, health_trial, render_doctor, render_leaderboard
from gradmon.scenarios import scenario_path
from tests.test_cli_reports import gradmon_cli


@pytest.mark.parametrize("name,budget", [("vanishing", 200), ("exploding", 60), ("dead-relu", 200)])
def test_top_fix_measurably_improves_the_run(name, budget):
    spec = load_spec(scenario_path(name))
    result = doctor(spec, budget_steps=budget, progress=False)
    base, best = result.baseline, result.trials[0]
    assert base.findings and best.rank == 1
    assert set(best.closed) and best.errors == 0
    assert best.loss < base.loss or not math.isfinite(base.loss)
    # every trial used the same budget and seed: the ranking is by what was measured
    assert [t.rank for t in result.trials] == list(range(1, len(result.trials) + 1))
    assert all(t.sort_key() <= u.sort_key() for t, u in zip(result.trials, result.trials[1:]))
    text = render_doctor(result)
    assert "best fix:" in text and "--set" in text


def test_healthy_spec_has_nothing_to_fix():
    result = doctor(load_spec(scenario_path("healthy")), budget_steps=150, progress=False)
    assert result.nothing_to_fix and result.trials == []
    assert "nothing to fix" in render_doctor(result)


def test_doctor_cli_json_schema_and_report(tmp_path):
    proc = gradmon_cli("doctor", str(scenario_path("vanishing")), "--budget-steps", "100", "--format", "json",
                       "--logdir", str(tmp_path), "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "gradmon.doctor/1"
    assert "vanishing_gradients" in data["baseline"]["findings"]
    assert data["trials"][0]["rank"] == 1 and "patch" in data["trials"][0]
    report = json.loads((tmp_path / "baseline" / "report.json").read_text())
    assert report["extra"]["doctor"]["trials"][0]["rank"] == 1
    assert "Fixes tried" in (tmp_path / "baseline" / "report.html").read_text()


def test_grid_parsing_and_sampling():
    grid = parse_grid(["train.lr=1e-3,1e-2", "model.hidden=[8,8],[16]", "model.activation=relu,tanh"])
    assert grid["model.hidden"] == [[8, 8], [16]] and grid["train.lr"] == [0.001, 0.01]
    assert len(expand_grid(grid)) == 8
    assert len(sample_grid(grid, 3, seed=0)) == 3
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_grid(["train.lr"])


def test_search_prunes_unhealthy_trials_and_ranks_the_rest():
    spec = load_spec({"data": {"name": "moons", "n_samples": 400}, "model": {"hidden": [32, 32]},
                      "train": {"optimizer": "sgd", "epochs": 10}, "monitor": {"curvature_every": 0}})
    trials = search(spec, {"train.lr": [0.05, 0.5, 500.0]}, trial=health_trial(), progress=False)
    by_lr = {t.params["train.lr"]: t for t in trials}
    assert by_lr[500.0].metrics.get("pruned") and by_lr[500.0].rank == 3
    assert by_lr[500.0].metrics["steps"] < 10 * 10  # stopped early
    assert {trials[0].params["train.lr"], trials[1].params["train.lr"]} == {0.05, 0.5}
    board = render_leaderboard(trials)
    assert "pruned:" in board and board.splitlines()[1].startswith("1")


def test_tune_cli(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[data]\nname = "moons"\nn_samples = 300\n[model]\nhidden = [16]\n[train]\nepochs = 5\n'
                    '[monitor]\ncurvature_every = 0\n')
    proc = gradmon_cli("tune", str(spec), "--grid", "train.lr=0.01,0.1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "train.lr" in proc.stdout.splitlines()[0] and len(proc.stdout.strip().splitlines()) == 3
