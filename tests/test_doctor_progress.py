"""``doctor`` and ``tune`` in a log (stderr not a terminal): progress lines per trial and inside trials,
runs named after their fix or grid values, one HPARAMS experiment per group, and tune's best-trial line."""

from __future__ import annotations

import pytest

from core.progress import StepLines
from gradmon.scenarios import scenario_path
from tests.test_cli_reports import gradmon_cli
from tests.tbutil import accumulator


def experiment_keys(logdir):
    from tensorboard.plugins.hparams import metadata

    content = accumulator(logdir).PluginTagToContent("hparams")
    if "_hparams_/experiment" not in content:
        return None
    return [h.name for h in metadata.parse_experiment_plugin_data(content["_hparams_/experiment"]).hparam_infos]


def test_doctor_in_a_pipe_reports_progress_and_names_trials_after_their_fix(tmp_path):
    import json

    proc = gradmon_cli("doctor", str(scenario_path("dead-relu")), "--budget-steps", "60", "--logdir",
                       str(tmp_path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    lines = proc.stderr.splitlines()
    assert lines[0] == "doctor: baseline (60 steps) ..."
    done = [ln for ln in lines if " done (" in ln]
    assert len(done) == 1 + len(data["trials"])  # the baseline and every trial, as each ends
    assert done[0].startswith("doctor: trial 1/") and "baseline: loss" in done[0]
    for t in data["trials"]:
        name = "+".join(t["suggestions"])
        assert any(f"({name}: loss" in ln for ln in done), name
        assert f"doctor: {name}: finished at step 60/60" in lines  # step progress inside the trial
    trial_dirs = sorted(p.name for p in tmp_path.glob("trial*"))
    assert len(trial_dirs) == len(data["trials"])
    assert {d.split("-", 1)[1] for d in trial_dirs} == {"+".join(t["suggestions"]) for t in data["trials"]}
    # one HPARAMS experiment for the group, at its root, listing the keys the fixes changed
    keys = sorted({k for t in data["trials"] for k in t["patch"]})
    assert experiment_keys(tmp_path) == keys
    assert experiment_keys(tmp_path / "baseline") is None and experiment_keys(tmp_path / trial_dirs[0]) is None


def test_tune_logdir_progress_and_best_trial(tmp_path):
    proc = gradmon_cli("tune", str(scenario_path("healthy")), "--grid", "train.lr=1e-3,1e-2,5.0",
                       "--budget-steps", "40", "--logdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["lr=0.001", "lr=0.01", "lr=5.0"]
    for name in ("lr=0.001", "lr=0.01", "lr=5.0"):
        assert (tmp_path / name / "report.json").exists()
        assert f"tune: {name}: finished at step" in proc.stderr
    assert experiment_keys(tmp_path) == ["train.lr"]
    board = proc.stdout.splitlines()
    first = next(ln for ln in board if ln.startswith("1 "))
    best = next(ln for ln in board if ln.startswith("best: "))
    lr = first.split()[1]
    assert best.startswith(f"best: train.lr={lr} (") and best.endswith(f"--set train.lr={lr}")
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("search: trial ")][-1].startswith("search: trial 3/3")


def test_step_lines(capsys):
    from core.callbacks import RunInfo, StepState  # noqa: F401  (the hook protocol the callback follows)

    lines = StepLines("tune: x", budget=5, interval=0.0)

    class Run:
        total_steps = 100

    class State:
        def __init__(self, step):
            self.step = step

    lines.on_train_begin(Run())
    for s in range(3):
        lines.on_step_end(State(s))
    lines.on_train_end({})
    err = capsys.readouterr().err.splitlines()
    assert err == ["tune: x: step 1/5", "tune: x: step 2/5", "tune: x: step 3/5", "tune: x: finished at step 3/5"]
