"""Curvature against the step size: full-batch gradient descent with lr above 2/λmax, and the suggested lr.

    python examples/sharpness_lr.py [--logdir runs/examples] [--quick]
"""

import os

import numpy as np
from _common import mlp, parse

import core
import gradmon

args = parse(__doc__.splitlines()[0])
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 10))
y = np.tanh(X @ rng.normal(size=(10, 1)))
lr = 0.8
for attempt in range(2):
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"sharpness-lr{lr:g}"), curvature_every=5,
                              curvature_samples=500)
    trainer = core.Trainer(mlp("tanh", "xavier_normal", [32, 32], inputs=10, outputs=1), loss="mse",
                           optimizer=core.SGD(lr), batch_size=None, callbacks=[monitor])
    history = trainer.fit(X, y, epochs=60 if args.quick else 200)
    report = monitor.report()
    lam = [c["lambda_max"] for c in report.curvature]
    print(f"lr={lr:<6g} 2/lr={2 / lr:<7.3g} λmax first/last={lam[0]:.3g}/{lam[-1]:.3g}  "
          f"final loss={history['loss'][-1]:.4g}  status={report.status}")
    sharp = [f for f in report.findings if f.code == "sharpness_above_stability"]
    if not sharp:
        break
    print(f"  {sharp[0].message}")
    lr = next(s.patch["train.lr"] for s in sharp[0].suggestions if s.code == "lower_lr")
