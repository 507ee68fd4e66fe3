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


def test_layout_alerts_histograms_and_report_text(vanishing_run):
    logdir, monitor = vanishing_run
    layout = custom_scalar_layout(logdir)
    names = monitor.history.layer_names
    assert layout["grad_norm"] == [f"grad_norm/{n}" for n in names]
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


def test_sink_survives_a_failing_writer(tmp_path):
    sink = TensorBoardSink(tmp_path / "run")
    sink.scalars(0, {"a": 1.0})

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    sink._writer._get_file_writer = broken
    sink.scalars(1, {"a": 2.0})  # must not raise
    assert sink.failed and "No space left" in sink.failed
    sink.scalars(2, {"a": 3.0})
    sink.close()


def test_unwritable_logdir_is_a_clear_error_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="choose another --logdir"):
        gradmon.Monitor(logdir=blocker / "logs")


def test_monitor_keeps_going_when_tensorboard_fails(tmp_path):
    X, y = moons(320)
    monitor = gradmon.Monitor(logdir=tmp_path, curvature_every=0, console=False)
    trainer = core.Trainer(mlp("relu", "he_normal", [16]), batch_size=32, callbacks=[monitor], progress=False)

    class Sabotage(core.Callback):
        def on_after_backward(self, state):
            if state.step == 3 and monitor.tb is not None:
                def broken(*a, **k):
                    raise OSError(28, "No space left on device")
                monitor.tb._writer._get_file_writer = broken

    trainer.callbacks = core.CallbackList([Sabotage(), monitor])
    history = trainer.fit(X, y, epochs=3)
    assert history["steps"] == 30 and history["stopped"] is None
    report = gradmon.HealthReport.load(tmp_path)
    assert any("tensorboard" in e for e in report.extra["sink_errors"])
    assert (tmp_path / "report.html").exists()
