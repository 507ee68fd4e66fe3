"""gradmon doctor: suggested fixes validated by short trials; health-aware hyperparameter search."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import gradmon
from core.spec import load_spec
from core.tune import expand_grid, parse_grid, sample_grid, search
from gradmon.doctor import DoctorResult, TrialOutcome, _rank, doctor, health_trial, render_doctor, render_leaderboard
from gradmon.scenarios import scenario_path
from tests.test_cli_reports import gradmon_cli


#: per scenario: budget, the finding the fix must close, a fixed bound on the best trial's loss, and on its
#: accuracy (None for regression)
SCENARIO_CASES = {
    "vanishing": (200, "vanishing_gradients", 0.3, 0.9),
    "exploding": (60, "exploding_gradients", 0.5, None),
    "dead-relu": (200, "dead_units", 0.3, 0.9),
    "saturation": (150, "saturated_activations", 0.005, 0.99),
}


def clearly_worse(t, base) -> bool:
    """The test's own margins, wider than the doctor's: 25 % more loss or 5 points less accuracy."""
    if math.isfinite(base.loss) and not t.loss <= 1.25 * base.loss:
        return True
    return t.accuracy is not None and base.accuracy is not None and t.accuracy < base.accuracy - 0.05


def clearly_better(t, base) -> bool:
    return math.isfinite(t.loss) and (not math.isfinite(base.loss) or t.loss < 0.75 * base.loss)


@pytest.mark.parametrize("name", list(SCENARIO_CASES))
def test_top_fix_measurably_improves_the_run(name):
    budget, pathology, loss_bound, acc_bound = SCENARIO_CASES[name]
    # no finding here needs curvature, and it is most of the cost of the 10-layer sigmoid net
    overrides = ["monitor.curvature_every=0"] if name == "vanishing" else []
    result = doctor(load_spec(scenario_path(name), overrides), budget_steps=budget, progress=False)
    base, trials = result.baseline, result.trials
    assert pathology in base.findings
    best = trials[0]
    # the best fix, judged by fixed numbers rather than by the doctor's own ordering
    assert math.isfinite(best.loss) and best.loss < loss_bound, render_doctor(result)
    assert best.loss < base.loss
    if acc_bound is not None:
        assert best.accuracy >= acc_bound, render_doctor(result)
    assert pathology in best.closed and best.errors == 0
    # the top-ranked trial is not worse than the unfixed baseline, and nothing clearly worse outranks a
    # clear gain (by the test's own margins)
    assert not clearly_worse(best, base), render_doctor(result)
    for w in (t for t in trials if clearly_worse(t, base)):
        assert all(g.rank < w.rank for g in trials if clearly_better(g, base)), render_doctor(result)
    # the JSON and the table report the same loss for every trial
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    text = render_doctor(result)
    for t, d in zip(trials, data["trials"]):
        assert d["rank"] == t.rank
        assert d["final_loss"] == t.loss if math.isfinite(t.loss) else (d["final_loss"] is None and d["diverged"])
        assert (f"{t.loss:.4g}" if math.isfinite(t.loss) else "diverged") in text
    assert "validation loss" in data["loss_measure"] and "validation loss" in text


def outcome(loss, acc, findings=(), suggestions=("x",), patch=None, errors=0):
    return TrialOutcome(suggestions=list(suggestions), patch=patch or {"train.lr": 0.1}, loss=loss, accuracy=acc,
                        train_loss=loss, findings=list(findings), errors=errors, stopped=None)


def test_ranking_puts_measured_gains_before_regressions_and_do_nothing_fixes():
    base = outcome(0.70, 0.60, findings=["vanishing_gradients", "loss_plateau"])
    regress = outcome(0.90, 0.50, suggestions=["relu"])                       # closes all, trains worse
    frozen = outcome(0.70, 0.60, suggestions=["lower_lr"])                     # closes all, learns nothing
    gain_open = outcome(0.20, 0.90, findings=["loss_plateau"], suggestions=["adam"])
    gain = outcome(0.30, 0.88, suggestions=["batchnorm"])
    acc_drop = outcome(0.60, 0.50, suggestions=["l2"])                        # lower loss, 10 points less
    broken = outcome(0.10, 0.95, findings=["vanishing_gradients"], errors=1, suggestions=["raise_lr"])
    trials = [regress, frozen, gain_open, broken, gain, acc_drop]
    _rank(trials, base)
    assert [t.suggestions[0] for t in trials] == ["adam", "batchnorm", "lower_lr", "raise_lr", "l2", "relu"]
    # an error left open is never "better", whatever the loss
    assert [t.verdict for t in trials] == ["better", "better", "same", "same", "worse", "worse"]
    assert gain.closed == ["loss_plateau", "vanishing_gradients"] and gain_open.closed == ["vanishing_gradients"]
    # Δ loss is the relative change of the loss (what the table shows), Δ accuracy the difference
    assert gain.delta_loss == pytest.approx((0.30 - 0.70) / 0.70) and acc_drop.delta_accuracy == pytest.approx(-0.1)
    # equal losses (to 3 significant digits): the trial that closed more findings wins the tie
    a = outcome(0.30001, 0.9, findings=["loss_plateau"], suggestions=["a"])
    b = outcome(0.30002, 0.9, suggestions=["b"])
    pair = [a, b]
    _rank(pair, base)
    assert [t.suggestions[0] for t in pair] == ["b", "a"]


def test_diverged_baseline_table_labels_and_best_fix_command():
    base = outcome(math.inf, None, findings=["exploding_gradients", "nonfinite_values"])
    base.diverged = True
    clip_small = outcome(0.1, None, suggestions=["gradient_clipping"], patch={"train.clip_norm": 9.7})
    clip_large = outcome(0.7, None, findings=["exploding_gradients"], suggestions=["gradient_clipping"],
                         patch={"train.clip_norm": 100.0}, errors=1)
    still_diverges = outcome(math.inf, None, findings=["nonfinite_values"], suggestions=["l2"], errors=1)
    trials = [clip_large, still_diverges, clip_small]
    _rank(trials, base)
    assert [t.verdict for t in trials] == ["better", "same", "same"]
    result = DoctorResult(spec={}, budget_steps=60, baseline=base, trials=trials, loss_measure="validation loss",
                          source="my specs/e.toml", overrides=["train.epochs=3"])
    text = render_doctor(result)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert "Δ loss" in lines[header] and lines[header + 1].startswith("base") and "diverged" in lines[header + 1]
    assert "gradient_clipping (clip_norm=9.7)" in lines[header + 2] and "-∞" in lines[header + 2]
    assert "gradient_clipping (clip_norm=100.0)" in lines[header + 3]
    assert lines[header + 4].split()[0] == "3" and "diverged" in lines[header + 4]
    assert ("best fix: gradient_clipping (clip_norm=9.7)  ->  gradmon run 'my specs/e.toml' "
            "--set train.epochs=3 --set train.clip_norm=9.7") in text
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    # a diverged run's loss is null, and its diverged flag says why
    assert data["baseline"]["final_loss"] is None and data["baseline"]["diverged"] is True
    assert data["trials"][2]["final_loss"] is None and data["trials"][2]["diverged"] is True
    # the fix that stopped the divergence: its Δ loss (-inf) is null, the flags say which run diverged
    assert data["trials"][0]["delta_loss"] is None and data["trials"][0]["diverged"] is False
    assert data["trials"][0]["final_loss"] == 0.1 and data["trials"][0]["verdict"] == "better"


def test_doctor_table_cells_from_a_document():
    """The table from a gradmon.doctor/1 document: relative loss changes, diverged runs (null losses with the
    diverged flag) shown as such, with infinite changes."""
    from gradmon.report.text import doctor_rows

    doc = {"baseline": {"final_loss": 0.5, "findings": ["loss_plateau"], "diverged": False},
           "trials": [{"rank": 1, "label": "adam", "final_loss": 0.25, "delta_loss": -0.5, "verdict": "better"},
                      {"rank": 2, "label": "raise_lr", "final_loss": None, "delta_loss": None, "diverged": True,
                       "verdict": "worse"}]}
    rows = doctor_rows(doc)
    assert rows[1][2:4] == ("0.25", "-50%") and rows[2][2:4] == ("diverged", "+∞")
    doc["baseline"] = {"final_loss": None, "findings": ["nonfinite_values"], "diverged": True}
    assert doctor_rows(doc)[0][2] == "diverged" and doctor_rows(doc)[1][3] == "-∞"


def test_progress_bar_counts_the_baseline_and_ends_at_n_of_n(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, *args):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k):
            self.n += k

        def refresh(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr("gradmon.doctor.progress_bar", lambda total, progress, desc, unit: Bar(total))
    result = doctor(load_spec(scenario_path("exploding")), budget_steps=30, workers=1, progress=True)
    assert result.trials and bars[0].n == bars[0].total == 1 + len(result.trials)


def test_healthy_spec_has_nothing_to_fix():
    result = doctor(load_spec(scenario_path("healthy")), budget_steps=150, progress=False)
    assert result.nothing_to_fix and result.trials == []
    assert "nothing to fix" in render_doctor(result)


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_doctor_cli_json_schema_and_report(tmp_path):
    proc = gradmon_cli("doctor", str(scenario_path("dead-relu")), "--budget-steps", "60", "--format", "json",
                       "--logdir", str(tmp_path), "-q")
    assert proc.returncode == 0, proc.stderr
    data = strict_json(proc.stdout)
    assert data["schema"] == "gradmon.doctor/1"
    assert "dead_units" in data["baseline"]["findings"]
    assert isinstance(data["baseline"]["final_loss"], float)
    assert data["trials"][0]["rank"] == 1 and "patch" in data["trials"][0]
    assert all({"suggestions", "patch", "final_loss", "findings", "closed"} <= set(t) for t in data["trials"])
    report = json.loads((tmp_path / "baseline" / "report.json").read_text())
    assert report["extra"]["doctor"]["trials"][0]["rank"] == 1
    assert list(tmp_path.glob("trial1-*/report.json"))  # an explicit --logdir keeps every trial's run
    # the reports show the same table as the console: the baseline row, then each trial with its verdict
    html = (tmp_path / "baseline" / "report.html").read_text()
    doctor = html[html.index('<table id="doctor">'):]
    doctor = doctor[: doctor.index("</table>")]
    assert html.index("Fixes tried") < html.index("<h2>Plots</h2>")  # next to the findings, not at the end
    assert "<td>base</td><td>baseline (no patch)</td>" in doctor
    assert doctor.count("<tr>") == 2 + len(data["trials"])  # header, baseline, trials
    for t in data["trials"]:
        assert f"<td>{t['rank']}</td><td>{t['label']}</td>" in doctor and f"<td>{t['verdict']}</td>" in doctor
    report_md = (tmp_path / "r.md")
    gradmon.HealthReport.load(tmp_path / "baseline").save(report_md)
    assert "| rank | fix | loss | Δ loss |" in report_md.read_text() and "| base | baseline (no patch) |" in \
        report_md.read_text()


def test_doctor_cli_writes_a_report_under_a_default_logdir(tmp_path):
    proc = gradmon_cli("doctor", str(scenario_path("exploding")), "--budget-steps", "30", "--workers", "1", "-q",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (root,) = (tmp_path / "runs").glob("doctor-exploding-*")
    report = json.loads((root / "baseline" / "report.json").read_text())
    baseline = report["extra"]["doctor"]["baseline"]
    assert report["extra"]["doctor"]["trials"] and baseline["final_loss"] is None and baseline["diverged"] is True
    assert (root / "baseline" / "report.html").exists()
    table = (root / "doctor.txt").read_text()
    assert table.strip() in proc.stdout and "base " in table
    assert f"report: {Path('runs') / root.name / 'baseline' / 'report.html'}" in proc.stdout
    command = f"gradmon run {scenario_path('exploding')} --set "
    assert re.search(r"best fix: .+  ->  " + re.escape(command) + r"\S+=", proc.stdout), proc.stdout


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
    lines = proc.stdout.strip().splitlines()
    assert "train.lr" in lines[0] and len(lines) == 5 and lines[-1].startswith("best: train.lr=")  # + best trial


def test_tune_cli_json_is_strict_with_a_diverging_trial(tmp_path):
    proc = gradmon_cli("tune", str(scenario_path("exploding")), "--grid", "train.lr=1e-3,1e-1", "--budget-steps",
                       "60", "--format", "json", "-q")
    assert proc.returncode == 0, proc.stderr
    trials = strict_json(proc.stdout)
    assert [t["rank"] for t in trials] == [1, 2]
    assert trials[1]["params"] == {"train.lr": 0.1} and trials[1]["pruned"]
    assert isinstance(trials[0]["final_loss"], float)
