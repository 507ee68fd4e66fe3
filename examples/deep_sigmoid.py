"""A deep sigmoid network stops learning (vanishing gradients); ReLU + He init fixes it.

    python examples/deep_sigmoid.py [--logdir runs/examples] [--quick]
"""

import os

from _common import mlp, moons, parse, summary

import core
import gradmon

args = parse(__doc__.splitlines()[0])
X, y = moons()
epochs = 5 if args.quick else 20
for label, act, init in (("sigmoid + Xavier", "sigmoid", "xavier_normal"), ("ReLU + He", "relu", "he_normal")):
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"deep-{act}"), curvature_every=0)
    trainer = core.Trainer(mlp(act, init, [64] * 10), optimizer=core.SGD(0.05), batch_size=32, callbacks=[monitor])
    summary(label, monitor, trainer.fit(X, y, epochs=epochs))
