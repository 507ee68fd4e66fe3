"""Exploding gradients in a deep ReLU regressor under momentum SGD, tamed by clipping the global norm.

The first run blows up; gradmon's exploding_gradients finding suggests a clip_norm measured from the
run's early gradient norms, and the second run, clipped at that norm, trains (with ``--quick`` it is also
healthy).  At full length some of the clipped run's ReLU units die late in training, and gradmon says so
with a lower learning rate as the fix: clipping stops one bad batch from throwing the weights away, it does
not make a step size that is too large right.

    python examples/exploding_clipping.py [--logdir runs/examples] [--quick]
"""

import os

import numpy as np
from _common import mlp, parse, suggested

import core
import gradmon

args = parse(__doc__.splitlines()[0])
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 10))
y = np.tanh(X @ rng.normal(size=(10, 1)))


def train(label: str, clip_norm: float | None) -> gradmon.HealthReport:
    """Train the same net from the same seed; reports go to ``<logdir>/exploding-<label>``."""
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"exploding-{label}"), curvature_every=0)
    trainer = core.Trainer(mlp("relu", "he_normal", [64] * 4, inputs=10, outputs=1), loss="mse",
                           optimizer=core.SGD(0.05, momentum=0.9), batch_size=32, clip_norm=clip_norm,
                           callbacks=[monitor])
    history = trainer.fit(X, y, epochs=3 if args.quick else 10)
    report = monitor.report()
    loss = history["loss"][-1] if history["loss"] else float("nan")
    print(f"{label:<12} clip_norm={clip_norm}  final loss={loss:.4g}  stopped={history['stopped']}  "
          f"status={report.status}")
    return report


report = train("no-clipping", None)
exploding, clip = suggested(report, "exploding_gradients", "train.clip_norm", "in the unclipped run")
print(f"  {exploding.message}\n  suggested: clip_norm={clip}")
train("clipped", clip)
