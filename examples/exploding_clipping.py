"""Exploding gradients in a deep ReLU regressor under momentum SGD, tamed by clipping the global norm.

    python examples/exploding_clipping.py [--logdir runs/examples] [--quick]
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
for label, clip in (("no clipping", None), ("clip_norm", None)):
    if label == "clip_norm":
        clip = first.evidence.get("suggested_clip_norm", 1.0)  # noqa: F821 - the suggestion measured below
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"exploding-{label.replace(' ', '-')}"),
                              curvature_every=0)
    trainer = core.Trainer(mlp("relu", "he_normal", [64] * 4, inputs=10, outputs=1), loss="mse",
                           optimizer=core.SGD(0.05, momentum=0.9), batch_size=32, clip_norm=clip,
                           callbacks=[monitor])
    history = trainer.fit(X, y, epochs=3 if args.quick else 10)
    report = monitor.report()
    print(f"{label:<12} clip={clip}  final loss={history['loss'][-1] if history['loss'] else float('nan'):.4g}  "
          f"stopped={history['stopped']}  status={report.status}")
    if label == "no clipping":
        first = next(f for f in report.findings if f.code == "exploding_gradients")
        print(f"  {first.message}\n  suggested: {[s.patch for s in first.suggestions]}")
