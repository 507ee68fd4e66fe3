"""Cost of the monitor's cheap per-step statistics on the benchmark MLP (784-256-256-256-10, batch 128).

Times a training step of core without callbacks, with ``Monitor(every=1, curvature_every=0)`` in memory,
and with TensorBoard writing into a temporary logdir.  The shared machine switches between a fast and a slow
state every few seconds, so the three runs of a repeat follow each other (in alternating order) and the
overhead is the median over repeats of the ratio within a repeat; the best-vs-best ratio is printed too.
Target: the cheap statistics every step add at most 5%.

    python benchmarks/monitor_overhead.py [--steps 400] [--repeats 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from paired import paired_overhead  # noqa: E402
from step import time_core  # noqa: E402

import gradmon  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    configs = {
        "bare": lambda r: [],
        "monitor": lambda r: [gradmon.Monitor(curvature_every=0, console=False)],
        "monitor+tensorboard": lambda r: [gradmon.Monitor(logdir=os.path.join(tmp, f"r{r}"), curvature_every=0,
                                                          console=False)],
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # adjacent in time, and in alternating order, so each repeat's ratios see one machine state
            for name in (list(configs) if r % 2 == 0 else list(configs)[::-1]):
                times[name].append(time_core(args.steps, callbacks=configs[name](r)))
    out = {}
    for k, v in times.items():
        overhead = paired_overhead(v, times["bare"])
        out[k] = {"ms_per_step_best": 1e3 * min(v), "overhead_paired_median": overhead["paired_median"],
                  "overhead_paired_iqr": overhead["paired_iqr"], "overhead_best_vs_best": overhead["best_vs_best"]}
    for k, v in out.items():
        lo, hi = v["overhead_paired_iqr"]
        print(f"{k:<22} {v['ms_per_step_best']:7.3f} ms/step (best)   "
              f"overhead {100 * v['overhead_paired_median']:+5.1f}% "
              f"(median of {args.repeats} paired repeats; quartiles {100 * lo:+.1f}%..{100 * hi:+.1f}%; "
              f"best vs best {100 * v['overhead_best_vs_best']:+.1f}%)")
    print("target: monitor overhead <= 5%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
