"""Cost of ``gradmon.torch.watch`` on a PyTorch training step (MLP 784-256-256-256-10, batch 128, CPU, SGD),
at the monitor's default cadence (every step measured; curvature off: no probe).  Target: <= 10%.

A bare loop and a watched loop (same model, same data) are built once and timed in many short interleaved
blocks (alternating which goes first), so that load from other processes on a shared machine hits both
alike.  Three estimates of the overhead are printed: best block against best block; the median over
adjacent (bare, watched) pairs of their ratio, which stays right when the machine switches between a fast
and a slow mode (two torch threads on two shared cores do); and the watcher's own clock
(``watcher.hook_seconds``: wall time inside its hooks, the monitor's work included) as a share of the best
bare step, which needs no comparison between two noisy runs (it misses the hooks' dispatch by torch and
cache effects, a few percent).

    python benchmarks/torch_overhead.py [--blocks 80] [--steps 10] [--threads 2] [--json out.json]
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
from step import BATCH, torch_setup  # noqa: E402


class Loop:
    """One training loop over the benchmark data, optionally watched; :meth:`block` times ``n`` steps."""

    def __init__(self, watched: bool) -> None:
        import torch

        import gradmon.torch

        self.torch = torch
        self.model, self.opt, self.X, self.y = torch_setup(0)
        self.watcher = gradmon.torch.watch(self.model, optimizer=self.opt, curvature_every=0, console=False) \
            if watched else None
        self.i = 0

    def block(self, n: int) -> tuple[float, float]:
        """Seconds per step over ``n`` steps, and seconds per step spent inside the watcher's hooks."""
        F = self.torch.nn.functional
        model, opt, X, y, watcher = self.model, self.opt, self.X, self.y, self.watcher
        hooks0 = watcher.hook_seconds if watcher is not None else 0.0
        t0 = time.perf_counter()
        for _ in range(n):
            start = (self.i % 40) * BATCH
            self.i += 1
            loss = F.cross_entropy(model(X[start:start + BATCH]), y[start:start + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watcher is not None:
                watcher.log_loss(loss)
        elapsed = (time.perf_counter() - t0) / n
        hooks = ((watcher.hook_seconds - hooks0) / n) if watcher is not None else 0.0
        return elapsed, hooks


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=80, help="interleaved timing blocks per side")
    ap.add_argument("--steps", type=int, default=10, help="training steps per block")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bare, watched = Loop(False), Loop(True)
    for loop in (bare, watched):  # warm up: allocator, first-step setup, the watcher's layout trace
        loop.block(30)
    t_bare, t_watched, t_hooks = [], [], []
    for b in range(args.blocks):
        order = (bare, watched) if b % 2 == 0 else (watched, bare)
        for loop in order:
            step, hooks = loop.block(args.steps)
            if loop is bare:
                t_bare.append(step)
            else:
                t_watched.append(step)
                t_hooks.append(hooks)
    watched.watcher.close()
    best_bare, best_watched = min(t_bare), min(t_watched)
    overhead = paired_overhead(t_watched, t_bare)
    out = {
        "threads": args.threads, "blocks": args.blocks, "steps_per_block": args.steps,
        "bare_ms": 1e3 * best_bare, "watched_ms": 1e3 * best_watched,
        "overhead_best": overhead["best_vs_best"], "overhead_paired_median": overhead["paired_median"],
        "hooks_ms": 1e3 * min(t_hooks), "hooks_median_ms": 1e3 * statistics.median(t_hooks),
        "hooks_share": min(t_hooks) / best_bare,
    }
    print(f"bare torch step         {out['bare_ms']:.3f} ms  (best of {args.blocks} blocks of {args.steps} steps, "
          f"{args.threads} torch threads)\n"
          f"with gradmon            {out['watched_ms']:.3f} ms\n"
          f"overhead, best blocks   {100 * out['overhead_best']:+.1f}%   (target <= 10%)\n"
          f"overhead, paired median {100 * out['overhead_paired_median']:+.1f}%\n"
          f"inside gradmon's hooks  {out['hooks_ms']:.3f} ms per step (median {out['hooks_median_ms']:.3f}) = "
          f"{100 * out['hooks_share']:.1f}% of a bare step")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
