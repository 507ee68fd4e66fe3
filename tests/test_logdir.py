"""A run's logdir: one run at a time (a lock, stale ones taken over), never reused by accident (refused
unless --overwrite or --resume), resumed bitwise, never clobbered by a default name, and a report.json
that could not be written is said so by the exit code, with no temp file left behind."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import core
import core.build
import gradmon
from core.checkpoint import load_checkpoint
from core.spec import load_spec
from gradmon.cli import main
from gradmon.outputs import LOCK_NAME, claim_logdir
from gradmon.run import default_logdir
from tests.test_security import ROOT, TINY, cli, listing, one_error_line, tiny_spec


def test_default_logdirs_are_unique_within_a_second_and_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    existing = tmp_path / "runs" / "r-20260101-000000"
    existing.mkdir(parents=True)
    (existing / "report.json").write_text("{}")
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(default_logdir({"name": "r"}, tmp_path / "runs")))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16 and existing not in made and all(p.is_dir() for p in made)
    assert (existing / "report.json").read_text() == "{}"


def test_a_reused_logdir_is_refused_unless_overwrite_or_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec, logdir = tiny_spec(tmp_path), tmp_path / "run"
    assert main(["run", str(spec), "--logdir", str(logdir), "-q"]) == 0
    first = listing(logdir)
    assert main(["run", str(spec), "--logdir", str(logdir), "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--overwrite" in line and "--resume" in line and listing(logdir) == first  # nothing touched
    for command in (["demo", "healthy"], ["doctor", str(spec)]):  # the same rule, before any training
        assert main([*command, "--logdir", str(logdir), "-q"]) == 2
        assert "is not empty" in one_error_line(capsys.readouterr().err) and listing(logdir) == first
    assert main(["run", str(spec), "--logdir", str(logdir), "-q", "--overwrite"]) == 0
    events = list(logdir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].name not in first  # the old run's files are gone
    assert main(["run", str(spec), "--logdir", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint.npz" in one_error_line(capsys.readouterr().err) and not (tmp_path / "none").exists()
    assert main(["run", str(spec), "--resume"]) == 2
    assert "--resume needs the --logdir" in one_error_line(capsys.readouterr().err)


def test_resume_continues_bit_exactly(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(TINY.format(epochs=4).replace("[train]\n", '[train]\noptimizer = "adam"\nlr = 0.01\n')
                    .replace("hidden = [6]", "hidden = [6]\nbatchnorm = true\ndropout = 0.2"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["run", str(spec), "--logdir", str(straight), "-q"]) == 0
    assert main(["run", str(spec), "--logdir", str(resumed), "-q", "--set", "train.epochs=2"]) == 0
    assert main(["run", str(spec), "--logdir", str(resumed), "-q", "--resume"]) == 0
    net = lambda: core.build.build(load_spec(spec)).trainer  # noqa: E731
    a, b = net(), net()
    load_checkpoint(straight / "checkpoint.npz", a)
    load_checkpoint(resumed / "checkpoint.npz", b)
    assert a.step == b.step == 4 * 3
    for k, v in a.model.state_dict().items():
        assert np.array_equal(v, b.model.state_dict()[k]), k
    for k, v in a.optimizer.state_dict().items():
        assert np.array_equal(v, b.optimizer.state_dict()[k]), k
    report = gradmon.HealthReport.load(resumed)
    assert report.steps == 12 and any("Resumed from" in note for note in report.extra["notes"])
    capsys.readouterr()
    assert main(["run", str(spec), "--logdir", str(resumed), "-q", "--resume", "--set", "train.lr=0.5",
                 "--set", "train.epochs=5"]) == 2
    assert "different spec (train.lr = 0.01 there, 0.5 now)" in one_error_line(capsys.readouterr().err)
    assert main(["run", str(spec), "--logdir", str(resumed), "-q", "--resume"]) == 2
    assert "the run has finished" in one_error_line(capsys.readouterr().err)


def test_two_runs_never_share_a_logdir_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    spec, logdir = tiny_spec(tmp_path, epochs=100_000), tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    first = subprocess.Popen([sys.executable, "-m", "gradmon", "run", str(spec), "--logdir", str(logdir), "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(logdir.glob("events.out.tfevents.*")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        for mode in ([], ["--overwrite"], ["--resume"]):
            assert main(["run", str(tiny_spec(tmp_path)), "--logdir", str(logdir), "-q", *mode]) == 2
            assert f"in use by another gradmon run (pid {first.pid}" in one_error_line(capsys.readouterr().err)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143 and gradmon.HealthReport.load(logdir).ended == "terminated", err
    # a run killed outright leaves its lock behind: the next run sees that no process holds it
    stale = tmp_path / "stale"
    killed = subprocess.run([sys.executable, "-c", "import os, sys; from gradmon.outputs import claim_logdir; "
                             f"claim_logdir({str(stale)!r}); os._exit(0)"], env=env, timeout=60)
    assert killed.returncode == 0 and (stale / LOCK_NAME).exists()
    lock = claim_logdir(stale)
    assert lock.stale.get("pid") and lock.stale["pid"] != str(os.getpid())
    lock.release()
    assert not (stale / LOCK_NAME).exists()


def test_a_full_disk_says_the_report_was_not_written_and_leaves_no_temp_files(tmp_path):
    """A real write failure: files may grow to 1 KiB only (RLIMIT_FSIZE; EFBIG instead of SIGXFSZ)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    logdir = tmp_path / "run"
    proc = cli("run", str(tiny_spec(tmp_path)), "--logdir", str(logdir), "-q", cwd=tmp_path,
               preexec_fn=limit_file_size)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"gradmon: error: the run's report.json could not be written to "
                                                    f"{logdir} (see the errors above)")
    assert "could not write report.json" in proc.stderr and "Traceback" not in proc.stderr
    leftovers = [p.name for p in logdir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no temp files, no write probe, no lock


def test_report_json_comes_first_and_then_lists_what_failed_after_it(tmp_path, monkeypatch):
    from gradmon.findings import RENDERERS
    from gradmon.history import History
    from gradmon.outputs import write_run_files

    order = []
    real_save = gradmon.HealthReport.save

    def save(self, path, history=None):
        order.append(Path(path).name)
        return real_save(self, path, history)

    def broken(report, history):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(gradmon.HealthReport, "save", save)
    monkeypatch.setitem(RENDERERS, ".html", broken)
    history = History(["dense0"], capacity=8)
    history.append(0, {"loss": 1.0}, {})
    errors: list[str] = []
    report = gradmon.HealthReport(spec={}, steps=1, findings=[])
    written = write_run_files(tmp_path, report, history, ("json", "html"), errors, errors.append)
    assert order == ["report.json", "report.html", "report.json"]
    assert [p.name for p in written] == ["history.npz", "report.json"]
    saved = gradmon.HealthReport.load(tmp_path)
    assert len(saved.extra["sink_errors"]) == 1 and "report.html" in saved.extra["sink_errors"][0]
