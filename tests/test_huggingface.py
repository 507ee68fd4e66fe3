"""gradmon.huggingface.GradmonCallback under a real ``transformers.Trainer`` on CPU, with a tiny randomly
initialised BERT built from a config (nothing downloaded).  The oracle is the Trainer itself: it logs the
pre-clip global gradient norm and the loss of every step (``logging_steps=1``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the transformers extra is not installed")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")

from gradmon.findings import HealthReport  # noqa: E402
from gradmon.history import History  # noqa: E402
from gradmon.huggingface import GradmonCallback  # noqa: E402
from tests.tbutil import read_scalars  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the label is whether token 7 occurs (learnable by a tiny model)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, 12), generator=g)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "labels": self.labels[i]}


class Logged(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


def tiny_bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def args_for(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                disable_tqdm=True, seed=0, max_grad_norm=0.5)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_trainer_train_with_a_tiny_bert(tmp_path):
    logged = Logged()
    callback = GradmonCallback(console=False, tensorboard_every=1)
    trainer = transformers.Trainer(model=tiny_bert(), args=args_for(tmp_path, max_steps=24, eval_strategy="steps",
                                                                     eval_steps=12),
                                   train_dataset=Tokens(256, 0), eval_dataset=Tokens(64, 1),
                                   callbacks=[logged, callback])
    trainer.train()
    logdir = tmp_path / "gradmon"
    report = HealthReport.load(logdir)
    assert report.steps == 24 and report.ended == "completed"
    assert report.spec["train"]["loss"] == "cross_entropy" and report.spec["train"]["batch_size"] == 8
    history = History.load(logdir / "history.npz")
    steps = [(s, log) for s, log in logged.logs if "grad_norm" in log]
    assert len(steps) == 24
    # the norms the Trainer computed before clipping at 0.5, and the loss it logged, step by step
    np.testing.assert_allclose(history.scalar("grad_norm"), [log["grad_norm"] for _, log in steps], rtol=1e-4)
    np.testing.assert_allclose(history.scalar("loss"), [log["loss"] for _, log in steps], atol=1e-4, rtol=1e-4)
    assert max(log["grad_norm"] for _, log in steps) > 0.5  # clipping did happen, and did not hide the norm
    assert len(report.layers) >= 10  # attention, intermediate and output projections of both layers...
    evals = [log for _, log in logged.logs if "eval_loss" in log]
    assert [m["val_loss"] for m in report.extra["metrics"]] == pytest.approx([e["eval_loss"] for e in evals])
    assert [s for s, _ in read_scalars(logdir)["loss/val"]] == [12, 24]
    assert callback.report.status == report.status


def test_stop_on_error_stops_training(tmp_path):
    """A learning rate of 50 blows the tiny BERT up: the callback stops the Trainer at the error finding."""
    callback = GradmonCallback(console=False, stop_on="error")
    trainer = transformers.Trainer(model=tiny_bert(), args=args_for(tmp_path, max_steps=200, learning_rate=50.0,
                                                                     max_grad_norm=0.0, optim="sgd"),
                                   train_dataset=Tokens(256, 0), callbacks=[callback])
    trainer.train()
    report = HealthReport.load(tmp_path / "gradmon")
    errors = [f for f in report.findings if f.severity == "error"]
    assert errors and callback.stopped and trainer.state.global_step < 200
    assert any(f.code in callback.stopped for f in errors)
