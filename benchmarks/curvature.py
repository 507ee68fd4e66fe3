"""Curvature estimates of core models against exact values: λmax and the trace with its error bar, the products
they took, and the cost of one product against a gradient evaluation.

Models (cross-entropy, float64 objective): an MLP on the digits data (64-40-10, 3,010 parameters, a probe of
512 examples) with ReLU and with tanh, and the benchmark MLP (784-256-256-256-10, ReLU, 335,114 parameters, a
probe of 512), each at initialisation and after 200 SGD steps.

Oracles: λmax by Lanczos to a relative tolerance of 1e-10; the trace of the small models from the dense
Hessian (``D`` products, one per column); the trace of the large ReLU model from the exact Gauss-Newton route
(equal to the Hessian's trace for piecewise-linear networks: checked against dense Hessians in
``tests/test_curvature_estimates.py`` and against BackPACK's exact diagonal in ``benchmarks/curvature_peers.py``).

Methods, over ``--seeds`` random starts: gradmon's estimate as the monitor makes it (Lanczos at rtol 1e-3;
the trace exact where the route applies, else deflated); the quick first estimate of a budgeted run (on the
probe's first 128 examples, in the model's float32, rtol 0.05, the trace only where exact: its λmax error is
against the whole probe's λmax, so it counts the smaller sample too); its stochastic trace alone (deflated
Hutch++-style on the Lanczos basis, as many products as λmax took); plain Hutchinson with the same number of
products; and power iteration with 100 products (PyHessian's and Cockpit's budget) for λmax.  Target: median relative
trace error <= 5% at no more than twice the products of λmax.

    python benchmarks/curvature.py [--seeds 10] [--probe 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import core  # noqa: E402
from gradmon.quantities.curvature import MIN_TRACE_SAMPLES, FlatOperator, estimate_curvature  # noqa: E402
from gradmon.quantities.curvature_meter import FIRST_EXAMPLES, FIRST_RTOL  # noqa: E402
from gradmon.quantities.lanczos import lanczos, power_iteration  # noqa: E402
from gradmon.quantities.trace import hutchinson_trace  # noqa: E402
from step import BATCH, core_model, make_data  # noqa: E402


def digits(act: str):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = ((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-8)).astype(np.float32)
    layer = {"relu": core.ReLU, "tanh": core.Tanh}[act]
    model = core.Sequential([core.Dense(64, 40, init="he_normal"), layer(), core.Dense(40, 10)], seed=0)
    return model, X, d.target.astype(np.int64)


def benchmark_mlp():
    X, y = make_data(BATCH * 40)
    return core_model(0), X, y


def exact_values(op, dense: bool) -> dict:
    lam = lanczos(op.hvp, op.dim, rtol=1e-10, max_iter=300, rng=np.random.default_rng(99)).lambda_max
    if dense:
        eye = np.eye(op.dim)
        trace, how = float(sum(op.hvp(eye[i])[i] for i in range(op.dim))), "dense Hessian"
    else:
        trace, how = op.exact_trace(), "exact Gauss-Newton route"
    return {"lambda_max": lam, "trace": trace, "trace_oracle": how}


def stochastic_only(op):
    """The operator without its exact route (the deflated trace, as for a smooth network)."""
    return FlatOperator(op.hvp, op.dim)


def measure(op, ref: dict, seeds: int, quick_op=None) -> dict:
    rows: dict[str, list[dict]] = {"gradmon": [], "quick (first)": [], "deflated": [], "hutchinson": [],
                                   "power x100": []}
    for seed in range(seeds):
        if quick_op is not None:
            t0 = time.perf_counter()
            est = estimate_curvature(quick_op, rtol=FIRST_RTOL, seed=seed, stochastic_trace=False)
            rows["quick (first)"].append({"lambda_error": abs(est.lambda_max / ref["lambda_max"] - 1),
                                          "trace_error": abs(est.trace / ref["trace"] - 1), "hvps": est.hvps,
                                          "lambda_hvps": est.lanczos_hvps, "seconds": time.perf_counter() - t0,
                                          "trace_method": est.trace_method})
        for key, operator in (("gradmon", op), ("deflated", stochastic_only(op))):
            t0 = time.perf_counter()
            est = estimate_curvature(operator, rtol=1e-3, seed=seed)
            rows[key].append({"lambda_error": abs(est.lambda_max / ref["lambda_max"] - 1),
                              "trace_error": abs(est.trace / ref["trace"] - 1), "z": _z(est, ref),
                              "hvps": est.hvps, "lambda_hvps": est.lanczos_hvps, "seconds": time.perf_counter() - t0,
                              "trace_method": est.trace_method})
        n = rows["deflated"][-1]["hvps"]
        h = hutchinson_trace(op.hvp, op.dim, samples=n, rng=np.random.default_rng(1000 + seed))
        rows["hutchinson"].append({"trace_error": abs(h.trace / ref["trace"] - 1), "hvps": n,
                                   "z": abs(h.trace - ref["trace"]) / h.stderr})
        if seed < 3:
            value, hvps = power_iteration(op.hvp, op.dim, iters=100, rng=np.random.default_rng(seed))
            rows["power x100"].append({"lambda_error": abs(value / ref["lambda_max"] - 1), "hvps": hvps})
    summary = {}
    for key, rs in ((k, v) for k, v in rows.items() if v):
        summary[key] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "trace_method"}
        if "z" in rs[0]:  # how often the truth is within two standard errors
            summary[key]["covered_2se"] = float(np.mean([r["z"] <= 2 for r in rs]))
        if "trace_method" in rs[0]:
            summary[key]["trace_method"] = rs[0]["trace_method"]
    return summary


def _z(est, ref) -> float:
    if est.trace_stderr == 0:
        return 0.0 if abs(est.trace / ref["trace"] - 1) < 1e-6 else float("inf")
    return abs(est.trace - ref["trace"]) / est.trace_stderr


def per_product(op, obj, repeats: int = 10) -> dict:
    v = np.random.default_rng(0).normal(size=op.dim)
    times = {"hvp": [], "grad": [], "linearize": []}
    for _ in range(repeats):
        for key, f in (("hvp", lambda: op.hvp(v)), ("grad", obj.grad), ("linearize", obj.linearize)):
            t0 = time.perf_counter()
            f()
            times[key].append(time.perf_counter() - t0)
    return {f"{k}_ms": 1e3 * statistics.median(t) for k, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--probe", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    results = {}
    cases = (("digits MLP 3k relu", lambda: digits("relu"), True), ("digits MLP 3k tanh", lambda: digits("tanh"), True),
             ("benchmark MLP 335k relu", benchmark_mlp, False))
    with threadpool_limits(limits=args.threads):
        for name, setup, dense in cases:
            model, X, y = setup()
            trainer = core.Trainer(model, optimizer=core.SGD(0.05), batch_size=BATCH, progress=False)
            obj = trainer.objective(X[: args.probe], y[: args.probe])
            first = trainer.objective(X[: min(args.probe, FIRST_EXAMPLES)], y[: min(args.probe, FIRST_EXAMPLES)])
            for state in ("init", "trained"):
                if state == "trained":
                    trainer.fit(X, y, epochs=max(1, 200 // max(1, len(X) // BATCH)))
                op = obj.linearize()
                ref = exact_values(op, dense)
                quick = first.linearize(dtype=model.dtype)
                row = {"oracle": ref, "dim": op.dim, **measure(op, ref, args.seeds, quick), **per_product(op, obj)}
                results[f"{name}, {state}"] = row
                print_row(f"{name}, {state}", row)
    print(f"\ntarget: median trace error <= 5% at <= 2x the products of λmax (stochastic trace: at least "
          f"{MIN_TRACE_SAMPLES} samples)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


def print_row(title: str, row: dict) -> None:
    ref = row["oracle"]
    print(f"\n{title}: D = {row['dim']:,}; λmax = {ref['lambda_max']:.6g}; trace = {ref['trace']:.6g} "
          f"({ref['trace_oracle']}); per product {row['hvp_ms']:.2f} ms (a gradient {row['grad_ms']:.2f} ms, the "
          f"linearisation {row['linearize_ms']:.2f} ms)")
    print(f"  {'median over seeds':<22}{'HVPs':>6}{'λ HVPs':>8}{'λmax error':>12}{'trace error':>13}"
          f"{'within 2 s.e.':>15}{'seconds':>9}")
    for key in ("gradmon", "quick (first)", "deflated", "hutchinson", "power x100"):
        r = row[key]
        print(f"  {key:<22}{r['hvps']:>6.0f}{r.get('lambda_hvps', r['hvps']):>8.0f}"
              f"{r.get('lambda_error', float('nan')):>12.2e}{r.get('trace_error', float('nan')):>13.2e}"
              f"{r.get('covered_2se', float('nan')):>15.2f}{r.get('seconds', float('nan')):>9.3f}  "
              f"{r.get('trace_method', '')}")


if __name__ == "__main__":
    main()
