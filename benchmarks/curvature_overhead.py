"""What curvature costs a training run at its default settings: wall time of whole runs with curvature on
against the same runs without it, on the benchmark MLP (784-256-256-256-10, ReLU, batch 128, SGD, 40
batches per epoch).

- torch: ``gradmon.torch.watch(model, optimizer=opt, loss_fn=F.cross_entropy)`` with
  ``watcher.log_loss(loss, target=y)`` at every step (curvature on the last batch, default budget of 5% of
  wall time, the first estimate a quick one at the first step it can), against the same watcher without
  ``loss_fn`` (no curvature: the watcher's own statistics, ``torch_overhead.py``'s subject), the same watcher
  with ``loss_fn`` and ``curvature_every=0`` (inputs kept, no estimate: the estimates alone are the rest)
  and the loop without a watcher;
- core: ``Monitor()`` (defaults: every step measured, curvature on a probe of 1024 training examples within
  the same budget, the first estimate a quick one on 128 of them), against ``Monitor(curvature_every=0)``
  and ``Trainer.fit`` without callbacks.

Each repeat runs a fresh bare run, a fresh run without curvature and one with the defaults (and torch's
``curvature_every=0`` run), of ``--steps`` steps back to back (alternating the order), and compares them
within the repeat: the median over repeats of each ratio.  Curvature's part is defaults against the run
without curvature (target <= 1.10x); defaults against bare is the total (the monitor's per-step statistics
included: their own benchmarks are ``torch_overhead.py`` and ``monitor_overhead.py``).  Whole runs are timed,
so the first estimate (cold, before any warm start) is included: on a run much longer than one estimate the
share tends to the budget; on a short one it is at most the first estimate over the run's time.  Also
reported: the share the monitor's own clock recorded (the estimates' seconds over the run's wall time: no
comparison of two noisy runs), the estimates per run, the first one's seconds, the HVPs and examples of
each, and the same ratios in CPU time (``time.process_time``: steadier than wall time when other processes
share the cores).

    python benchmarks/curvature_overhead.py [--steps 300 1000] [--repeats 6] [--threads 2] [--json out.json]
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


def torch_run(steps: int, watched: bool | str) -> tuple[float, float, list[dict]]:
    """Wall and CPU seconds of ``steps`` training steps (the watcher's construction and close excluded), and
    the curvature entries; ``watched="off"``: the watcher without ``loss_fn`` (no curvature); ``"estimates
    off"``: with ``loss_fn`` (its inputs kept for curvature) but ``curvature_every=0``."""
    import torch

    import gradmon.torch

    F = torch.nn.functional
    model, opt, X, y = torch_setup(0)
    loss_fn = {} if watched == "off" else {"loss_fn": F.cross_entropy}
    if watched == "estimates off":
        loss_fn["curvature_every"] = 0
    watcher = gradmon.torch.watch(model, optimizer=opt, console=False, tensorboard=False, **loss_fn) \
        if watched else None
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        start = (i % 40) * BATCH
        xb, yb = X[start:start + BATCH], y[start:start + BATCH]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if watcher is not None:
            watcher.log_loss(loss, target=yb)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    entries = []
    if watcher is not None:
        entries = list(watcher.monitor.curvature)
        watcher.close()
    return seconds, cpu, entries


def core_run(steps: int, watched: bool | str) -> tuple[float, float, list[dict]]:
    import core
    import gradmon

    X, y = make_data(BATCH * 40)
    off = {"curvature_every": 0} if watched == "off" else {}
    monitor = gradmon.Monitor(console=False, **off) if watched else None
    trainer = core.Trainer(core_model(0), optimizer=core.SGD(0.01), batch_size=BATCH, progress=False,
                           callbacks=[monitor] if monitor is not None else [])
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(X, y, epochs=max(1, steps // 40))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, list(monitor.curvature) if monitor is not None else []


def compare(name: str, run, steps: int, repeats: int) -> dict:
    run(40, False), run(40, True)  # warm-up: allocator, BLAS threads, first-call setup
    off = "without loss_fn" if name == "torch" else "curvature off"
    sides = {"bare": False, off: "off", "defaults": True}
    if name == "torch":  # the estimates alone: against the same watcher, loss_fn given, curvature_every=0
        sides["loss_fn, curvature_every=0"] = "estimates off"
    times: dict[str, list[float]] = {k: [] for k in sides}
    cpus: dict[str, list[float]] = {k: [] for k in sides}
    shares, counts, first_seconds, estimates = [], [], [], []
    for r in range(repeats):
        for key in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds, cpu, entries = run(steps, sides[key])
            times[key].append(seconds)
            cpus[key].append(cpu)
            if key == "defaults":
                shares.append(sum(e["seconds"] for e in entries) / seconds)
                counts.append(len(entries))
                first_seconds.append(entries[0]["seconds"] if entries else float("nan"))
                estimates.append([{k: e.get(k) for k in ("step", "hvps", "examples", "rtol", "seconds")}
                                  for e in entries])
    vs_bare = paired_overhead(times["defaults"], times["bare"])
    vs_off = paired_overhead(times["defaults"], times[off])
    monitor_only = paired_overhead(times[off], times["bare"])
    estimates_only = paired_overhead(times["defaults"], times["loss_fn, curvature_every=0"]) \
        if "loss_fn, curvature_every=0" in times else None
    out = {"steps": steps, "repeats": repeats, "seconds": times, "without_curvature": off,
           "ratio_vs_bare": 1 + vs_bare["paired_median"], "ratio_vs_bare_best": 1 + vs_bare["best_vs_best"],
           "ratio_vs_curvature_off": 1 + vs_off["paired_median"],
           "ratio_vs_curvature_off_iqr": [1 + q for q in vs_off["paired_iqr"]],
           "ratio_monitor_without_curvature": 1 + monitor_only["paired_median"],
           "cpu_ratio_vs_curvature_off": 1 + paired_overhead(cpus["defaults"], cpus[off])["paired_median"],
           "cpu_ratio_vs_bare": 1 + paired_overhead(cpus["defaults"], cpus["bare"])["paired_median"], "cpu": cpus,
           "ratio_vs_estimates_off": 1 + estimates_only["paired_median"] if estimates_only else None,
           "recorded_share_median": statistics.median(shares), "estimates_per_run": counts,
           "first_seconds_median": statistics.median(first_seconds), "estimates": estimates[0]}
    shown = ", ".join(f"step {e['step']}: {e['hvps']} HVPs on {e['examples']} examples" for e in estimates[0][:4])
    print(f"{name:<6} {steps} steps, best of {repeats}: bare {min(times['bare']):.2f} s, {off} "
          f"{min(times[off]):.2f} s, defaults {min(times['defaults']):.2f} s\n"
          f"       curvature's part: defaults / {off} {out['ratio_vs_curvature_off']:.3f}x (median of pairs, "
          f"quartiles {out['ratio_vs_curvature_off_iqr'][0]:.3f}-{out['ratio_vs_curvature_off_iqr'][1]:.3f}); "
          f"its own clock {100 * out['recorded_share_median']:.1f}% of the run (first estimate "
          f"{out['first_seconds_median']:.3f} s); CPU time {out['cpu_ratio_vs_curvature_off']:.3f}x\n"
          + (f"       the estimates alone: defaults / loss_fn with curvature_every=0 "
             f"{out['ratio_vs_estimates_off']:.3f}x (the rest of curvature's part: keeping the inputs)\n"
             if estimates_only else "") +
          f"       total: defaults / bare {out['ratio_vs_bare']:.3f}x (best vs best {out['ratio_vs_bare_best']:.3f}x); "
          f"{off} / bare {out['ratio_monitor_without_curvature']:.3f}x; CPU time defaults / bare "
          f"{out['cpu_ratio_vs_bare']:.3f}x\n"
          f"       estimates per run {counts}; first run's: {shown}{' ...' if len(estimates[0]) > 4 else ''}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 1000], help="steps per run (several: each)")
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
        for steps in args.steps:
            if args.only in (None, "torch"):
                out[f"torch/{steps}"] = compare("torch", torch_run, steps, args.repeats)
            if args.only in (None, "core"):
                out[f"core/{steps}"] = compare("core", core_run, steps, args.repeats)
    print("target: curvature's part <= 1.10x (the budget: 5% of wall time)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
