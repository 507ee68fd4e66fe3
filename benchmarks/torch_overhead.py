"""Cost of ``gradmon.torch.watch`` on a PyTorch training step at default settings (curvature off: no probe),
and with every step measured (``every=1``), for two models on the CPU with SGD, batch 128:

- ``mlp``: the benchmark MLP 784-256-256-256-10 with ``nn.ReLU`` modules (target: <= 5% per step);
- ``cnn``: a small examples/mnist-style CNN with functional ReLUs and pooling (target: <= 3% per step).

At default settings the watcher measures every step for the first 200 steps, then keeps measuring within a
budget of 5% of the step time (``statistics_budget``): on a model whose steps are this short it measures
every k-th step; the loops are warmed up past that decision, and the cadence in force is printed.

For each model a bare loop and two watched loops (same model, same data) are built once and timed in many
short interleaved blocks (rotating which goes first), so that load from other processes on a shared machine
hits them alike.  Estimates of the overhead: the median over adjacent (bare, watched) pairs of their wall
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
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from paired import paired_overhead  # noqa: E402
from step import BATCH, torch_cnn_setup, torch_setup  # noqa: E402

MODELS = {"mlp": (torch_setup, 0.05), "cnn": (torch_cnn_setup, 0.03)}


class Loop:
    """One training loop over the benchmark data, watched with ``options`` (None: bare); :meth:`block` times
    ``n`` steps."""

    def __init__(self, model: str, options: dict | None) -> None:
        import torch

        import gradmon.torch

        self.torch = torch
        self.model, self.opt, self.X, self.y = MODELS[model][0](0)
        self.watcher = gradmon.torch.watch(self.model, optimizer=self.opt, curvature_every=0, console=False,
                                           **options) if options is not None else None
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


def measure(model: str, blocks: int, steps: int, warmup: int) -> dict:
    from gradmon.quantities.xp import HOST_TRANSFERS

    loops = {"bare": Loop(model, None), "default": Loop(model, {}), "every_step": Loop(model, {"every": 1})}
    for loop in loops.values():  # warm up: allocator, the watcher's trace, the budget's first decision
        loop.block(warmup)
    wall: dict[str, list[float]] = {k: [] for k in loops}
    cpu: dict[str, list[float]] = {k: [] for k in loops}
    hooks: dict[str, list[float]] = {k: [] for k in loops}
    recorded0 = {k: len(l.watcher.monitor.history) for k, l in loops.items() if l.watcher is not None}
    HOST_TRANSFERS.reset()
    order = list(loops)
    for b in range(blocks):
        for name in order[b % 3:] + order[:b % 3]:
            w, c, h = loops[name].block(steps)
            wall[name].append(w)
            cpu[name].append(c)
            hooks[name].append(h)
    out = {"model": model, "target": MODELS[model][1], "bare_ms": 1e3 * min(wall["bare"])}
    for name in ("default", "every_step"):
        watcher = loops[name].watcher
        walls, cpus = paired_overhead(wall[name], wall["bare"]), paired_overhead(cpu[name], cpu["bare"])
        out[name] = {
            "watched_ms": 1e3 * min(wall[name]), "overhead_paired_median": walls["paired_median"],
            "overhead_paired_iqr": walls["paired_iqr"], "overhead_best": walls["best_vs_best"],
            "overhead_cpu_paired_median": cpus["paired_median"], "hooks_ms": 1e3 * min(hooks[name]),
            "every": watcher.monitor.recorder.every,
            "records_per_step": (len(watcher.monitor.history) - recorded0[name]) / (blocks * steps),
        }
    out["units"] = len(loops["default"].watcher.monitor.units)
    out["parameters"] = sum(p.numel() for p in loops["bare"].model.parameters())
    recorded = sum(len(loops[n].watcher.monitor.history) - recorded0[n] for n in ("default", "every_step"))
    out["host_transfers_per_record"] = HOST_TRANSFERS.calls / max(1, recorded)
    out["host_elements_per_record"] = HOST_TRANSFERS.elements / max(1, recorded)
    for name in ("default", "every_step"):
        loops[name].watcher.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--blocks", type=int, default=80, help="interleaved timing blocks per side")
    ap.add_argument("--steps", type=int, default=10, help="training steps per block")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (every loop)")
    ap.add_argument("--warmup", type=int, default=320, help="steps before timing (the budget decides at 300)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "blocks": args.blocks, "steps_per_block": args.steps, "models": {}}
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        r = out["models"][model] = measure(model, args.blocks, args.steps, args.warmup)
        print(f"{model}: {r['units']} units, {r['parameters']:,} parameters ({args.threads} torch threads, "
              f"{args.blocks} blocks of {args.steps} steps per loop); bare step {r['bare_ms']:.3f} ms (best block)")
        for name, label in (("default", "default settings"), ("every_step", "every=1")):
            v = r[name]
            q1, q3 = v["overhead_paired_iqr"]
            print(f"  {label:16s} overhead {100 * v['overhead_paired_median']:+.1f}% paired median (quartiles "
                  f"{100 * q1:+.1f}% to {100 * q3:+.1f}%), {100 * v['overhead_best']:+.1f}% best blocks, "
                  f"{100 * v['overhead_cpu_paired_median']:+.1f}% CPU time; {v['hooks_ms']:.3f} ms per step in "
                  f"the watcher; {v['records_per_step']:.2f} records per step (every {v['every']})")
        print(f"  target at default settings: <= {100 * r['target']:.0f}%; to the host per record: "
              f"{r['host_transfers_per_record']:.2f} transfers, {r['host_elements_per_record']:.1f} values")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
