"""What a PyTorch loop and a notebook get: ``watcher.log_metrics``, ``watcher.should_stop``, the loss's real
name and batch size in the report, and a short ``repr`` / compact ``_repr_html_`` of a report."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

import gradmon
from gradmon.findings import Finding, HealthReport, Suggestion

torch = pytest.importorskip("torch")
import gradmon.torch  # noqa: E402
from tests.tbutil import read_scalars  # noqa: E402

F = torch.nn.functional


def data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return X, (X[:, 0] * X[:, 1] > 0).long()


def test_log_metrics_reach_tensorboard_and_the_report(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    X, y = data()
    Xv, yv = data(128, seed=1)
    watcher = gradmon.torch.watch(net, optimizer=opt, logdir=tmp_path, console=False, curvature_every=0)
    logged = []
    for epoch in range(3):
        for i in range(0, len(X), 32):
            loss = F.cross_entropy(net(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            watcher.log_loss(loss, target=y[i:i + 32])
        with torch.no_grad():
            out = net(Xv)
            val_loss, acc = F.cross_entropy(out, yv), (out.argmax(1) == yv).float().mean()
        watcher.log_metrics(val_loss=val_loss, accuracy=acc)
        logged.append(((epoch + 1) * 16, float(val_loss), float(acc)))
    report = watcher.report()
    watcher.close()
    assert [m["step"] for m in report.extra["metrics"]] == [s for s, _, _ in logged]
    assert [m["val_loss"] for m in report.extra["metrics"]] == pytest.approx([v for _, v, _ in logged])
    scalars = read_scalars(tmp_path)
    assert scalars["loss/val"] == [(s, pytest.approx(v, rel=1e-6)) for s, v, _ in logged]
    assert [v for _, v in scalars["accuracy/val"]] == pytest.approx([a for _, _, a in logged], rel=1e-6)
    saved = HealthReport.load(tmp_path)
    assert saved.spec["train"]["loss"] == "cross_entropy"  # told by the loss tensor, no loss_fn given
    assert saved.spec["train"]["batch_size"] == 32
    with pytest.raises(ValueError, match="val_loss"):
        watcher.monitor.log_metrics(val_loss="low")


@pytest.mark.parametrize("make_loss,name", [
    (lambda out, y: F.mse_loss(out, torch.nn.functional.one_hot(y, 2).float()), "mse"),
    (lambda out, y: F.binary_cross_entropy_with_logits(out, torch.nn.functional.one_hot(y, 2).float()),
     "binary_cross_entropy"),
    (lambda out, y: F.nll_loss(F.log_softmax(out, 1), y), "cross_entropy"),
    (lambda out, y: (out ** 2).mean(), "unknown"),
])
def test_the_report_names_the_loss_the_loop_used(make_loss, name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    X, y = data(64)
    watcher = gradmon.torch.watch(net, optimizer=opt, console=False, curvature_every=0, tensorboard=False)
    for i in range(0, 64, 16):
        loss = make_loss(net(X[i:i + 16]), y[i:i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    assert report.spec["train"]["loss"] == name
    assert report.spec["train"]["batch_size"] == 16  # from the activations the watcher saw


def test_should_stop_on_an_error_finding_before_nan():
    """A regressor with far too large a learning rate: the loop stops when the error finding opens, before
    any NaN, and the reason names it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.LazyLinear(64), torch.nn.ReLU())],
                              torch.nn.Linear(64, 1))
    net(torch.zeros(1, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 10, generator=g)
    y = X @ torch.randn(10, 1, generator=g)
    watcher = gradmon.torch.watch(net, optimizer=opt, console=False, curvature_every=0, tensorboard=False)
    stopped_at, losses = None, []
    for step in range(300):
        i = (step * 32) % 512
        loss = F.mse_loss(net(X[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        watcher.log_loss(loss)
        losses.append(float(loss.detach()))
        if watcher.should_stop:
            stopped_at = step
            break
    reason = watcher.should_stop
    report = watcher.report()
    watcher.close()
    errors = [f for f in report.findings if f.severity == "error"]
    assert stopped_at is not None and errors, report
    assert errors[0].code in reason and f"step {errors[0].first_step}" in reason
    assert stopped_at < 300 and np.isfinite(losses[:-1]).all()


def test_short_repr_and_compact_html():
    hostile = "<script>alert(1)</script>"
    findings = [Finding("vanishing_gradients", "error", "dense0", 10, 90, "Gradients vanish & stall.", {},
                        [Suggestion("relu", "Use ReLU.", {"model.activation": "relu"})]),
                Finding("dead_units", "warning", hostile, 3, 40, "Units died.", {"x": list(range(5000))})]
    report = HealthReport(spec={"name": "r"}, steps=100, findings=findings, layers=[{"name": f"l{i}"} for i in range(500)],
                          loss=[{"step": i, "train": 1.0} for i in range(2000)])
    text = repr(report)
    assert "\n" not in text and len(text) < 300 and "vanishing_gradients(error, dense0)" in text
    assert str(report) == text
    html = report._repr_html_()
    assert len(html) < 5000  # the top of the report, not its 2000 loss points
    assert hostile not in html and "&lt;script&gt;" in html
    assert "--set model.activation=relu" in html and html.index("vanishing_gradients") < html.index("dead_units")

    class Balance(HTMLParser):  # every opened element is closed, in order
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("br",):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack.pop() == tag

    parser = Balance()
    parser.feed(html)
    assert parser.stack == []
    assert 'data-status="error"' in html
    assert gradmon.HealthReport(spec={}, steps=0, findings=[]).__repr__().startswith("<HealthReport healthy")
