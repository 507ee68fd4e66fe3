"""Curvature against the step size: full-batch gradient descent with lr above 2/λmax, and the suggested lr.

The first run's learning rate is far above the stability threshold 2/λmax and diverges; gradmon's
sharpness_above_stability finding suggests a learning rate from the curvature it measured, and the second
run, at that rate, trains.

    python examples/sharpness_lr.py [--logdir runs/examples] [--quick]
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


def train(label: str, lr: float) -> gradmon.HealthReport:
    """Full-batch gradient descent from the same seed; reports go to ``<logdir>/sharpness-<label>``."""
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"sharpness-{label}"), curvature_every=5,
                              curvature_samples=500)
    trainer = core.Trainer(mlp("tanh", "xavier_normal", [32, 32], inputs=10, outputs=1), loss="mse",
                           optimizer=core.SGD(lr), batch_size=None, callbacks=[monitor])
    history = trainer.fit(X, y, epochs=60 if args.quick else 200)
    report = monitor.report()
    lam = [c["lambda_max"] for c in report.curvature]
    print(f"{label:<10} lr={lr:<8.3g} 2/lr={2 / lr:<8.3g} λmax first/last={lam[0]:.3g}/{lam[-1]:.3g}  "
          f"loss first/last={history['loss'][0]:.4g}/{history['loss'][-1]:.4g}  status={report.status}")
    return report


report = train("too-high", 0.8)
sharp, lr = suggested(report, "sharpness_above_stability", "train.lr", "at lr 0.8")
print(f"  {sharp.message}")
train("suggested", lr)
