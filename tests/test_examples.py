"""Every example script runs (quick mode) and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))

EXPECT = {
    "deep_sigmoid.py": ["vanishing_gradients", "ReLU + He                    status=healthy"],
    "exploding_clipping.py": ["Exploding gradients", "clip_norm"],
    "dying_relu.py": ["dead_units", "ReLU, bias 0                 status=healthy"],
    "sharpness_lr.py": ["λmax"],
    "numpy_loop.py": ["hand-written loop"],
    "torch_loop.py": ["torch loop"],
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    if name == "torch_loop.py":
        pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--quick", "--logdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECT.get(name, []):
        assert text in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert list(tmp_path.rglob("report.json")), "every example writes a report"
