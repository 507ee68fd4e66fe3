"""Cost of the monitor's cheap per-step statistics on the benchmark MLP (784-256-256-256-10, batch 128).

Times a training step of core without callbacks, with ``Monitor(every=1, curvature_every=0)`` in memory,
and with TensorBoard writing into a temporary logdir; many short interleaved repeats, best of each (noise
on a shared machine only ever adds time), and the median of the per-repeat ratios as a check on the spread.
Target: the cheap statistics every step add at most 5%.

    python benchmarks/monitor_overhead.py [--steps 200] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from step import time_core  # noqa: E402

import gradmon  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    times: dict[str, list[float]] = {"bare": [], "monitor": [], "monitor+tensorboard": []}
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            times["bare"].append(time_core(args.steps))
            times["monitor"].append(time_core(args.steps, callbacks=[
                gradmon.Monitor(curvature_every=0, console=False)]))
            times["monitor+tensorboard"].append(time_core(args.steps, callbacks=[
                gradmon.Monitor(logdir=os.path.join(tmp, f"r{r}"), curvature_every=0, console=False)]))
    best = {k: min(v) for k, v in times.items()}
    paired = {k: float(np.median(np.array(v) / np.array(times["bare"]))) - 1.0 for k, v in times.items()}
    out = {k: {"ms_per_step": 1e3 * v, "overhead": v / best["bare"] - 1.0, "median_paired_overhead": paired[k]}
           for k, v in best.items()}
    for k, v in out.items():
        print(f"{k:<22} {v['ms_per_step']:7.3f} ms/step   overhead {100 * v['overhead']:+5.1f}%"
              f"   (median of paired repeats {100 * v['median_paired_overhead']:+5.1f}%)")
    print("target: monitor overhead <= 5%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
