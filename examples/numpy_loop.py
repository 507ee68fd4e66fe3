"""The monitor around a hand-written numpy training loop: any loop can send the hook protocol's events.

The same two-layer ReLU network is trained twice by the loop below: once with its hidden biases started at
-4, which switches most ReLU units off for every input (gradmon reports dead_units in fc1), and once with
zero biases (healthy).

    python examples/numpy_loop.py [--logdir runs/examples] [--quick]
"""

import os

import numpy as np
from _common import moons, parse

import gradmon
from core.callbacks import LayerInfo, RunInfo, StepState

args = parse(__doc__.splitlines()[0])
X, y = moons(512)
lr, batch, epochs = 0.1, 32, 3 if args.quick else 20
layers = (LayerInfo("fc1", "dense", ("fc1.weight", "fc1.bias"), units=32, init="he_normal"),
          LayerInfo("relu", "relu", activation="relu"),
          LayerInfo("fc2", "dense", ("fc2.weight", "fc2.bias"), units=2, init="he_normal"))


def train(label: str, bias: float) -> gradmon.HealthReport:
    """Mini-batch SGD on softmax cross-entropy, written out by hand; the monitor sees every step."""
    rng = np.random.default_rng(0)
    params = {"fc1.weight": rng.normal(0, np.sqrt(2 / 2), (2, 32)), "fc1.bias": np.full(32, bias),
              "fc2.weight": rng.normal(0, np.sqrt(2 / 32), (32, 2)), "fc2.bias": np.zeros(2)}
    monitor = gradmon.Monitor(logdir=os.path.join(args.logdir, f"numpy-loop-{label}"), curvature_every=0)
    steps_per_epoch = len(X) // batch
    monitor.on_train_begin(RunInfo(layers=layers, loss="cross_entropy", optimizer="sgd", hyperparams={"lr": lr},
                                   batch_size=batch, batch_mode="mini-batch", n_train=len(X), epochs=epochs,
                                   steps_per_epoch=steps_per_epoch, framework="numpy"))
    step, loss = 0, float("nan")
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = X[idx], y[idx]
            h = xb @ params["fc1.weight"] + params["fc1.bias"]
            a = np.maximum(h, 0)
            z = a @ params["fc2.weight"] + params["fc2.bias"]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss = -np.mean(np.log(p[np.arange(len(yb)), yb]))
            dz = p.copy()
            dz[np.arange(len(yb)), yb] -= 1
            dz /= len(yb)
            da = dz @ params["fc2.weight"].T * (h > 0)
            grads = {"fc2.weight": a.T @ dz, "fc2.bias": dz.sum(0), "fc1.weight": xb.T @ da,
                     "fc1.bias": da.sum(0)}
            state = StepState(step=step, epoch=epoch, loss=loss, batch_size=len(yb), params=params, grads=grads,
                              lr=lr, activations={"fc1": h, "relu": a, "fc2": z})
            monitor.on_after_backward(state)
            state.update = {k: -lr * g for k, g in grads.items()}
            for k in params:
                params[k] = params[k] + state.update[k]
            monitor.on_step_end(state)
            step += 1
    monitor.on_train_end({"steps": step})
    report = monitor.report()
    print(f"hand-written loop, {label:<8} (fc1 bias {bias:g}): {step} steps, final loss {loss:.4f}, "
          f"status {report.status}, findings {[(f.code, f.layer) for f in report.worst('warning')]}")
    return report


train("dead", -4.0)
train("healthy", 0.0)
