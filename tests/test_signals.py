"""Signals to a real ``gradmon run``: Ctrl-C, SIGTERM (CI timeouts, ``docker stop``) and SIGHUP (a closed
terminal) end it with its report.json and history.npz written and readable, the exit code a shell expects
(130, 143, 129), and no lock or temp file left; a second Ctrl-C, early or late, never costs report.json."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gradmon
from gradmon.history import History
from gradmon.scenarios import scenario_path

ROOT = Path(__file__).resolve().parents[1]


def start(logdir: Path, *sets: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    args = [sys.executable, "-m", "gradmon", "run", str(scenario_path("healthy")), "--logdir", str(logdir), "--quiet",
            "--set", "monitor.curvature_every=0", *(a for s in sets for a in ("--set", s))]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=logdir.parent)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


def training(logdir: Path):
    """Training is under way: the event file has grown past its first records."""
    return lambda: any(p.stat().st_size > 20_000 for p in logdir.glob("events.out.tfevents.*"))


def assert_run_kept(logdir: Path, ended: str) -> gradmon.HealthReport:
    report = gradmon.HealthReport.load(logdir)
    assert report.ended == ended and report.steps > 0
    history = History.load(logdir / "history.npz")
    assert len(history.steps) and history.steps[-1] < report.steps
    leftovers = sorted(p.name for p in logdir.iterdir() if p.name.startswith("."))
    assert leftovers == [], leftovers  # no lock, no temp file
    return report


@pytest.mark.parametrize("signum,code,ended", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGHUP, 129, "terminated")])
def test_a_signal_ends_the_run_like_ctrl_c(tmp_path, signum, code, ended):
    logdir = tmp_path / "run"
    proc = start(logdir, "train.epochs=5000")
    wait_for(proc, training(logdir))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err
    how = "interrupted" if signum == signal.SIGINT else "terminated"
    assert err.strip().splitlines() == [f"gradmon: {how}; the partial run's report.json and event files are in "
                                        f"{logdir}"]
    assert_run_kept(logdir, ended)


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_a_second_ctrl_c_never_costs_report_json(tmp_path, gap):
    """The second Ctrl-C comes at once (while the run judges its last steps) or later (during the HTML
    report): report.json and history.npz are there either way."""
    logdir = tmp_path / "run"
    proc = start(logdir, "train.epochs=5000")
    wait_for(proc, training(logdir))
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert_run_kept(logdir, "interrupted")


def test_ctrl_c_while_a_finished_run_writes_its_report_keeps_report_json(tmp_path):
    """Training is over and the reports are being written (history.npz first, HTML plots take seconds):
    a Ctrl-C then stops the HTML, never report.json, which says the run completed."""
    logdir = tmp_path / "run"
    proc = start(logdir, "train.epochs=3")
    wait_for(proc, lambda: (logdir / "history.npz").exists())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode in (0, 130), err  # 0 when the report was done before the signal landed
    report = assert_run_kept(logdir, "completed")
    assert report.steps == 3 * 25


def test_the_first_ctrl_c_holds_the_next_until_the_report_is_written():
    """The race a real second Ctrl-C can win under load (it failed once in CI): the first signal itself
    starts the hold, so one that follows at once waits for ``release`` instead of cutting the unwinding."""
    from gradmon.signals import release, termination_as_interrupt

    with termination_as_interrupt():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)   # the first: interrupts, and holds what follows
        try:
            signal.raise_signal(signal.SIGINT)   # the second, while the run unwinds: held
        except KeyboardInterrupt:
            pytest.fail("a second Ctrl-C right after the first was not held")
        with pytest.raises(KeyboardInterrupt):
            release()                            # report.json written: the second is delivered now
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)   # and a third interrupts at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
