"""Dying ReLU: negative initial biases switch most units off for good; LeakyReLU or zero biases keep them alive.

    python examples/dying_relu.py [--logdir runs/examples] [--quick]
"""

import os

from _common import mlp, moons, parse, summary

import core
import gradmon

args = parse(__doc__.splitlines()[0])
X, y = moons()
for label, act, bias in (("ReLU, bias -3", "relu", -3.0), ("LeakyReLU, bias -3", "leaky_relu", -3.0),
                         ("ReLU, bias 0", "relu", 0.0)):
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"dying-{act}-{bias:g}"), curvature_every=0)
    trainer = core.Trainer(mlp(act, "he_normal", [64] * 3, bias_init=bias), optimizer=core.SGD(0.1),
                           batch_size=32, callbacks=[monitor])
    summary(label, monitor, trainer.fit(X, y, epochs=5 if args.quick else 20))
