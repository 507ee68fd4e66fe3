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


def test_scalars_match_what_the_monitor_computed(vanishing_run):
    logdir, monitor = vanishing_run
    scalars = read_scalars(logdir)
    h = monitor.history
    names = h.layer_names
    for q in ("grad_norm", "saturation"):
        for j, name in enumerate(names if q == "grad_norm" else names[:-1]):  # the output layer has no activation
            events = scalars[f"{q}/{name}"]
            steps = [s for s, _ in events]
            assert steps == list(range(0, 100, 5))  # every 5th record, from the first
            for step, value in events:
                i = int(np.flatnonzero(h.steps == step)[0])
                assert value == pytest.approx(h.layer(q)[i, j], rel=1e-6, abs=1e-12)
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


def test_layout_alerts_histograms_and_report_text(vanishing_run):
    logdir, monitor = vanishing_run
    layout = custom_scalar_layout(logdir)
    names = monitor.history.layer_names
    assert layout["grad_norm"] == [f"grad_norm/{n}" for n in names]
    # log-scale charts first: a linear chart of norms spanning decades is a flat line at zero
    assert list(layout)[:4] == ["log10_grad_norm", "log10_act_std", "log10 global gradient norm", "loss"]
    assert layout["log10_grad_norm"] == [f"log10_grad_norm/{n}" for n in names]
    # the activations' scale per layer, on a log scale: a forward collapse falls decades with depth
    assert layout["log10_act_std"] == [f"log10_act_std/{n}" for n in names]
    assert layout["update_ratio"] == [f"update_ratio/{n}" for n in names]
    assert "curvature/lambda_max" in layout["curvature"]
    texts = read_texts(logdir)
    alerts = [t for _, t in texts["alerts/text_summary"]]
    opened = monitor.report().findings
    assert len(alerts) == len(opened)
    assert any("`vanishing_gradients`" in a for a in alerts)
    assert "gradmon health report" in texts["report/text_summary"][-1][1]
    hists = read_histograms(logdir)
    assert {f"gradients/{n}" for n in names} <= set(hists)


def test_real_tensorboard_server_serves_the_run(vanishing_run):
    logdir, monitor = vanishing_run
    with TensorBoardServer(logdir.parent) as tb:
        runs = tb.wait_for(lambda: tb.get_json("/data/runs"), "the run")
        assert "vanishing" in runs
        tags = tb.wait_for(lambda: tb.get_json("/data/plugin/scalars/tags").get("vanishing"), "scalar tags")
        assert "grad_norm/dense0" in tags
        served = tb.get_json("/data/plugin/scalars/scalars", run="vanishing", tag="grad_norm/dense0")
        expected = read_scalars(logdir)["grad_norm/dense0"]
        assert [int(p[1]) for p in served] == [s for s, _ in expected]
        assert [p[2] for p in served] == pytest.approx([v for _, v in expected], rel=1e-6)
        layout = tb.wait_for(lambda: tb.get_json("/data/plugin/custom_scalars/layout"), "the layout")
        charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
        assert charts["grad_norm"][0] == "grad_norm/dense0"
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
    sink._events._py_recordio_writer._writer.close()  # the event file goes away under the sink
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
        for j, name in enumerate(h.layer_names[:2] if q == "dead_fraction" else h.layer_names):
            events = scalars[f"{q}/{name}"]
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
