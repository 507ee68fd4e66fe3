"""Hyperparameter search over spec keys: grid and random search.

A *trial* is a function ``spec -> dict`` of metrics (``final_loss`` at least; ``pruned`` with a reason when
it stopped early).  core's default trial trains the spec and reports its losses; gradmon passes a trial that
also reports training health and prunes runs that open an error finding.

>>> grid = parse_grid(["train.lr=1e-3,1e-2,1e-1", "model.activation=relu,tanh"])
>>> len(expand_grid(grid))
6
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core.progress import LineProgress, progress_or_lines

Trial = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class TrialResult:
    """One trial: the spec keys it set, its metrics, and its rank (1 = best)."""

    params: dict[str, Any]
    metrics: dict[str, Any]
    rank: int = 0

    @property
    def score(self) -> float:
        """What ranking minimises: validation loss when there is one, else the final training loss;
        pruned or non-finite trials rank last."""
        if self.metrics.get("pruned"):
            return math.inf
        value = self.metrics.get("val_loss", self.metrics.get("final_loss", math.inf))
        return float(value) if value is not None and math.isfinite(float(value)) else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Rank, params and metrics, JSON-safe (a non-finite number as ``null``; ``pruned`` says why a
        trial stopped early)."""
        return json_safe({"rank": self.rank, "params": self.params, **self.metrics})


def json_safe(value: Any) -> Any:
    """``value`` ready for ``json.dumps(..., allow_nan=False)``: numpy scalars and arrays become Python
    numbers and lists, a non-finite float (NaN, ±Inf) becomes ``None`` (``null``), mappings, lists and tuples
    are converted recursively (keys as strings), and any other object becomes its ``str``.

    Strict JSON has no Infinity or NaN.  ``null`` marks a number that is missing, does not apply or is not
    finite; a document that needs to say why carries a field of its own (the doctor's ``diverged``, a
    search trial's ``pruned``).  This is the one encoding of gradmon's JSON outputs as well (report,
    doctor, tune).

    >>> json_safe({"loss": float("inf"), "acc": [0.5, float("nan")], "n": np.int64(3)})
    {'loss': None, 'acc': [0.5, None], 'n': 3}
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _parse_value(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ValueError(f"--grid value {text[:40]!r}...: nested too deeply") from None


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["train.lr=1e-3,1e-2"]`` -> ``{"train.lr": [0.001, 0.01]}`` (values parsed as TOML values)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-3,1e-2)")
        key, values = item.split("=", 1)
        key = key.strip()
        parts = [v.strip() for v in _split_values(values)]
        if not key or not parts or any(p == "" for p in parts):
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,... with no empty value")
        grid[key] = [_parse_value(p) for p in parts]
    if not grid:
        raise ValueError("no --grid given: e.g. --grid train.lr=1e-3,1e-2,1e-1")
    return grid


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so list values like [64,64] stay whole."""
    out, depth, current = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, in a stable order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def sample_grid(grid: Mapping[str, Sequence[Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct random combinations (all of them when there are fewer)."""
    combos = expand_grid(grid)
    if n >= len(combos):
        return combos
    idx = np.random.default_rng(seed).choice(len(combos), size=n, replace=False)
    return [combos[i] for i in sorted(idx)]


def default_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``spec`` and report its final training (and validation) loss and accuracy."""
    from core.build import build

    run = build(spec, progress=False)
    validation = (run.data.X_test, run.data.y_test) if len(run.data.X_test) else None
    history = run.trainer.fit(run.data.X_train, run.data.y_train, epochs=run.epochs, validation=validation)
    metrics: dict[str, Any] = {"final_loss": history["loss"][-1] if history["loss"] else math.nan,
                               "steps": history["steps"]}
    for key in ("val_loss", "accuracy", "val_accuracy"):
        if history.get(key):
            metrics[key] = history[key][-1]
    if history["stopped"]:
        metrics["pruned"] = history["stopped"]
    return metrics


def search(spec: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], trial: Trial | None = None,
           mode: str = "grid", n_trials: int | None = None, seed: int = 0,
           progress: bool | None = None) -> list[TrialResult]:
    """Run a trial per combination of ``grid`` applied to ``spec``; returns results sorted best first."""
    from core.spec import apply_patch

    if mode not in ("grid", "random"):
        raise ValueError(f"unknown search mode {mode!r}; use grid or random")
    combos = expand_grid(grid) if mode == "grid" else sample_grid(grid, n_trials or 10, seed)
    specs = [apply_patch(spec, combo) for combo in combos]  # validates every combination up front
    run_trial = trial or default_trial
    results = []
    bar = progress_or_lines(len(specs), progress, "search", "trial")
    for combo, s in zip(combos, specs):
        results.append(TrialResult(params=combo, metrics=run_trial(s)))
        if isinstance(bar, LineProgress):  # a log: which trial, and how it ended
            m = results[-1].metrics
            loss = m.get("val_loss", m.get("final_loss"))
            bar.update(1, ", ".join(f"{k}={v}" for k, v in combo.items()) + (
                f": pruned ({m['pruned']})" if m.get("pruned") else f": loss {loss:.4g}" if loss is not None else ""))
        elif bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r.score)
    for i, r in enumerate(results, start=1):
        r.rank = i
    return results

