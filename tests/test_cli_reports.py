"""The command line end to end (run, check, report, demo, doctor, tune), bad input, and the rendered
reports (HTML escaping, self-containment, Markdown, text/JSON of check)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradmon.cli import main
from gradmon.findings import Finding, HealthReport, Suggestion
from gradmon.history import History
from gradmon.report import exit_code, patch_to_cli, render_check, render_html, render_markdown
from gradmon.report.plots import normalised_log_grad

ROOT = Path(__file__).resolve().parents[1]
SCEN = ROOT / "gradmon" / "scenarios"


def gradmon_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "gradmon", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def vanishing_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    proc = gradmon_cli("run", str(SCEN / "vanishing.toml"), "--logdir", str(d), "--set", "train.epochs=4", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout and "tensorboard --logdir" in proc.stdout
    return d


def test_run_writes_events_and_reports(vanishing_dir):
    names = {p.name for p in vanishing_dir.iterdir()}
    assert {"report.json", "report.html", "history.npz"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    data = json.loads((vanishing_dir / "report.json").read_text())
    assert data["spec"]["train"]["epochs"] == 4 and data["spec"]["name"] == "vanishing"
    assert "vanishing_gradients" in {f["code"] for f in data["findings"]}


def test_check_exit_codes_and_formats(vanishing_dir):
    fail = gradmon_cli("check", str(vanishing_dir), "--fail-on", "warning")
    assert fail.returncode == 1 and "vanishing_gradients" in fail.stdout
    assert "--set model.activation=relu" in fail.stdout
    as_json = gradmon_cli("check", str(vanishing_dir), "--format", "json", "--fail-on", "error")
    payload = json.loads(as_json.stdout)
    assert as_json.returncode == (1 if payload["failed"] else 0)
    assert payload["status"] == "error" and payload["failed"] is True
    md = gradmon_cli("check", str(vanishing_dir), "--format", "markdown")
    assert md.stdout.startswith("# gradmon health report")


def test_report_rewrites_by_suffix(vanishing_dir, tmp_path):
    for suffix in ("md", "json", "html"):
        out = tmp_path / f"r.{suffix}"
        proc = gradmon_cli("report", str(vanishing_dir), "-o", str(out))
        assert proc.returncode == 0 and out.exists(), proc.stderr
    assert HealthReport.load(tmp_path / "r.json").status == "error"


@pytest.mark.parametrize("args,needle", [
    (["run", "missing.toml"], "missing.toml: no such spec file"),
    (["run", str(SCEN / "healthy.toml"), "--set", "model.hiden=[3]"], "model.hiden"),
    (["run", str(SCEN / "healthy.toml"), "--set", "train.lr=-1"], "train.lr"),
    (["run", str(SCEN / "healthy.toml"), "--set", "train.lr"], "KEY=VALUE"),
    (["check", "/nonexistent/run"], "no such run directory"),
    (["check", str(ROOT), "--fail-on", "sometimes"], "--fail-on"),
    (["demo", "nothing"], "unknown scenario 'nothing'"),
    (["doctor", str(SCEN / "healthy.toml"), "--budget-steps", "0"], "--budget-steps"),
    (["tune", str(SCEN / "healthy.toml"), "--grid", "train.lr"], "--grid"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = gradmon_cli(*args, "--logdir", str(tmp_path / "x")) if args[0] == "run" else gradmon_cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_bad_data_file_in_spec(tmp_path):
    (tmp_path / "d.csv").write_text("1,0\nnan,1\n2,0\n")
    spec = tmp_path / "s.toml"
    spec.write_text(f'[data]\npath = "{tmp_path / "d.csv"}"\n')
    proc = gradmon_cli("run", str(spec), "--logdir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "d.csv: X contains NaN" in proc.stderr


def test_demo_runs_a_pathology_and_its_fix(tmp_path):
    proc = gradmon_cli("demo", "--logdir", str(tmp_path / "demo"), "-q", "--set", "train.epochs=5")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert re.search(r"vanishing\s+error", table) and re.search(r"vanishing-fixed\s+healthy", table)
    assert "tensorboard --logdir" in table
    assert (tmp_path / "demo" / "vanishing" / "report.html").exists()
    assert (tmp_path / "demo" / "vanishing-fixed" / "report.json").exists()


def test_python_m_and_console_script_agree():
    assert main(["demo", "nothing"]) == 2


# -- renderers --------------------------------------------------------------------------------------------------
def hand_report(name="<script>alert(1)</script>"):
    f = Finding("vanishing_gradients", "error", name, 3, 40, "Gradients vanish | towards the input.",
                {"drop_decades": 4.123456, "layer_name": name},
                [Suggestion("relu", "Use ReLU.", {"model.activation": "relu", "model.init": "he_normal"})])
    g = Finding("dead_units", "warning", "dense2", 5, 9, "Half the units are dead.", {"dead_fraction": 0.5}, [])
    return HealthReport(spec={"name": name, "train": {"lr": 0.1, "optimizer": "sgd"}}, steps=41, findings=[g, f],
                        layers=[{"name": name, "grad_norm": {"first": 1e-6, "last": 2e-6, "median": 1.5e-6},
                                 "update_ratio": {"median": 1e-7}, "saturation": {"median": 0.1},
                                 "dead_fraction": {"median": float("nan")}}],
                        curvature=[{"step": 0, "lambda_max": 30.0, "trace": 100.0, "hvps": 15, "threshold": 20.0}],
                        loss=[{"step": i, "train": 1.0 / (i + 1)} for i in range(41)])


def hand_history():
    h = History(["dense0", "dense2", "dense4"], capacity=64)
    for step in range(30):
        h.append(step, {"loss": 1.0 / (step + 1)},
                 {"grad_norm": np.array([1e-4, 1e-2, 1.0]), "saturation": np.array([0.5, 0.2, np.nan])})
    return h


def test_html_escapes_names_and_is_self_contained():
    html = render_html(hand_report(), hand_history())
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-status="error"' in html and 'data-code="vanishing_gradients"' in html
    assert "--set model.activation=relu --set model.init=he_normal" in html
    assert "data:image/png;base64," in html and 'id="heatmap"' in html
    assert not re.search(r'(src|href)="https?://', html) and "<script" not in html


def test_markdown_and_check_formats():
    report = hand_report("a|b")
    md = render_markdown(report)
    assert "a\\|b" in md and "| drop_decades | 4.123 |" in md
    text = render_check(report, "text", "warning")
    assert text.splitlines()[0].startswith("ERROR") and "FAIL" in text.splitlines()[-1]
    payload = json.loads(render_check(report, "json", "error"))
    assert payload["failed"] is True and [f["code"] for f in payload["findings"]] == ["vanishing_gradients",
                                                                                    "dead_units"]
    assert exit_code(report, "error") == 1 and exit_code(report, "warning") == 1
    healthy = HealthReport(spec={}, steps=3, findings=[Finding("loss_oscillation", "info", None, 1, 2, "m")])
    assert exit_code(healthy, "warning") == 0 and exit_code(healthy, "info") == 1 and healthy.status == "healthy"
    with pytest.raises(ValueError, match="use one of text, json, markdown"):
        render_check(report, "yaml", "error")
    assert patch_to_cli({"model.hidden": [64, 64], "model.batchnorm": True, "model.activation": "relu"}) == \
        "--set model.hidden=[64,64] --set model.batchnorm=true --set model.activation=relu"


def test_patch_to_cli_round_trips_through_the_spec_parser():
    from core.spec import parse_override

    patch = {"model.hidden": [32, 16], "train.lr": 0.003, "model.batchnorm": False, "train.optimizer": "adam"}
    items = patch_to_cli(patch).replace("--set ", "").split(" ")
    assert dict(parse_override(i) for i in items) == patch


def test_heatmap_normalisation():
    data = normalised_log_grad(hand_history())
    np.testing.assert_allclose(data[0], [-4.0, -2.0, 0.0])
    assert data.shape == (30, 3)


def test_report_round_trip(tmp_path):
    report = hand_report("dense0")
    for suffix in ("json", "md", "html"):
        report.save(tmp_path / f"r.{suffix}", history=hand_history())
    back = HealthReport.load(tmp_path / "r.json")
    assert back.to_dict() == report.to_dict()
    with pytest.raises(ValueError, match="suffix"):
        report.save(tmp_path / "r.txt")
