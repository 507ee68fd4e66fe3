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
from gradmon.report import plots

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


def test_run_names_only_a_report_it_wrote(tmp_path, monkeypatch, capsys):
    """A resumed run's --logdir holds a stale report.html: when this run cannot write its own, the path
    printed is the report.json it did write, not the stale file."""
    spec = tmp_path / "s.toml"
    spec.write_text('[data]\nname = "moons"\nn_samples = 200\n[model]\nhidden = [8]\n[train]\nepochs = 1\n'
                    '[monitor]\ncurvature_every = 0\n')
    logdir = tmp_path / "out"
    assert main(["run", str(spec), "--logdir", str(logdir), "-q"]) == 0
    assert f"report:      {logdir / 'report.html'}\n" in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setitem(__import__("gradmon.findings").findings.RENDERERS, ".html", broken)
    assert (logdir / "report.html").exists()  # stale from the first run
    assert main(["run", str(spec), "--logdir", str(logdir), "-q", "--resume", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert f"report:      {logdir / 'report.json'} (report.html could not be written: see above)" in out
    assert str(logdir / "report.html") not in out


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
    assert "a\\|b" in md and "| drop\\_decades | 4.123 |" in md
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


def test_report_round_trip(tmp_path):
    report = hand_report("dense0")
    for suffix in ("json", "md", "html"):
        report.save(tmp_path / f"r.{suffix}", history=hand_history())
    back = HealthReport.load(tmp_path / "r.json")
    assert back.to_dict() == report.to_dict()
    with pytest.raises(ValueError, match="suffix"):
        report.save(tmp_path / "r.txt")


# -- heatmap, plots, escaping, JSON nulls (audit 5 A7-A9, B1, B5, C5-C7; audit 3 B2) ---------------------------
NASTY = ["fc$_1$", "head$\\foo$", "<script>alert(1)</script>", "a`b``c", "x|y"]


def shrinking_history(steps=40, names=("dense0", "dense2", "dense4")):
    """Healthy late training: the depth profile stays [1e-4, 1e-2, 1] x scale while every norm shrinks 100x
    uniformly over the run."""
    h = History(list(names), capacity=64)
    base = np.logspace(-4, 0, len(names))
    for step in range(steps):
        scale = 10.0 ** (-2.0 * step / (steps - 1))
        norms = base * scale
        h.append(step, {"loss": 1.0 / (step + 1), "grad_norm": float(np.sqrt((norms ** 2).sum()))},
                 {"grad_norm": norms, "saturation": np.array([0.5, 0.2, np.nan])[:len(names)],
                  "dead_fraction": np.linspace(0, 1, len(names))})
    return h


def test_heatmap_normalises_per_step_so_uniformly_shrinking_gradients_do_not_read_as_vanishing():
    h = shrinking_history()
    assert h.layer("grad_norm")[-1, -1] == pytest.approx(0.01)  # the largest layer really shrank 100x
    data = plots.normalised_log_grad(h)
    assert data.shape == (40, 3)
    np.testing.assert_allclose(data[0], [-4.0, -2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(data[-1], [-4.0, -2.0, 0.0], atol=1e-9)  # global normalisation gives [-6, -4, -2]
    assert np.abs(data - data[0]).max() < 1e-9


def test_heatmap_shows_the_global_norm_on_a_log_strip_zero_gradients_in_their_own_colour_and_a_fixed_range():
    h = shrinking_history()
    fig = plots.heatmap_figure(h)
    strip, heat = fig.axes[0], fig.axes[1]
    assert strip.get_yscale() == "log"
    line = strip.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), h.scalar("grad_norm"))  # the uniform 100x fall is visible
    assert heat.get_shared_x_axes().joined(strip, heat)
    assert heat.get_xlim() == (-0.5, 39.5)  # cells centred on their steps
    mesh = heat.collections[0]
    assert mesh.get_clim() == (plots.HEATMAP_FLOOR, 0.0)
    assert "fixed range" in fig.axes[2].get_ylabel()
    plt = plots._pyplot()
    plt.close(fig)

    other = History(["dense0", "dense2", "dense4"], capacity=8)
    for step in (0, 10, 20):
        other.append(step, {"loss": 1.0, "grad_norm": 1.0}, {"grad_norm": np.array([0.0, 1e-9, 1.0])})
    other.append(30, {"loss": float("nan"), "grad_norm": float("nan")}, {"grad_norm": np.full(3, np.nan)})
    cells = plots.gradient_cells(other)
    assert (cells[:3, 0] == plots.CELL_ZERO).all() and (cells[:3, 1:] == 0).all()
    assert (cells[3] == plots.CELL_NONFINITE).all()
    fig = plots.heatmap_figure(other)
    heat = fig.axes[1]
    assert heat.collections[0].get_clim() == (plots.HEATMAP_FLOOR, 0.0)  # the same range for another run
    assert heat.get_xlim() == (-5.0, 35.0)
    legend = [t.get_text() for t in heat.get_legend().get_texts()]
    assert legend == ["exactly zero gradient", "NaN or Inf gradient"]
    plt.close(fig)
    assert np.isnan(plots.normalised_log_grad(other)[0, 0])  # zero is not a value on the colour scale
    unrecorded = History(["dense0"], capacity=4)  # a loop that records neither the loss nor the global norm
    unrecorded.append(0, {}, {"grad_norm": np.array([np.nan])})
    unrecorded.append(1, {}, {"grad_norm": np.array([np.inf])})
    assert list(plots.gradient_cells(unrecorded)[:, 0]) == [plots.CELL_MISSING, plots.CELL_NONFINITE]
    np.testing.assert_allclose(plots.step_edges(np.array([0, 10, 20, 30])), [-5, 5, 15, 25, 35])


@pytest.mark.parametrize("name", NASTY)
def test_plot_labels_are_literal_whatever_the_layer_name(name):
    h = shrinking_history(names=("dense0", name, "out"))
    fig = plots.heatmap_figure(h)
    label = [t for t in fig.axes[1].get_yticklabels() if "dense0" not in t.get_text()][0]
    shown, is_math = label._preprocess_math(label.get_text())
    assert (shown, is_math) == (name, False)
    plots._pyplot().close(fig)
    report = hand_report(name)
    figures = plots.all_plots(report, h)  # must not raise (a "$\\foo$" once raised ValueError)
    assert set(figures) == {"heatmap", "activations", "loss", "curvature"}
    import matplotlib

    with matplotlib.rc_context({"text.usetex": True}):  # a user's matplotlibrc: names still go in literally
        assert set(plots.all_plots(report, h)) == set(figures)


def test_many_layers_stay_distinguishable():
    styles = plots.layer_styles(12)
    assert len(set(map(str, styles))) == 12
    assert all(styles[j] != styles[j + 1] and styles[j][1] != styles[j + 1][1] for j in range(11))
    assert len({s[1] for s in plots.layer_styles(3)}) == 3  # equal series (two dead layers) do not hide


def test_curvature_plot_numbers_and_labels():
    momentum = HealthReport(spec={"train": {"optimizer": "momentum", "momentum": 0.9, "lr": 0.1}}, steps=10,
                            findings=[], curvature=[{"step": 0, "lambda_max": 5.0}, {"step": 5, "lambda_max": 50.0}])
    steps, lam, thr = plots.curvature_series(momentum)
    np.testing.assert_allclose(thr, [38.0, 38.0])
    assert plots.threshold_label(momentum, thr) == "stability threshold 2(1+β)/lr = 38, β = 0.9"
    sgd = HealthReport(spec={"train": {"optimizer": "sgd", "lr": 0.4}}, steps=10, findings=[],
                       curvature=[{"step": 0, "lambda_max": 3.0, "threshold": 5.0}])
    assert plots.threshold_label(sgd, plots.curvature_series(sgd)[2]) == "stability threshold 2/lr = 5"
    adam = HealthReport(spec={"train": {"optimizer": "adam", "lr": 1e-3}}, steps=10, findings=[],
                        curvature=[{"step": 0, "lambda_max": 3.0, "threshold": None}])
    assert np.isnan(plots.curvature_series(adam)[2]).all()
    assert "adam" in plots.no_threshold_note(adam) and "2/lr" in plots.no_threshold_note(adam)
    for report in (momentum, sgd, adam):
        assert plots.curvature_plot(report).startswith(b"\x89PNG")


def test_html_has_every_plot_with_a_caption_and_dashes_for_quantities_that_do_not_apply():
    report = hand_report("dense0")
    html = render_html(report, shrinking_history())
    for ident in ("heatmap", "loss", "activations", "curvature"):
        png = rf'<img id="{ident}" alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]{{200}}'
        assert re.search(png, html), ident
    assert html.count("<figcaption>") == 4
    curvature = re.search(r"<th>stability bound</th>.*?</table>", html).group(0)
    assert "<td>30</td><td>20</td>" in curvature  # λmax and the threshold it is compared with
    layers = re.search(r'<table id="layers">(.*?)</table>', html).group(1)
    assert "nan" not in layers.lower() and "<td>–</td>" in layers
    assert "nan" not in render_markdown(report).split("## Spec")[0].lower()


def test_html_escapes_nasty_names_everywhere():
    for name in NASTY:
        h = shrinking_history(names=("dense0", name, "out"))
        html = render_html(hand_report(name), h)
        assert "<script>alert" not in html and "<script" not in html
        assert name.replace("<", "&lt;").replace(">", "&gt;") in html.replace("&#x27;", "'").replace("&quot;", '"')
        assert html.count('<img id="') == 4


def test_markdown_escapes_html_and_markdown_in_names_messages_and_evidence():
    from gradmon.report.markdown import md_code

    markdown = pytest.importorskip("markdown")
    name = "a`b``c<img src=x onerror=alert(1)>|*x*"
    report = hand_report(name)
    report.findings[1].message = "Gradients <b>vanish</b> | in " + name
    report.findings[1].evidence["note"] = "<img src=y onerror=alert(2)> `tick` | pipe"
    md = render_markdown(report)
    body = md.split("## Spec")[0].replace(md_code(name), "")  # raw only in code spans and the spec's code block
    assert "<b>" not in body and "<img" not in body
    html = markdown.markdown(md, extensions=["tables"])
    assert "<img" not in html and "<b>vanish" not in html
    assert f"<code>{name.replace('<', '&lt;').replace('>', '&gt;')}</code>" in html  # the code span holds
    assert "Gradients &lt;b&gt;vanish&lt;/b&gt; | in" in html
    evidence_row = [r for r in html.split("<tr>") if "note" in r][0]
    assert evidence_row.count("<td>") == 2 and "`tick` | pipe" in evidence_row  # the pipe did not split it
    assert "<em>" not in html
    report.findings[0].message = "# not a heading\n1. nor a list"
    html = markdown.markdown(render_markdown(report), extensions=["tables"])
    assert html.count("<h1>") == 1 and "<ol>" not in html and "# not a heading 1. nor a list" in html


def test_md_helpers():
    from gradmon.report.markdown import md_code, md_text

    assert md_code("dense0") == "`dense0`"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``"
    assert md_text("- item") == "\\- item" and md_text("1. one") == "1\\. one" and md_text("# h") == "\\# h"
    assert md_text("a_b*c<d>&") == "a\\_b\\*c&lt;d&gt;&amp;"
    assert md_text("4.123") == "4.123" and md_text("-5") == "-5" and md_text("---") == "\\---"


def test_report_json_uses_null_for_values_that_do_not_apply(tmp_path):
    report = hand_report("dense0")
    report.findings[1].evidence["loss"] = float("inf")
    report.curvature[0]["trace"] = float("nan")
    path = report.save(tmp_path / "report.json")

    def no_constants(token):
        raise AssertionError(f"non-finite number {token} in report.json")

    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert data["layers"][0]["dead_fraction"]["median"] is None
    assert data["findings"][1]["evidence"]["loss"] is None and data["curvature"][0]["trace"] is None
    assert '"nan"' not in path.read_text() and '"inf"' not in path.read_text()
    back = HealthReport.load(path)
    assert back.to_dict() == report.to_dict()
    assert back.layers[0]["dead_fraction"]["median"] is None and "<td>–</td>" in render_html(back)


def test_mistyped_numbers_in_a_report_json_render_as_text_not_a_crash(tmp_path):
    """A report.json edited by hand (strings where numbers belong) still renders: the value is shown as
    written, never a traceback."""
    old = hand_report("dense0").to_dict()
    old["layers"][0]["dead_fraction"]["median"] = "nan"
    old["findings"][1]["evidence"]["loss"] = "inf"
    old["curvature"][0]["trace"] = "nan"
    old["loss"][3]["train"] = "-inf"
    (tmp_path / "report.json").write_text(json.dumps(old))
    loaded = HealthReport.load(tmp_path)
    assert loaded.layers[0]["name"] == "dense0" and loaded.findings[1].evidence["loss"] == "inf"
    html = render_html(loaded)
    assert "dense0" in html and "<td>nan</td>" in html
    assert "dense0" in render_markdown(loaded)
    check = gradmon_cli("check", str(tmp_path), "--format", "json")
    assert check.returncode == 1 and json.loads(check.stdout)["status"] == "error"
    assert gradmon_cli("report", str(tmp_path)).returncode == 0 and (tmp_path / "report.html").exists()


@pytest.mark.parametrize("content,needle", [
    ("[]", "must be a JSON object, got a list"),
    ('{"schema": "gradmon.report/1", "findings": {"a": 1}}', "'findings' must be a list"),
    ('{"schema": "gradmon.report/1", "findings": [{"code": "dead_units"}]}', "finding 0 has no 'severity'"),
    ('{"schema": "gradmon.report/1", "findings": [{"code": "dead_units", "severity": "fatal", "first_step": 1,'
     ' "last_step": 2}]}', "unknown severity 'fatal'"),
    ('{"schema": "other/2"}', "not a gradmon report"),
])
def test_malformed_report_json_is_one_line_naming_the_problem(tmp_path, capsys, content, needle):
    (tmp_path / "report.json").write_text(content)
    for command in (["check", str(tmp_path)], ["report", str(tmp_path)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err and str(tmp_path / "report.json") in err
