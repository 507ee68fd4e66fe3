"""Training-step throughput of core against PyTorch CPU, measured in the same run.

MLP 784-256-256-256-10 (ReLU, He init), batch 128, float32, cross-entropy, plain SGD; one epoch is 40
steps over a shuffled synthetic set.  Both sides do the same work per step: gather the batch, forward,
loss, backward, update.  Prints steps/s of each and the ratio core/torch (>1 means core is faster).

    python benchmarks/step.py [--steps 200] [--repeats 10] [--threads 2] [--json out.json]

The machine is shared and noisy: both sides run interleaved, many short times, and the best of each is
compared (noise only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import core  # noqa: E402

SIZES = (784, 256, 256, 256, 10)
BATCH = 128


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], size=n)


def core_model(seed: int = 0) -> core.Sequential:
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(core.Dense(SIZES[i], SIZES[i + 1], init="he_normal"))
        if i < len(SIZES) - 2:
            layers.append(core.ReLU())
    return core.Sequential(layers, seed=seed, dtype="float32")


class Clock(core.Callback):
    """Times the training steps themselves: from the start of training to the end of the last epoch (the
    end-of-run work, such as writing reports, is not a per-step cost).  It watches epochs only, so the
    trainer builds no per-step payload for it: a bare run stays bare."""

    def on_train_begin(self, run):
        self.start = self.last = time.perf_counter()
        self.steps_per_epoch = run.steps_per_epoch
        self.epochs = 0

    def on_epoch_end(self, epoch, logs):
        self.last = time.perf_counter()
        self.epochs += 1

    @property
    def seconds_per_step(self) -> float:
        return (self.last - self.start) / (self.epochs * self.steps_per_epoch)


def time_core(steps: int, callbacks=(), seed: int = 0) -> float:
    """Seconds per training step of core (one timed fit after a warm-up epoch)."""
    X, y = make_data(BATCH * 40)
    clock = Clock()
    trainer = core.Trainer(core_model(seed), optimizer=core.SGD(0.01), batch_size=BATCH, progress=False,
                           callbacks=[*callbacks, clock])
    trainer.fit(X[: BATCH * 4], y[: BATCH * 4], epochs=1)  # warm-up: buffers, BLAS threads
    trainer.fit(X, y, epochs=max(1, steps // 40))
    return clock.seconds_per_step


def torch_setup(seed: int = 0):
    """The benchmark MLP in PyTorch with plain SGD, and the data as tensors."""
    import torch

    torch.manual_seed(seed)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    Xn, yn = make_data(BATCH * 40)
    return model, opt, torch.from_numpy(Xn), torch.from_numpy(yn)


#: the small CNN of the torch benchmarks: examples/mnist's network, narrower (28x28 inputs, batch 128)
CNN_IMAGE = (1, 28, 28)


def torch_cnn_setup(seed: int = 0):
    """A small CNN written as pytorch/examples writes it (functional ReLUs and pooling, dropout) with plain
    SGD, and 40 batches of synthetic 28x28 images."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, 1)
            self.conv2 = nn.Conv2d(16, 32, 3, 1)
            self.dropout = nn.Dropout(0.25)
            self.fc1 = nn.Linear(32 * 12 * 12, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(self.dropout(x), 1)
            return self.fc2(F.relu(self.fc1(x)))

    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.normal(size=(BATCH * 40, *CNN_IMAGE)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, size=BATCH * 40))
    return model, opt, X, y


def time_torch(steps: int, seed: int = 0) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    model, opt, X, y = torch_setup(seed)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> None:
        order = torch.randperm(len(X))
        for start in range(0, len(X), BATCH):
            idx = order[start:start + BATCH]
            xb, yb = X[idx], y[idx]
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()
    epochs = max(1, steps // 40)
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return (time.perf_counter() - t0) / (epochs * 40)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="BLAS / torch threads for both sides")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    results: dict = {"core_s": [], "torch_s": []}
    with threadpool_limits(limits=args.threads):
        for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
            results["core_s"].append(time_core(args.steps))
            t = time_torch(args.steps)
            if t is not None:
                results["torch_s"].append(t)
    core_best = min(results["core_s"])
    out = {"core_steps_per_s": 1.0 / core_best, "core_ms_per_step": 1e3 * core_best}
    print(f"core : {1e3 * core_best:7.3f} ms/step  {1.0 / core_best:8.1f} steps/s")
    if results["torch_s"]:
        torch_best = min(results["torch_s"])
        out.update(torch_steps_per_s=1.0 / torch_best, torch_ms_per_step=1e3 * torch_best,
                   ratio=torch_best / core_best, torch_version=torch.__version__)
        print(f"torch: {1e3 * torch_best:7.3f} ms/step  {1.0 / torch_best:8.1f} steps/s  (torch {torch.__version__})")
        print(f"core/torch throughput ratio: {torch_best / core_best:.3f}  (target >= 1.1)")
    else:
        print("torch not installed: install torch==2.13.0 to compare")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
