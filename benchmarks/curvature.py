"""Curvature estimates on the benchmark MLP (784-256-256-256-10, ReLU): Lanczos against power iteration
with 100 HVPs (PyHessian's and Cockpit's default budget), in the same run.

For each method: HVPs spent, seconds per estimate, and the relative error of λmax against a reference
(Lanczos run to rtol 1e-8), at initialisation and after some training.  The reference is checked against an
independent algorithm, power iteration from another start run until it stops moving (at most 2000 HVPs).
HVPs are exact (R-operator, float64) on a probe set of 512 examples.

    python benchmarks/curvature.py [--probe 512] [--train-steps 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import core  # noqa: E402
from gradmon.quantities.curvature import flat_hvp, lanczos, power_iteration  # noqa: E402
from step import BATCH, core_model, make_data  # noqa: E402


def measure(hvp, dim, label: str) -> dict:
    t0 = time.perf_counter()
    reference = lanczos(hvp, dim, rtol=1e-8, max_iter=80, rng=np.random.default_rng(1)).lambda_max
    t_ref = time.perf_counter() - t0
    check, check_hvps = power_iteration(hvp, dim, iters=2000, tol=1e-11, rng=np.random.default_rng(7))
    t0 = time.perf_counter()
    lz = lanczos(hvp, dim, rtol=1e-3, max_iter=40, rng=np.random.default_rng(0))
    t_lz = time.perf_counter() - t0
    t0 = time.perf_counter()
    pw, pw_hvps = power_iteration(hvp, dim, iters=100, rng=np.random.default_rng(0))
    t_pw = time.perf_counter() - t0
    out = {"reference_lambda_max": reference, "reference_seconds": t_ref,
           "reference_check": {"power_iteration_lambda_max": check, "hvps": check_hvps,
                               "rel_difference": abs(check - reference) / abs(reference)},
           "lanczos": {"lambda_max": lz.lambda_max, "hvps": lz.hvps, "seconds": t_lz,
                       "rel_error": abs(lz.lambda_max - reference) / abs(reference)},
           "power_100": {"lambda_max": pw, "hvps": pw_hvps, "seconds": t_pw,
                         "rel_error": abs(pw - reference) / abs(reference)}}
    print(f"\n{label}: reference λmax = {reference:.6g} (power iteration to convergence: {check:.6g} after "
          f"{check_hvps} HVPs, relative difference {out['reference_check']['rel_difference']:.1e})")
    print(f"  {'method':<22}{'HVPs':>6}{'seconds':>10}{'rel. error':>12}")
    for name, key in (("Lanczos (rtol 1e-3)", "lanczos"), ("power iteration x100", "power_100")):
        r = out[key]
        print(f"  {name:<22}{r['hvps']:>6}{r['seconds']:>10.2f}{r['rel_error']:>12.2e}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", type=int, default=512)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    X, y = make_data(BATCH * 40)
    model = core_model()
    trainer = core.Trainer(model, optimizer=core.SGD(0.05, momentum=0.9), batch_size=BATCH, progress=False)
    results = {}
    with threadpool_limits(limits=args.threads):
        obj = trainer.objective(X[: args.probe], y[: args.probe])
        params = {k: v.astype(np.float64) for k, v in model.parameters().items()}
        dim = sum(v.size for v in params.values())
        results["init"] = measure(flat_hvp(lambda v: obj.hvp(v, params), params), dim, "at initialisation")
        trainer.fit(X, y, epochs=max(1, args.train_steps // 40))
        params = {k: v.astype(np.float64) for k, v in model.parameters().items()}
        results["trained"] = measure(flat_hvp(lambda v: obj.hvp(v, params), params), dim,
                                     f"after {max(1, args.train_steps // 40) * 40} SGD steps")
    results["dim"] = dim
    results["probe"] = args.probe
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
