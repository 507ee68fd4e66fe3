"""Shared bits of the examples: arguments, a two-moons data set (no downloads), a small MLP, and the fix a
finding suggests."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--logdir", default=os.path.join("runs", "examples"), help="where reports and events go")
    ap.add_argument("--quick", action="store_true", help="fewer epochs (used by the test suite)")
    return ap.parse_args()


def moons(n: int = 1000, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles, standardised; labels 0/1."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    X = np.stack([np.where(upper, np.cos(t), 1 - np.cos(t)), np.where(upper, np.sin(t), 0.5 - np.sin(t))], 1)
    X = X + rng.normal(0, noise, X.shape)
    return (X - X.mean(0)) / X.std(0), (~upper).astype(np.int64)


def mlp(activation: str, init: str, hidden: list[int], inputs: int = 2, outputs: int = 2, **dense_kw):
    import core

    layers, width = [], inputs
    for h in hidden:
        layers += [core.Dense(width, h, init=init, **dense_kw), core.get_activation(activation)]
        width = h
    layers.append(core.Dense(width, outputs, init=init))
    return core.Sequential(layers, seed=0)


def suggested(report, code: str, key: str, where: str = ""):
    """The first ``code`` finding of ``report`` and the value its suggestions propose for the spec key
    ``key`` (e.g. ``train.lr``); exits with a message naming what is missing when there is no such finding
    or no such suggestion.  ``where`` describes the run in that message (e.g. ``"at lr 0.8"``)."""
    finding = next((f for f in report.findings if f.code == code), None)
    if finding is None:
        sys.exit(f"expected a {code} finding{' ' + where if where else ''}; got {[f.code for f in report.findings]}")
    value = next((s.patch[key] for s in finding.suggestions if key in s.patch), None)
    if value is None:
        sys.exit(f"the {code} finding suggested no {key}: {[s.patch for s in finding.suggestions]}")
    return finding, value


def summary(label: str, monitor, history) -> None:
    report = monitor.report()
    acc = history.get("accuracy")
    codes = ", ".join(f"{f.code}({f.layer or '-'})" for f in report.worst("warning")) or "none"
    print(f"{label:<28} status={report.status:<8} loss={history['loss'][-1]:.4f}"
          + (f" acc={acc[-1]:.1%}" if acc else "") + f"  findings: {codes}")
