"""Cost of ``gradmon.torch.watch`` on a PyTorch training step, at the monitor's default cadence (every step
measured; curvature off: no probe), for two models on the CPU with SGD, batch 128:

- ``mlp``: the benchmark MLP 784-256-256-256-10 with ``nn.ReLU`` modules (target: <= 5% per step);
- ``cnn``: a small examples/mnist-style CNN with functional ReLUs and pooling (target: <= 3% per step).

For each model a bare loop and a watched loop (same model, same data) are built once and timed in many short
interleaved blocks (alternating which goes first), so that load from other processes on a shared machine
hits both alike.  Estimates of the overhead: the median over adjacent (bare, watched) pairs of their wall
time ratio, which stays right when the machine switches between a fast and a slow mode; best block against
best block; the same pairing on the process's CPU time (less sensitive to other processes taking the
cores); and the watcher's own clock (``watcher.hook_seconds``) as a share of the best bare step.  It also
prints what crossed to the host per step (gradmon's ``HOST_TRANSFERS`` counter).

    python benchmarks/torch_overhead.py [--models mlp,cnn] [--blocks 80] [--steps 10] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from paired import paired_overhead  # noqa: E402
from step import BATCH, torch_cnn_setup, torch_setup  # noqa: E402

MODELS = {"mlp": (torch_setup, 0.05), "cnn": (torch_cnn_setup, 0.03)}


class Loop:
    """One training loop over the benchmark data, optionally watched; :meth:`block` times ``n`` steps."""

    def __init__(self, model: str, watched: bool) -> None:
        import torch

        import gradmon.torch

        self.torch = torch
        self.model, self.opt, self.X, self.y = MODELS[model][0](0)
        self.watcher = gradmon.torch.watch(self.model, optimizer=self.opt, curvature_every=0, console=False) \
            if watched else None
        self.i = 0

    def block(self, n: int) -> tuple[float, float, float]:
        """Wall seconds per step over ``n`` steps, CPU seconds per step (every thread of the process), and
        seconds per step inside the watcher's hooks."""
        F = self.torch.nn.functional
        model, opt, X, y, watcher = self.model, self.opt, self.X, self.y, self.watcher
        hooks0 = watcher.hook_seconds if watcher is not None else 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            start = (self.i % 40) * BATCH
            self.i += 1
            loss = F.cross_entropy(model(X[start:start + BATCH]), y[start:start + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watcher is not None:
                watcher.log_loss(loss)
        elapsed, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
        hooks = ((watcher.hook_seconds - hooks0) / n) if watcher is not None else 0.0
        return elapsed, cpu, hooks


def measure(model: str, blocks: int, steps: int) -> dict:
    from gradmon.quantities.xp import HOST_TRANSFERS

    bare, watched = Loop(model, False), Loop(model, True)
    for loop in (bare, watched):  # warm up: allocator, first-step setup, the watcher's trace of the forward
        loop.block(30)
    HOST_TRANSFERS.reset()
    wall: dict[str, list[float]] = {"bare": [], "watched": []}
    cpu: dict[str, list[float]] = {"bare": [], "watched": []}
    hooks: list[float] = []
    for b in range(blocks):
        for loop in ((bare, watched) if b % 2 == 0 else (watched, bare)):
            side = "bare" if loop is bare else "watched"
            w, c, h = loop.block(steps)
            wall[side].append(w)
            cpu[side].append(c)
            if loop is watched:
                hooks.append(h)
    recorded = blocks * steps
    watched.watcher.close()
    walls, cpus = paired_overhead(wall["watched"], wall["bare"]), paired_overhead(cpu["watched"], cpu["bare"])
    return {
        "model": model, "target": MODELS[model][1], "units": len(watched.watcher.monitor.units),
        "parameters": sum(p.numel() for p in watched.model.parameters()),
        "bare_ms": 1e3 * min(wall["bare"]), "watched_ms": 1e3 * min(wall["watched"]),
        "overhead_paired_median": walls["paired_median"], "overhead_paired_iqr": walls["paired_iqr"],
        "overhead_best": walls["best_vs_best"], "overhead_cpu_paired_median": cpus["paired_median"],
        "hooks_ms": 1e3 * min(hooks), "hooks_median_ms": 1e3 * statistics.median(hooks),
        "hooks_share": min(hooks) / min(wall["bare"]),
        "host_transfers_per_step": HOST_TRANSFERS.calls / recorded,
        "host_elements_per_step": HOST_TRANSFERS.elements / recorded,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--blocks", type=int, default=80, help="interleaved timing blocks per side")
    ap.add_argument("--steps", type=int, default=10, help="training steps per block")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "blocks": args.blocks, "steps_per_block": args.steps, "models": {}}
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        r = out["models"][model] = measure(model, args.blocks, args.steps)
        q1, q3 = r["overhead_paired_iqr"]
        print(f"{model}: {r['units']} units, {r['parameters']:,} parameters ({args.threads} torch threads, "
              f"{args.blocks} blocks of {args.steps} steps per side)\n"
              f"  bare step               {r['bare_ms']:.3f} ms (best block); with gradmon {r['watched_ms']:.3f} ms\n"
              f"  overhead, paired median {100 * r['overhead_paired_median']:+.1f}%  (quartiles {100 * q1:+.1f}% "
              f"to {100 * q3:+.1f}%; target <= {100 * r['target']:.0f}%)\n"
              f"  overhead, best blocks   {100 * r['overhead_best']:+.1f}%\n"
              f"  overhead, CPU time      {100 * r['overhead_cpu_paired_median']:+.1f}%  (paired median)\n"
              f"  inside gradmon's hooks  {r['hooks_ms']:.3f} ms per step (median {r['hooks_median_ms']:.3f}) = "
              f"{100 * r['hooks_share']:.1f}% of a bare step\n"
              f"  to the host per step    {r['host_transfers_per_step']:.2f} transfers, "
              f"{r['host_elements_per_step']:.1f} values")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
