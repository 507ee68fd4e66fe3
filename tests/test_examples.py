"""Every example script runs (quick mode) and does what it says: checked on the reports it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def report(logdir: Path, run: str) -> dict[str, Any]:
    path = logdir / run / "report.json"
    assert path.exists(), f"the example wrote no report for run {run!r} under {logdir}"
    return json.loads(path.read_text())


def problems(rep: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(code, layer) of the warning and error findings."""
    return [(f["code"], f["layer"]) for f in rep["findings"] if f["severity"] in ("warning", "error")]


def trains(rep: dict[str, Any], factor: float) -> bool:
    """The recorded training loss ends at least ``factor`` times lower than it started."""
    losses = [p["train"] for p in rep["loss"] if isinstance(p["train"], float)]
    return len(losses) > 1 and losses[-1] < losses[0] / factor


def check_deep_sigmoid(logdir: Path, out: str) -> None:
    assert "vanishing_gradients" in [c for c, _ in problems(report(logdir, "deep-sigmoid"))]
    fixed = report(logdir, "deep-relu")
    assert fixed["status"] == "healthy" and trains(fixed, 4), problems(fixed)


def check_dying_relu(logdir: Path, out: str) -> None:
    assert "dead_units" in [c for c, _ in problems(report(logdir, "dying-relu--3"))]
    fixed = report(logdir, "dying-relu-0")
    assert fixed["status"] == "healthy" and trains(fixed, 3), problems(fixed)


def check_exploding_clipping(logdir: Path, out: str) -> None:
    assert "exploding_gradients" in [c for c, _ in problems(report(logdir, "exploding-no-clipping"))]
    clipped = report(logdir, "exploding-clipped")
    assert clipped["spec"]["train"]["clip_norm"] > 0
    assert clipped["status"] == "healthy" and trains(clipped, 4), problems(clipped)


def check_sharpness_lr(logdir: Path, out: str) -> None:
    first = report(logdir, "sharpness-too-high")
    assert "sharpness_above_stability" in [c for c, _ in problems(first)]
    fixed = report(logdir, "sharpness-suggested")
    lr0, lr = first["spec"]["train"]["lr"], fixed["spec"]["train"]["lr"]
    # the suggested rate is lower, but not absurdly so: within 10x of the original
    assert lr0 / 10 <= lr < lr0, (lr0, lr)
    assert fixed["status"] == "healthy" and not problems(fixed), problems(fixed)  # info findings allowed
    assert trains(fixed, 4)


def check_numpy_loop(logdir: Path, out: str) -> None:
    assert ("dead_units", "fc1") in problems(report(logdir, "numpy-loop-dead"))
    healthy = report(logdir, "numpy-loop-healthy")
    assert healthy["status"] == "healthy" and trains(healthy, 1.5), problems(healthy)


def check_torch_loop(logdir: Path, out: str) -> None:
    rep = report(logdir, "torch-loop")
    assert ("vanishing_gradients", "error") in {(f["code"], f["severity"]) for f in rep["findings"]}
    assert len(rep["curvature"]) >= 2 and all(c["lambda_max"] > 0 for c in rep["curvature"])  # the last batch
    fixes = [s for f in rep["findings"] for s in f["suggestions"]]
    assert fixes and all(s["patch"] == {} and "In PyTorch:" in s["text"] for s in fixes)


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "deep_sigmoid.py": check_deep_sigmoid,
    "dying_relu.py": check_dying_relu,
    "exploding_clipping.py": check_exploding_clipping,
    "sharpness_lr.py": check_sharpness_lr,
    "numpy_loop.py": check_numpy_loop,
    "torch_loop.py": check_torch_loop,
}


def test_every_example_has_a_check():
    assert set(EXAMPLES) == set(CHECKS)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    if name == "torch_loop.py":
        pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--quick", "--logdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    CHECKS[name](tmp_path, proc.stdout + proc.stderr)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's first Python block, executed verbatim in a fresh directory: it trains, prints a healthy
    status and writes the report it says it writes."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.startswith("healthy ")
    assert (tmp_path / "report.html").exists() and (tmp_path / "runs" / "exp1" / "report.json").exists()
