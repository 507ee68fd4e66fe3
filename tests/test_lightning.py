"""gradmon.lightning.GradmonCallback under a real ``lightning.pytorch.Trainer.fit`` on CPU: one process, a
two-process ``ddp`` strategy (Lightning's own launcher, gloo on 127.0.0.1), and stopping on an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

from gradmon.findings import HealthReport  # noqa: E402
from gradmon.history import History  # noqa: E402
from gradmon.lightning import GradmonCallback  # noqa: E402
from tests.tbutil import read_scalars  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''
import torch
import lightning.pytorch as pl


class Net(pl.LightningModule):
    def __init__(self, act="sigmoid", depth=6, width=32, lr=0.5, out=2, regression=False, std=None):
        super().__init__()
        layers, d = [], 2 if not regression else 10
        for _ in range(depth):
            layers += [torch.nn.Linear(d, width), torch.nn.Sigmoid() if act == "sigmoid" else torch.nn.ReLU()]
            d = width
        layers.append(torch.nn.Linear(d, out))
        self.net = torch.nn.Sequential(*layers)
        if std is not None:
            for m in self.net:
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, std=std)
        self.lr, self.regression = lr, regression

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        out = self(x)
        if self.regression:
            return torch.nn.functional.mse_loss(out, y), None
        return torch.nn.functional.cross_entropy(out, y), (out.argmax(1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, _ = self.loss(batch)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self.loss(batch)
        self.log("val_loss", loss, sync_dist=True)
        if acc is not None:
            self.log("val_acc", acc, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9 if self.regression else 0.0)


def loaders(n=512, seed=0, regression=False, batch=32):
    g = torch.Generator().manual_seed(seed)
    if regression:
        X = torch.randn(n, 10, generator=g)
        y = X @ torch.randn(10, 1, generator=g)
    else:
        X = torch.randn(n, 2, generator=g)
        y = (X[:, 0] * X[:, 1] > 0).long()
    ds = torch.utils.data.TensorDataset(X, y)
    train, val = torch.utils.data.random_split(ds, [n - n // 4, n // 4], generator=g)
    return (torch.utils.data.DataLoader(train, batch_size=batch),
            torch.utils.data.DataLoader(val, batch_size=batch))
'''


@pytest.fixture(scope="module")
def netmod(tmp_path_factory):
    d = tmp_path_factory.mktemp("plmod")
    (d / "plnet.py").write_text(MODULE)
    sys.path.insert(0, str(d))
    import plnet

    yield d, plnet
    sys.path.remove(str(d))


class GradNorms(pl.Callback):
    """The oracle: the global gradient norm torch computes at the same point, before the optimizer step."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


def test_trainer_fit_single_process(netmod, tmp_path):
    _, plnet = netmod
    torch.manual_seed(0)
    train, val = plnet.loaders()
    oracle = GradNorms()
    callback = GradmonCallback(console=False, tensorboard_every=1)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                         callbacks=[oracle, callback], enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    trainer.fit(plnet.Net(), train, val)
    logdir = Path(trainer.log_dir) / "gradmon"
    assert callback.logdir == logdir and (logdir / "report.json").exists()  # in the trainer's log dir
    report = HealthReport.load(logdir)
    assert report.steps == trainer.global_step == 48 and report.ended == "completed"
    assert "vanishing_gradients" in {f.code for f in report.findings}  # six sigmoid layers
    assert report.spec["train"]["loss"] == "cross_entropy" and report.spec["train"]["batch_size"] == 32
    history = History.load(logdir / "history.npz")
    np.testing.assert_allclose(history.scalar("grad_norm"), oracle.norms, rtol=1e-5)
    # validation metrics, once per epoch, as Lightning logged them
    assert [m["step"] for m in report.extra["metrics"]] == [12, 24, 36, 48]
    assert report.extra["metrics"][-1]["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert [s for s, _ in read_scalars(logdir)["loss/val"]] == [12, 24, 36, 48]
    assert callback.report.status == report.status


def test_stop_on_error_stops_the_trainer(netmod, tmp_path):
    _, plnet = netmod
    torch.manual_seed(0)
    train, val = plnet.loaders(regression=True)
    callback = GradmonCallback(tmp_path / "gm", stop_on="error", console=False)
    trainer = pl.Trainer(max_epochs=30, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False, logger=False)
    trainer.fit(plnet.Net(act="relu", depth=4, width=64, lr=0.05, out=1, regression=True), train, val)
    report = HealthReport.load(tmp_path / "gm")
    errors = [f for f in report.findings if f.severity == "error"]
    assert errors and callback.stopped and errors[0].code in callback.stopped
    assert trainer.global_step < 30 * 12  # stopped long before the end
    with pytest.raises(ValueError, match="stop_on"):
        GradmonCallback(stop_on="sometimes")


DDP_SCRIPT = '''
import json, os, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {mod!r})
import torch
import lightning.pytorch as pl
import plnet
from gradmon.lightning import GradmonCallback


class Losses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


if __name__ == "__main__":
    torch.manual_seed(0)
    train, val = plnet.loaders(n=512)
    losses = Losses()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", default_root_dir={out!r},
                         callbacks=[losses, GradmonCallback(console=False, tensorboard_every=1)],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(plnet.Net(act="relu", depth=2, lr=0.1), train, val)
    with open(os.path.join({out!r}, f"losses{{trainer.global_rank}}.json"), "w") as fh:
        json.dump({{"losses": losses.losses, "log_dir": trainer.log_dir, "world": trainer.world_size}}, fh)
'''


def test_trainer_fit_with_the_ddp_strategy_on_two_cpu_processes(netmod, tmp_path):
    """Lightning's ``ddp`` launcher re-runs the script for rank 1; both ranks train on their half of the
    data; rank 0 writes the report and the rank-averaged loss."""
    mod_dir, _ = netmod
    script = tmp_path / "fit_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), mod=str(mod_dir), out=str(tmp_path))))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"losses{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    logdir = Path(ranks[0]["log_dir"]) / "gradmon"
    report = HealthReport.load(logdir)
    assert report.extra["world_size"] == 2 and report.ended == "completed"
    assert len(list(logdir.glob("events.out.tfevents*"))) == 1  # rank 0 alone writes
    history = History.load(logdir / "history.npz")
    mean = np.mean([ranks[0]["losses"], ranks[1]["losses"]], axis=0)
    assert len(history) == len(mean) == 12  # 384 examples / 2 ranks / 32 per batch * 2 epochs
    np.testing.assert_allclose(history.scalar("loss"), mean, rtol=1e-5)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # the ranks did see different shards
