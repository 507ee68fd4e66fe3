"""gradmon's curvature against PyHessian and Cockpit, side by side in one process, on the same models and batches.

Models (PyTorch, float32, ReLU, cross-entropy): an MLP on the digits data (64-40-10, 3,010 parameters, a batch
of 256 examples) and the benchmark MLP (784-256-256-256-10, 335,114 parameters, a batch of 128), each at
initialisation and after 200 SGD steps.

Oracles: λmax by Lanczos on a float64 copy of the model run to a relative tolerance of 1e-10; the exact trace
from torch's dense Hessian (``torch.autograd.functional.hessian``, float64) for the small model and from
BackPACK's exact Hessian diagonal (``DiagHessian``, float64; an implementation independent of gradmon's) for
the large one.

Methods, each timed as a whole (building its gradient graph included) and counted in Hessian-vector products:

- gradmon: ``gradmon.torch.curvature(model, F.cross_entropy, (x, y))`` with its defaults (λmax by Lanczos at
  ``tol=1e-3``; the trace exact for these models), and its stochastic trace (deflated Hutch++-style, forced by
  a loss the exact route does not know) for comparison;
- PyHessian defaults: ``hessian(...).eigenvalues()`` (power iteration, ``maxIter=100, tol=1e-3``) and
  ``.trace()`` (Hutchinson, ``maxIter=100, tol=1e-3``); at equal accuracy: tighter ``tol`` until λmax is as
  accurate as gradmon's, and the trace with ``maxIter=1000, tol=1e-4``;
- Cockpit's quantities: ``HessMaxEV`` (its ``HVPLinearOperator.power_iteration``: ``maxiter=100, rtol=1e-3``;
  at equal accuracy tighter ``rtol``) and ``HessTrace`` (BackPACK ``DiagHessian``: exact, one extended
  backward pass).

Per-HVP cost: gradmon's product (one ``torch.autograd.grad`` of a gradient built once, on a flat float64
tensor) against PyHessian's ``hessian_vector_product`` and Cockpit's (BackPACK's) on the same model and batch,
timed in interleaved blocks (median per product).

The peers are NOT gradmon dependencies: run this in its own environment,

    python -m venv /work/venvs/peers && source /work/venvs/peers/bin/activate
    pip install torch==2.13.0 "setuptools<81"
    pip install --no-build-isolation pyhessian cockpit-for-pytorch backpack-for-pytorch
    pip install torch==2.13.0                # BackPACK pulls torchvision, which replaces torch: put it back
    pip uninstall -y torchvision             # (it no longer matches torch; nothing here needs it)
    pip install -e ".[dev]" array-api-compat
    python benchmarks/curvature_peers.py [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import gradmon.torch  # noqa: E402
from gradmon.adapters.torch_objective import TorchObjective  # noqa: E402
from gradmon.quantities.curvature import estimate_curvature  # noqa: E402
from step import BATCH, torch_setup  # noqa: E402

F = nn.functional


class Counter:
    """Counts the products a peer makes by wrapping its HVP function where the peer looks it up."""

    def __init__(self, module, name: str) -> None:
        self.module, self.name, self.calls = module, name, 0
        self.original = getattr(module, name)

        def counting(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        setattr(module, name, counting)


# -- the models and their oracles -----------------------------------------------------------------------------------
def digits_setup():
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.data - data.data.mean(0)) / (data.data.std(0) + 1e-8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))
    return model, torch.tensor(X, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64), 256


def mlp_setup():
    model, _, X, y = torch_setup(0)
    return model, X, y, BATCH


def train(model, X, y, batch, steps=200, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(steps):
        start = (i * batch) % (len(X) - batch)
        loss = F.cross_entropy(model(X[start:start + batch]), y[start:start + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def oracle(model, x, y) -> dict:
    double = copy.deepcopy(model).double()
    xd = x.double()
    lam = estimate_curvature(TorchObjective(double, xd, y, F.cross_entropy).linearize(), rtol=1e-10, max_iter=400,
                             trace=False, seed=7).lambda_max
    dim = sum(p.numel() for p in double.parameters())
    if dim <= 5000:
        names = [n for n, _ in double.named_parameters()]
        params = tuple(p.detach() for p in double.parameters())

        def loss(*ps):
            return F.cross_entropy(torch.func.functional_call(double, dict(zip(names, ps)), (xd,)), y)

        blocks = torch.autograd.functional.hessian(loss, params)
        trace = float(sum(torch.diagonal(blocks[i][i].reshape(p.numel(), p.numel())).sum()
                          for i, p in enumerate(params)))
        how = "dense Hessian"
    else:
        trace, how = backpack_trace(double, xd, y)[0], "BackPACK DiagHessian (float64)"
    return {"lambda_max": lam, "trace": trace, "trace_oracle": how, "dim": dim}


def backpack_trace(model, x, y) -> tuple[float, float]:
    """Cockpit's HessTrace: BackPACK's exact Hessian diagonal, summed (on a copy: BackPACK extends it)."""
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    t0 = time.perf_counter()
    m = extend(copy.deepcopy(model))
    lossfunc = extend(nn.CrossEntropyLoss())
    loss = lossfunc(m(x), y)
    with backpack(DiagHessian()):
        loss.backward()
    trace = float(sum(p.diag_h.sum() for p in m.parameters()))
    return trace, time.perf_counter() - t0


# -- the methods ----------------------------------------------------------------------------------------------------
def run_gradmon(model, x, y) -> dict:
    r = gradmon.torch.curvature(model, F.cross_entropy, (x, y))
    return {"lambda_max": r.lambda_max, "trace": r.trace, "trace_stderr": r.trace_stderr, "hvps": r.hvps,
            "lambda_hvps": r.lanczos_hvps, "seconds": r.seconds, "trace_method": r.trace_method}


def run_gradmon_stochastic(model, x, y) -> dict:
    """The stochastic trace, for comparison: a loss the exact route does not know (the same values)."""
    def loss_fn(out, t):
        return F.cross_entropy(out, t)

    r = gradmon.torch.curvature(model, loss_fn, (x, y))
    return {"lambda_max": r.lambda_max, "trace": r.trace, "trace_stderr": r.trace_stderr, "hvps": r.hvps,
            "lambda_hvps": r.lanczos_hvps, "seconds": r.seconds, "trace_method": r.trace_method}


def run_pyhessian(model, x, y, eig_tol=1e-3, eig_iter=100, trace_tol=1e-3, trace_iter=100) -> dict:
    import pyhessian  # noqa: F401

    ph = sys.modules["pyhessian.hessian"]  # (the package exports the class under the module's name)
    counter = Counter(ph, "hessian_vector_product")
    try:
        m = copy.deepcopy(model)  # PyHessian switches the model to eval() and fills .grad
        t0 = time.perf_counter()
        h = ph.hessian(m, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        t_build = time.perf_counter() - t0
        torch.manual_seed(0)
        t0 = time.perf_counter()
        lam = h.eigenvalues(maxIter=eig_iter, tol=eig_tol)[0][0]
        t_eig, n_eig = time.perf_counter() - t0, counter.calls
        t0 = time.perf_counter()
        samples = h.trace(maxIter=trace_iter, tol=trace_tol)
        t_trace = time.perf_counter() - t0
    finally:
        setattr(ph, "hessian_vector_product", counter.original)
    return {"lambda_max": float(lam), "trace": float(np.mean(samples)),
            "trace_stderr": float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan"),
            "hvps": counter.calls, "lambda_hvps": n_eig, "seconds": t_build + t_eig + t_trace,
            "lambda_seconds": t_build + t_eig}


def run_cockpit(model, x, y, rtol=1e-3, maxiter=100) -> dict:
    import cockpit.quantities.hess_max_ev as hm

    counter = Counter(hm, "hessian_vector_product")
    try:
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        torch.manual_seed(0)
        t0 = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        lam = hm.HVPLinearOperator(loss, params).power_iteration(maxiter=maxiter, rtol=rtol).item()
        t_eig = time.perf_counter() - t0
    finally:
        setattr(hm, "hessian_vector_product", counter.original)
    trace, t_trace = backpack_trace(model, x, y)
    return {"lambda_max": float(lam), "trace": trace, "trace_stderr": 0.0, "hvps": counter.calls,
            "lambda_hvps": counter.calls, "seconds": t_eig + t_trace, "lambda_seconds": t_eig}


def equal_accuracy(run, target_error: float, ref: float, tolerances) -> dict:
    """The loosest tolerance at which a peer's λmax is at least as accurate as ``target_error`` (or the
    tightest tried)."""
    out = None
    for tol in tolerances:
        out = run(tol)
        out["tol"] = tol
        out["lambda_error"] = abs(out["lambda_max"] - ref) / abs(ref)
        if out["lambda_error"] <= target_error:
            break
    out["reached"] = out["lambda_error"] <= target_error
    return out


# -- per-HVP cost ---------------------------------------------------------------------------------------------------
def per_hvp(model, x, y, blocks=15, per_block=10) -> dict:
    from backpack.hessianfree.hvp import hessian_vector_product as backpack_hvp
    from pyhessian.utils import hessian_vector_product as pyhessian_hvp

    op = TorchObjective(model, x, y, F.cross_entropy).linearize()
    v = op.vector(np.random.default_rng(0).normal(size=op.dim))
    m = copy.deepcopy(model)
    params = list(m.parameters())
    loss = F.cross_entropy(m(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vs = [torch.randn_like(p) for p in params]
    sides = {"gradmon": lambda: op.hvp(v), "pyhessian": lambda: pyhessian_hvp(grads, params, vs),
             "cockpit (BackPACK)": lambda: backpack_hvp(loss, params, vs, grad_params=grads)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for f in sides.values():
        f()
    for b in range(blocks):
        for name in (list(sides) if b % 2 == 0 else list(sides)[::-1]):
            t0 = time.perf_counter()
            for _ in range(per_block):
                sides[name]()
            times[name].append((time.perf_counter() - t0) / per_block * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name, setup in (("digits MLP 3k", digits_setup), ("benchmark MLP 335k", mlp_setup)):
        model, X, Y, batch = setup()
        for state in ("init", "trained"):
            if state == "trained":
                train(model, X, Y, batch)
            x, y = X[:batch], Y[:batch]
            ref = oracle(model, x, y)
            ours = run_gradmon(model, x, y)
            row = {"oracle": ref, "gradmon": ours, "gradmon stochastic trace": run_gradmon_stochastic(model, x, y),
                   "pyhessian defaults": run_pyhessian(model, x, y), "cockpit defaults": run_cockpit(model, x, y)}
            target = max(abs(ours["lambda_max"] - ref["lambda_max"]) / abs(ref["lambda_max"]), 1e-6)
            row["pyhessian equal accuracy"] = equal_accuracy(
                lambda t: run_pyhessian(model, x, y, eig_tol=t, eig_iter=3000, trace_tol=1e-4, trace_iter=1000),
                target, ref["lambda_max"], (1e-4, 1e-5, 1e-6, 1e-7, 1e-8))
            row["cockpit equal accuracy"] = equal_accuracy(
                lambda t: run_cockpit(model, x, y, rtol=t, maxiter=3000), target, ref["lambda_max"],
                (1e-4, 1e-5, 1e-6, 1e-7, 1e-8))
            row["per_hvp_ms"] = per_hvp(model, x, y)
            for key, r in row.items():
                if isinstance(r, dict) and "lambda_max" in r and key != "oracle":
                    r["lambda_error"] = abs(r["lambda_max"] - ref["lambda_max"]) / abs(ref["lambda_max"])
                    r["trace_error"] = abs(r["trace"] - ref["trace"]) / abs(ref["trace"])
            results[f"{name}, {state}"] = row
            report(f"{name}, {state}", row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return results


def report(title: str, row: dict) -> None:
    ref = row["oracle"]
    print(f"\n{title}: D = {ref['dim']:,}; λmax = {ref['lambda_max']:.6g}, trace = {ref['trace']:.6g} "
          f"({ref['trace_oracle']})")
    print(f"  {'method':<28}{'HVPs':>7}{'λ HVPs':>8}{'seconds':>9}{'λmax error':>12}{'trace error':>13}  trace ± s.e.")
    for key, r in row.items():
        if not isinstance(r, dict) or "hvps" not in r:
            continue
        print(f"  {key:<28}{r['hvps']:>7}{r['lambda_hvps']:>8}{r['seconds']:>9.3f}{r['lambda_error']:>12.2e}"
              f"{r['trace_error']:>13.2e}  {r['trace']:.5g} ± {r['trace_stderr']:.2g}")
    print("  per HVP (ms, median): " + ", ".join(f"{k} {v:.2f}" for k, v in row["per_hvp_ms"].items()))


if __name__ == "__main__":
    main()
