"""Cost of ``gradmon.torch.watch`` on a PyTorch training step (MLP 784-256-256-256-10, batch 128, CPU),
measured against the bare loop in the same run (interleaved repeats, best of each).  Target: <= 10%.

    python benchmarks/torch_overhead.py [--steps 400] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from step import BATCH, torch_setup  # noqa: E402


def time_loop(steps: int, watch: bool) -> float:
    import torch

    import gradmon.torch

    model, opt, X, y = torch_setup(0)
    watcher = gradmon.torch.watch(model, optimizer=opt, curvature_every=0, console=False) if watch else None

    def run(n: int) -> None:
        for i in range(n):
            start = (i % 40) * BATCH
            loss = torch.nn.functional.cross_entropy(model(X[start:start + BATCH]), y[start:start + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watcher is not None:
                watcher.log_loss(loss)

    run(20)
    t0 = time.perf_counter()
    run(steps)
    elapsed = (time.perf_counter() - t0) / steps
    if watcher is not None:
        watcher.close()
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bare, watched = [], []
    for _ in range(args.repeats):
        bare.append(time_loop(args.steps, False))
        watched.append(time_loop(args.steps, True))
    out = {"bare_ms": 1e3 * min(bare), "watched_ms": 1e3 * min(watched), "overhead": min(watched) / min(bare) - 1}
    print(f"bare torch step   {out['bare_ms']:.3f} ms\nwith gradmon      {out['watched_ms']:.3f} ms\n"
          f"overhead          {100 * out['overhead']:+.1f}%  (target <= 10%)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
