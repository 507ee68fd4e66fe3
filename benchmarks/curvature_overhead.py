"""What curvature costs a training run at its default settings: wall time of whole runs with curvature on
against the bare loop, on the benchmark MLP (784-256-256-256-10, ReLU, batch 128, SGD, 40 batches per epoch).

- torch: ``gradmon.torch.watch(model, optimizer=opt, loss_fn=F.cross_entropy)`` with
  ``watcher.log_loss(loss, target=y)`` at every step (curvature on the last batch, default budget of 5% of
  wall time, first estimate at the first step it can), against the same loop without a watcher;
- core: ``Monitor()`` (defaults: every step measured, curvature on a probe of 1024 training examples within
  the same budget), against ``Trainer.fit`` without callbacks.

Each repeat runs a fresh bare run, a fresh monitored run with curvature off (``curvature_every=0``) and one
with the defaults, of ``--steps`` steps back to back (alternating the order), and compares them within the
repeat: the median over repeats of each ratio.  Defaults against bare is the target; defaults against
curvature off is curvature's own part (the rest is the monitor's per-step statistics, its own benchmarks:
``torch_overhead.py``, ``monitor_overhead.py``).
Whole runs are timed, so the first estimate (the most expensive: cold, before any warm start) is included:
on a run much longer than one estimate the share tends to the budget; on a short one it is at most one
estimate over the run's time.  Also reported: the share the monitor's own clock recorded (the sum of the
estimates' seconds over the run's wall time), the number of estimates and their HVPs.  Target: <= 1.10x.

    python benchmarks/curvature_overhead.py [--steps 1000] [--repeats 6] [--threads 2] [--json out.json]
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
from step import BATCH, core_model, make_data, torch_setup  # noqa: E402


def torch_run(steps: int, watched: bool | str) -> tuple[float, list[dict]]:
    """Seconds of ``steps`` training steps (the watcher's construction and close excluded), and the curvature
    entries; ``watched="off"``: the same watcher with curvature off."""
    import torch

    import gradmon.torch

    F = torch.nn.functional
    model, opt, X, y = torch_setup(0)
    off = {"curvature_every": 0} if watched == "off" else {}
    watcher = gradmon.torch.watch(model, optimizer=opt, loss_fn=F.cross_entropy, console=False,
                                  tensorboard=False, **off) if watched else None
    t0 = time.perf_counter()
    for i in range(steps):
        start = (i % 40) * BATCH
        xb, yb = X[start:start + BATCH], y[start:start + BATCH]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if watcher is not None:
            watcher.log_loss(loss, target=yb)
    seconds = time.perf_counter() - t0
    entries = []
    if watcher is not None:
        entries = list(watcher.monitor.curvature)
        watcher.close()
    return seconds, entries


def core_run(steps: int, watched: bool | str) -> tuple[float, list[dict]]:
    import core
    import gradmon

    X, y = make_data(BATCH * 40)
    off = {"curvature_every": 0} if watched == "off" else {}
    monitor = gradmon.Monitor(console=False, **off) if watched else None
    trainer = core.Trainer(core_model(0), optimizer=core.SGD(0.01), batch_size=BATCH, progress=False,
                           callbacks=[monitor] if monitor is not None else [])
    t0 = time.perf_counter()
    trainer.fit(X, y, epochs=max(1, steps // 40))
    seconds = time.perf_counter() - t0
    return seconds, list(monitor.curvature) if monitor is not None else []


def compare(name: str, run, steps: int, repeats: int) -> dict:
    run(40, False), run(40, True)  # warm-up: allocator, BLAS threads, first-call setup
    sides = {"bare": False, "curvature off": "off", "defaults": True}
    times: dict[str, list[float]] = {k: [] for k in sides}
    shares, counts, hvps, first = [], [], [], []
    for r in range(repeats):
        for key in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds, entries = run(steps, sides[key])
            times[key].append(seconds)
            if key == "defaults":
                shares.append(sum(e["seconds"] for e in entries) / seconds)
                counts.append(len(entries))
                hvps.append([e["hvps"] for e in entries])
                first.append(entries[0]["step"] if entries else None)
    vs_bare = paired_overhead(times["defaults"], times["bare"])
    vs_off = paired_overhead(times["defaults"], times["curvature off"])
    monitor_only = paired_overhead(times["curvature off"], times["bare"])
    out = {"steps": steps, "repeats": repeats, "seconds": times,
           "ratio_vs_bare": 1 + vs_bare["paired_median"], "ratio_vs_bare_best": 1 + vs_bare["best_vs_best"],
           "ratio_vs_curvature_off": 1 + vs_off["paired_median"],
           "ratio_monitor_without_curvature": 1 + monitor_only["paired_median"],
           "recorded_share_median": statistics.median(shares), "estimates": counts, "hvps": hvps[0],
           "first_step": first[0]}
    print(f"{name:<6} {steps} steps, best of {repeats}: bare {min(times['bare']):.2f} s, monitored with curvature off "
          f"{min(times['curvature off']):.2f} s, with the defaults {min(times['defaults']):.2f} s\n"
          f"       defaults / bare {out['ratio_vs_bare']:.3f}x (median of pairs; best vs best "
          f"{out['ratio_vs_bare_best']:.3f}x); the monitor without curvature / bare "
          f"{out['ratio_monitor_without_curvature']:.3f}x; curvature's part: defaults / curvature off "
          f"{out['ratio_vs_curvature_off']:.3f}x, its own clock {100 * out['recorded_share_median']:.1f}% of the "
          f"run; estimates per run {counts} (first at step {out['first_step']}), HVPs {hvps[0]}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("torch", "core"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    import torch

    torch.set_num_threads(args.threads)
    out = {}
    with threadpool_limits(limits=args.threads):
        if args.only in (None, "torch"):
            out["torch"] = compare("torch", torch_run, args.steps, args.repeats)
        if args.only in (None, "core"):
            out["core"] = compare("core", core_run, args.steps, args.repeats)
    print("target: <= 1.10x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
