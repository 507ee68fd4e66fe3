"""TensorBoard output, read back with TensorBoard's own EventAccumulator and from a real tensorboard
server on 127.0.0.1, checked against what the monitor computed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboard")

import core  # noqa: E402
import gradmon  # noqa: E402
from gradmon.sinks.tensorboard import TensorBoardSink  # noqa: E402
from tests.tbutil import (TensorBoardServer, custom_scalar_layout, read_histograms, read_scalars,  # noqa: E402
                          read_texts)
from tests.test_monitor import mlp, moons  # noqa: E402


@pytest.fixture(scope="module")
def vanishing_run(tmp_path_factory):
    """A monitored deep sigmoid run writing TensorBoard events (module-wide: several tests read it)."""
    logdir = tmp_path_factory.mktemp("tb") / "vanishing"
    X, y = moons(640)
    monitor = gradmon.Monitor(logdir=logdir, curvature_every=20, curvature_samples=128, console=False,
                              tensorboard_every=5)
    core.Trainer(mlp("sigmoid", "xavier_normal", [32] * 6), optimizer=core.SGD(0.1), batch_size=32,
                 callbacks=[monitor], progress=False).fit(X, y, epochs=5)
    return logdir, monitor


def tags_of(monitor, quantity):
    """The depth-ordered tags of a per-layer quantity, computed here from the unit order (the oracle)."""
    units = monitor.units
    width = max(2, len(str(len(units) - 1)))
    return [f"{quantity}/{u.index:0{width}d}_{u.name}" for u in units]


def test_scalars_match_what_the_monitor_computed(vanishing_run):
    logdir, monitor = vanishing_run
    scalars = read_scalars(logdir)
    h = monitor.history
    for q in ("grad_norm", "saturation"):
        tags = tags_of(monitor, q)
        for j, tag in enumerate(tags if q == "grad_norm" else tags[:-1]):  # the output layer has no activation
            recorded = h.layer(q)[:, j]
            if tag not in scalars:  # held back: the same value at every recorded step
                assert np.unique(recorded[np.isfinite(recorded)]).size == 1, tag
                continue
            events = scalars[tag]
            steps = [s for s, _ in events]
            # every 5th record from the first; the records in between are written when a finding opens
            assert set(range(0, 100, 5)) <= set(steps) and steps == sorted(set(steps))
            for step, value in events:
                i = int(np.flatnonzero(h.steps == step)[0])
                assert value == pytest.approx(h.layer(q)[i, j], rel=1e-6, abs=1e-12)
    assert tags_of(monitor, "saturation")[-1] not in scalars  # no activation: no series, no empty chart
    loss = dict(scalars["loss/train"])
    for step, value in loss.items():
        assert value == pytest.approx(h.scalar("loss")[int(np.flatnonzero(h.steps == step)[0])], rel=1e-6)
    curv = scalars["curvature/lambda_max"]
    assert [s for s, _ in curv] == [c["step"] for c in monitor.curvature]
    assert [v for _, v in curv] == pytest.approx([c["lambda_max"] for c in monitor.curvature], rel=1e-6)
    assert scalars["curvature/stability_threshold"][0][1] == pytest.approx(2 / 0.1)
    log_global = dict(scalars["log10_grad_norm/global"])
    assert set(log_global) == {s for s, _ in scalars["grad_norm/global"]}
    for step, value in scalars["grad_norm/global"]:
        assert log_global[step] == pytest.approx(np.log10(value), abs=1e-6)
    for tag, grad in zip(tags_of(monitor, "log10_grad_norm"), tags_of(monitor, "grad_norm")):
        for (s1, v1), (s2, v2) in zip(scalars[tag], scalars[grad]):
            assert s1 == s2 and v1 == pytest.approx(np.log10(v2), abs=1e-6)


def test_series_sort_in_depth_order_and_carry_descriptions(vanishing_run):
    """Eleven-plus layers: dense10 must not sort before dense2; every series says what it is."""
    from tests.tbutil import accumulator

    logdir, monitor = vanishing_run
    tags = tags_of(monitor, "grad_norm")
    assert len(tags) >= 7
    assert sorted(tags) == tags  # lexicographic order is depth order
    ea = accumulator(logdir)
    for tag in (tags[0], "loss/train", "log10_grad_norm/global", tags_of(monitor, "update_ratio")[0]):
        meta = ea.SummaryMetadata(tag)
        assert len(meta.summary_description) > 20, tag
    assert "vanishing" in ea.SummaryMetadata(tags_of(monitor, "log10_grad_norm")[0]).summary_description


def test_layout_lands_on_the_diagnosis_and_drops_empty_and_constant_charts(vanishing_run):
    import re

    from tests.tbutil import custom_scalar_categories

    logdir, monitor = vanishing_run
    report = monitor.report()
    categories = custom_scalar_categories(logdir)
    assert categories[0].startswith("diagnosis") and categories[1].startswith("layers")
    layout = custom_scalar_layout(logdir)
    titles = list(layout)
    vanishing = next(f for f in report.findings if f.code == "vanishing_gradients")
    first = titles[0]  # worst first: the vanishing-gradient chart, naming the layers and the fix
    assert first.startswith(f"{vanishing.severity.upper()} vanishing_gradients") and "--set model.activation=" in first
    assert layout[first] and all(t.startswith("log10_grad_norm/") for t in layout[first])
    assert sorted(layout[first][1:]) == layout[first][1:]  # the sick layer first, then input to output
    assert layout[first][0].endswith(f"_{vanishing.layer}")
    assert layout["grad_norm per layer (input → output)"] == tags_of(monitor, "grad_norm")
    # a sigmoid network has no dead-unit chart; constant series (the learning rate) are not charted
    assert not any(t.startswith("dead_fraction") for t in titles)
    assert "learning rate" not in titles
    # patterns are regular expressions in the plugin: each matches exactly its own tag
    scalars = read_scalars(logdir)
    from tensorboard.plugins.custom_scalar import layout_pb2

    from tests.tbutil import accumulator

    proto = layout_pb2.Layout()
    proto.ParseFromString(accumulator(logdir).Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    for category in proto.category:
        for chart in category.chart:
            for pattern in chart.multiline.tag:
                assert len([t for t in scalars if re.search(pattern, t)]) == 1, pattern


def test_findings_and_fixes_in_text_with_the_diagnosis_on_top(vanishing_run):
    logdir, monitor = vanishing_run
    texts = read_texts(logdir)
    alerts = texts["alerts/text_summary"]
    opened = monitor.report().findings
    assert len(alerts) == len(opened) + 1  # one per finding as it opened, and the diagnosis at the end
    last_step, diagnosis = alerts[-1]
    report = monitor.report()
    assert last_step == monitor.steps and diagnosis.startswith(f"## gradmon diagnosis: {report.status.upper()}")
    for f in opened:
        assert f"`{f.code}`" in diagnosis
        if f.suggestions and f.suggestions[0].patch:
            assert "--set " + next(iter(f.suggestions[0].patch)) in diagnosis
    assert "`lr = 0.1`" in diagnosis  # the constant series it did not chart
    assert any("`vanishing_gradients`" in t and "fix:" in t for _, t in alerts[:-1])
    assert "gradmon health report" in texts["report/text_summary"][-1][1]


def test_histograms_in_depth_order_with_log_magnitudes(vanishing_run):
    from gradmon.quantities.xp import histogram, log10_magnitudes

    logdir, monitor = vanishing_run
    hists = read_histograms(logdir)
    assert set(tags_of(monitor, "gradients")) <= set(hists)
    assert set(tags_of(monitor, "log10_abs_gradients")) <= set(hists)
    first, last = tags_of(monitor, "log10_abs_gradients")[0], tags_of(monitor, "log10_abs_gradients")[-1]
    # the first layer's gradients are decades smaller than the last one's: the log axis shows the gap
    assert hists[first][-1].histogram_value.max < hists[last][-1].histogram_value.min + 1
    rng = np.random.default_rng(1)
    g = rng.normal(size=500) * 10.0 ** rng.uniform(-8, -1, 500)
    g[:3] = 0.0
    h = histogram(log10_magnitudes(g))
    expected = np.log10(np.abs(g[3:]))
    assert h["num"] == 497 and (h["min"], h["max"]) == pytest.approx((expected.min(), expected.max()))


def test_real_tensorboard_server_serves_the_run(vanishing_run):
    logdir, monitor = vanishing_run
    tag = tags_of(monitor, "grad_norm")[0]
    with TensorBoardServer(logdir.parent) as tb:
        runs = tb.wait_for(lambda: tb.get_json("/data/runs"), "the run")
        assert "vanishing" in runs
        tags = tb.wait_for(lambda: tb.get_json("/data/plugin/scalars/tags").get("vanishing"), "scalar tags")
        assert tag in tags and len(tags[tag]["description"]) > 20
        served = tb.get_json("/data/plugin/scalars/scalars", run="vanishing", tag=tag)
        expected = read_scalars(logdir)[tag]
        assert [int(p[1]) for p in served] == [s for s, _ in expected]
        assert [p[2] for p in served] == pytest.approx([v for _, v in expected], rel=1e-6)
        layout = tb.wait_for(lambda: tb.get_json("/data/plugin/custom_scalars/layout"), "the layout")
        assert layout["category"][0]["title"].startswith("diagnosis")
        charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
        assert charts["grad_norm per layer (input → output)"][0] == f"^{tag}$"
        alerts = tb.get_json("/data/plugin/text/text", run="vanishing", tag="alerts/text_summary")
        assert any("vanishing_gradients" in a["text"] for a in alerts)


def test_alerts_are_escaped_markdown(tmp_path):
    sink = TensorBoardSink(tmp_path / "run")
    sink.alert(7, "dead_units", "error", "a`b<img src=x onerror=alert(1)>", "Units <b>died</b> | *all* of_them")
    sink.close()
    text = read_texts(tmp_path / "run")["alerts/text_summary"][0][1]
    assert text == ("**ERROR** `dead_units` in ``a`b<img src=x onerror=alert(1)>`` at step 7: "
                    "Units &lt;b&gt;died&lt;/b&gt; \\| \\*all\\* of\\_them")


def test_sink_survives_a_failing_writer(tmp_path):
    sink = TensorBoardSink(tmp_path / "run")
    sink.scalars(0, {"a": 1.0})
    sink.flush()
    sink._events._fh.close()  # the event file goes away under the sink
    sink.scalars(1, {"a": 2.0})  # must not raise
    assert sink.failed and "scalars" in sink.failed
    sink.scalars(2, {"a": 3.0})
    sink.close()
    assert read_scalars(tmp_path / "run")["a"] == [(0, 1.0)]  # what was written before stays readable


def test_unwritable_logdir_is_a_clear_error_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="choose another --logdir"):
        gradmon.Monitor(logdir=blocker / "logs")


def test_a_full_disk_never_stops_or_hangs_training(tmp_path):
    """A real write failure: the run's files may grow to 64 KiB only (RLIMIT_FSIZE; EFBIG instead of
    SIGXFSZ).  The event file outgrows that mid-run: training must finish on time, say once that TensorBoard
    is off, keep what was written readable, and still write report.json."""
    import resource
    import signal
    import subprocess
    import sys

    from gradmon.scenarios import scenario_path

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    logdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "gradmon", "run", str(scenario_path("healthy")), "--logdir",
                           str(logdir), "--quiet", "--set", "monitor.curvature_every=0"],
                          preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("tensorboard sink failed") == 1
    report = gradmon.HealthReport.load(logdir)
    assert report.ended == "completed" and report.steps == 500
    assert any("tensorboard" in e for e in report.extra["sink_errors"])
    losses = read_scalars(logdir)["loss/train"]
    assert losses and losses[0][0] == 0 and losses[-1][0] < 500




def test_dead_fractions_and_update_ratios_reach_tensorboard(tmp_path):
    """Batches of 32 pool two batches per dead fraction, and update ratios come every tenth record: both must
    still be written, with the values the monitor recorded at those steps."""
    X, y = moons(640)
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=0, console=False)
    core.Trainer(mlp("relu", "he_normal", [32, 32], bias_init=-0.5), optimizer=core.SGD(0.1), batch_size=32,
                 callbacks=[monitor], progress=False).fit(X, y, epochs=5)
    scalars = read_scalars(tmp_path)
    h = monitor.history
    for q in ("dead_fraction", "update_ratio"):
        for j, tag in enumerate(tags_of(monitor, q)[:2] if q == "dead_fraction" else tags_of(monitor, q)):
            events = scalars[tag]
            assert len(events) >= 9  # 100 steps, written every 10 records
            for step, value in events:
                row = int(np.flatnonzero(h.steps == step)[0])
                assert value == pytest.approx(h.layer(q)[row, j], rel=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_histogram_buckets_match_numpy_histogram(backend):
    """Histograms are computed where the values live (numpy, or a tensor's device) and only counts reach
    the host; the TensorBoard summary of either is numpy's histogram of the same values."""
    from gradmon.quantities.xp import histogram
    from gradmon.sinks.tensorboard import histogram_summary

    torch = pytest.importorskip("torch") if backend == "torch" else None
    rng = np.random.default_rng(0)
    for data in (rng.normal(size=4096), rng.exponential(size=1000) * 1e-3, np.full(10, 2.5)):
        values = torch.from_numpy(data) if torch is not None else data
        h = histogram_summary("g", histogram(values, bins=64)).value[0].histo
        counts, edges = np.histogram(data, bins=64) if np.ptp(data) > 0 else (np.array([10] + [0] * 63), None)
        assert list(h.bucket) == [0, *counts.tolist()] and h.num == data.size
        if edges is not None:
            assert np.allclose(h.bucket_limit, edges)
        assert (h.min, h.max, h.sum) == pytest.approx((data.min(), data.max(), data.sum()))
        assert h.sum_squares == pytest.approx(np.dot(data, data))


def exploding_spec(**sets):
    from core.spec import load_spec
    from gradmon.scenarios import scenario_path

    return load_spec(scenario_path("exploding"), [f"{k}={v}" for k, v in sets.items()])


def test_the_explosion_reaches_tensorboard_while_the_run_goes_on_and_after_it_aborts(tmp_path, monkeypatch):
    """The exploding scenario dies at step 7, before the cadence (every 10th record) writes again.  A reader
    of the event file while training goes on sees the steps up to each finding as it opens; after the abort,
    every recorded step is there."""
    from gradmon.run import run_spec

    seen: list[tuple[str, list[int]]] = []

    class Reader(core.Callback):  # runs after the monitor, in the same loop
        def __init__(self):
            self.count = 0

        def on_step_end(self, state):
            findings = monitor_ref[0].findings if monitor_ref else []
            if len(findings) > self.count:
                self.count = len(findings)
                seen.append((findings[-1].code, [s for s, _ in read_scalars(tmp_path).get("loss/train", [])]))

    monitor_ref: list = []
    import gradmon.run as run_module

    original = run_module.Monitor

    def capture(*args, **kwargs):  # the run's monitor, to see its findings as they open
        monitor_ref.append(original(*args, **kwargs))
        return monitor_ref[-1]
    monkeypatch.setattr(run_module, "Monitor", capture)
    result = run_spec(exploding_spec(), tmp_path, progress=False, console=False, callbacks=[Reader()])
    assert result.report.ended == "nonfinite"
    assert seen, "no finding opened during the run"
    code, steps = seen[0]
    opened_at = next(f for f in result.report.findings if f.code == code)
    assert steps and steps[-1] >= opened_at.first_step  # the reader saw the step of the finding, live
    losses = read_scalars(tmp_path)["loss/train"]
    history = result.history
    finite = np.isfinite(history.scalar("loss"))  # (the loss of the last step is Inf: nothing to chart)
    assert [s for s, _ in losses] == [int(s) for s in history.steps[finite]]  # every recorded step reached the file
    assert [v for _, v in losses] == pytest.approx(history.scalar("loss")[finite].tolist(), rel=1e-6)
    assert max(v for _, v in read_scalars(tmp_path)["log10_grad_norm/global"]) > 6  # the explosion is charted


def test_constant_series_are_held_until_they_change_and_named_when_they_never_do(tmp_path):
    from gradmon.findings import HealthReport
    from gradmon.layout import Unit

    sink = TensorBoardSink(tmp_path)
    sink.begin([Unit(name="dense0", index=0, params=("w",), weights=("w",), activation="relu")])
    for step, clip in enumerate([1.0, 1.0, 1.0, 0.5, 1.0]):
        sink.scalars(step, {"clip_coef": clip, "lr": 0.1, "loss/train": 1.0})
    sink.close(HealthReport(spec={}, steps=5, findings=[]))
    scalars = read_scalars(tmp_path)
    assert scalars["clip_coef"] == [(0, 1.0), (2, 1.0), (3, 0.5), (4, 1.0)]  # the flat start keeps its ends
    assert "lr" not in scalars  # never changed: not charted ...
    assert [s for s, _ in scalars["loss/train"]] == [0, 1, 2, 3, 4]  # (the loss is always written)
    diagnosis = read_texts(tmp_path)["alerts/text_summary"][-1][1]
    assert "`lr = 0.1`" in diagnosis  # ... and named, with its value
    assert "learning rate" not in custom_scalar_layout(tmp_path)


def test_hparams_list_what_differs_and_the_final_metrics(tmp_path):
    """The demo's two runs: HPARAMS lists only the hyperparameters that differ between them, and each
    run's validation loss, accuracy and status (read back through TensorBoard's hparams plugin data)."""
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from core.spec import apply_patch, load_spec
    from gradmon.run import hparam_keys, run_spec
    from gradmon.scenarios import FIXES, scenario_path
    from tests.tbutil import accumulator

    spec = load_spec(scenario_path("vanishing"), ["train.epochs=2", "monitor.curvature_every=0"])
    fixed = apply_patch(spec, FIXES["vanishing"])
    keys = hparam_keys(spec, fixed)
    assert keys == ["model.activation", "model.init"]
    results = {name: run_spec(s, tmp_path / name, progress=False, console=False,
                              monitor_options={"hparams": keys})
               for name, s in (("sick", spec), ("fixed", fixed))}
    for name, result in results.items():
        ea = accumulator(tmp_path / name)
        content = ea.PluginTagToContent("hparams")
        experiment = hp_metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
        assert [h.name for h in experiment.hparam_infos] == keys
        metrics = [m.name.tag for m in experiment.metric_infos]
        assert {"metrics/val_loss", "metrics/accuracy", "metrics/status"} <= set(metrics)
        start = hp_metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
        assert start.hparams["model.activation"].string_value == result.spec["model"]["activation"]
        scalars = read_scalars(tmp_path / name)
        assert scalars["metrics/val_loss"][0][1] == pytest.approx(result.train_history["val_loss"][-1], rel=1e-6)
        assert scalars["metrics/accuracy"][0][1] == pytest.approx(result.train_history["val_accuracy"][-1])
        assert scalars["metrics/status"][0][1] == {"healthy": 0, "warning": 1, "error": 2}[result.report.status]
    assert read_scalars(tmp_path / "sick")["metrics/status"][0][1] > read_scalars(tmp_path / "fixed")["metrics/status"][0][1]
    assert hparam_keys(spec) == sorted(set(hparam_keys(spec)))  # one run: what differs from the defaults
    assert "model.activation" in hparam_keys(spec) and "train.epochs" in hparam_keys(spec)


def test_spec_sets_the_scalar_and_histogram_cadence(tmp_path):
    from core.spec import load_spec
    from gradmon.run import run_spec
    from gradmon.scenarios import scenario_path

    spec = load_spec(scenario_path("healthy"), ["train.epochs=1", "monitor.curvature_every=0",
                                                 "monitor.tensorboard_every=3", "monitor.histogram_every=0"])
    result = run_spec(spec, tmp_path, progress=False, console=False)
    steps = [s for s, _ in read_scalars(tmp_path)["loss/train"]]
    assert set(range(0, result.report.steps, 3)) <= set(steps)
    assert not result.report.findings
    # the rest: records that hold the slow quantities (every 10th, weight_every) and the last one
    assert set(steps) - set(range(0, result.report.steps, 3)) <= set(range(0, 25, 10)) | {result.report.steps - 1}
    assert read_histograms(tmp_path) == {}
    with pytest.raises(ValueError, match="monitor.tensorboard_every"):
        load_spec(scenario_path("healthy"), ["monitor.tensorboard_every=0"])
