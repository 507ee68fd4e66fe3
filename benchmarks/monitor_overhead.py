"""Cost of the monitor's per-step statistics on the benchmark MLP (784-256-256-256-10, batch 128).

Times a training step of core without callbacks, with ``Monitor(every=1, curvature_every=0)`` in memory,
and with TensorBoard writing into a temporary logdir.  The shared machine switches between a fast and a slow
state every few seconds, so the three runs of a repeat follow each other (in alternating order) and the
overhead is the median over repeats of the ratio within a repeat; the best-vs-best ratio is printed too.
A third estimate needs no comparison of two noisy runs: the monitor's own clock (wall time inside its hooks,
judging and sinks included, per step) as a share of the bare step of the same repeat.
Target (issue #16): the monitor's per-step cost at most +3%.

    python benchmarks/monitor_overhead.py [--steps 400] [--repeats 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from paired import paired_overhead  # noqa: E402
from step import time_core  # noqa: E402

import core  # noqa: E402
import gradmon  # noqa: E402


class Clocked(core.Callback):
    """A callback's hooks timed: ``seconds`` of wall time spent inside them, ``steps`` steps seen."""

    def __init__(self, inner: core.Callback) -> None:
        self.inner, self.seconds, self.steps = inner, 0.0, 0

    def _timed(self, hook: str, *args):
        t0 = time.perf_counter()
        out = getattr(self.inner, hook)(*args)
        self.seconds += time.perf_counter() - t0
        return out

    def requests(self, step):
        return self._timed("requests", step)

    def on_train_begin(self, run):
        self.seconds, self.steps = 0.0, 0
        return self._timed("on_train_begin", run)

    def on_after_backward(self, state):
        self.steps += 1
        return self._timed("on_after_backward", state)

    def on_step_end(self, state):
        return self._timed("on_step_end", state)

    def on_epoch_end(self, epoch, logs):
        return self._timed("on_epoch_end", epoch, logs)

    def on_train_end(self, logs):  # writing the report files is not a per-step cost
        return self.inner.on_train_end(logs)

    def on_exception(self, exc, state):
        return self.inner.on_exception(exc, state)

    def should_stop(self):
        return self._timed("should_stop")


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
    own: dict[str, list[float]] = {k: [] for k in configs if k != "bare"}
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # adjacent in time, and in alternating order, so each repeat's ratios see one machine state
            clocks = {}
            for name in (list(configs) if r % 2 == 0 else list(configs)[::-1]):
                callbacks = [Clocked(cb) for cb in configs[name](r)]
                times[name].append(time_core(args.steps, callbacks=callbacks))
                clocks[name] = callbacks
            for name, callbacks in clocks.items():
                if callbacks:
                    per_step = sum(c.seconds for c in callbacks) / max(1, callbacks[0].steps)
                    own[name].append(per_step / times["bare"][-1])
    out = {}
    for k, v in times.items():
        overhead = paired_overhead(v, times["bare"])
        out[k] = {"ms_per_step_best": 1e3 * min(v), "overhead_paired_median": overhead["paired_median"],
                  "overhead_paired_iqr": overhead["paired_iqr"], "overhead_best_vs_best": overhead["best_vs_best"],
                  "overhead_own_clock_median": statistics.median(own[k]) if k in own else 0.0}
    for k, v in out.items():
        lo, hi = v["overhead_paired_iqr"]
        print(f"{k:<22} {v['ms_per_step_best']:7.3f} ms/step (best)   "
              f"overhead {100 * v['overhead_paired_median']:+5.1f}% "
              f"(median of {args.repeats} paired repeats; quartiles {100 * lo:+.1f}%..{100 * hi:+.1f}%; "
              f"best vs best {100 * v['overhead_best_vs_best']:+.1f}%; own clock "
              f"{100 * v['overhead_own_clock_median']:+.1f}%)")
    print("target: monitor overhead <= 3%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
