"""Optional dependencies are optional: without torch, tensorboardX or matplotlib, gradmon still imports,
says what to install, and keeps monitoring."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_without_torch(tmp_path):
    proc = run_python("""
        import sys
        sys.modules["torch"] = None          # as if torch were not installed
        import gradmon, core
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            import gradmon.torch
        except ImportError as exc:
            print("MESSAGE:", exc)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pip install torch==2.13.0" in proc.stdout and "gradmon[torch]" in proc.stdout


def test_without_tensorboardx_and_matplotlib_training_goes_on(tmp_path):
    proc = run_python("""
        import sys
        sys.modules["tensorboardX"] = None
        sys.modules["matplotlib"] = None
        import numpy as np, core, gradmon
        rng = np.random.default_rng(0)
        X = rng.normal(size=(128, 2)); y = (X[:, 0] > 0).astype(int)
        net = core.Sequential([core.Dense(2, 8), core.ReLU(), core.Dense(8, 2)], seed=0)
        monitor = gradmon.Monitor(logdir="run", curvature_every=0)
        history = core.Trainer(net, callbacks=[monitor], progress=False).fit(X, y, epochs=2)
        print("STEPS", history["steps"])
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "STEPS 8" in proc.stdout
    assert "tensorboard sink failed" in proc.stderr and "pip install tensorboardX" in proc.stderr
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'pip install "gradmon[report]"' in html
    assert (tmp_path / "run" / "report.json").exists()
