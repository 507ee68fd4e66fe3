"""Security and data safety of a run's files, as an attacker sharing a directory or an unlucky user would test
them: nothing is written through a planted symlink or outside the logdir, a spec's name never becomes a path
elsewhere, what reaches the terminal is escaped, files are read only when regular and bounded, and a logdir
belongs to one run at a time (refused when reused, unless --overwrite or --resume)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import core
import core.build
import gradmon
from core.data import load_dataset, load_file
from core.files import create_exclusive
from core.spec import SpecError, load_spec
from core.terminal import printable
from gradmon.cli import main
from gradmon.outputs import LOCK_NAME, LogdirError
from gradmon.run import safe_name

ROOT = Path(__file__).resolve().parents[1]
TINY = ('name = "tiny"\n[data]\nname = "moons"\nn_samples = 120\n[model]\nhidden = [6]\n[train]\nepochs = {epochs}\n'
        '[monitor]\ncurvature_every = 0\n')
ESC = "\x1b[2J\x1b[H"
BIDI = "\u202e"


def tiny_spec(directory: Path, epochs: int = 1, name: str = "tiny.toml") -> Path:
    path = directory / name
    path.write_text(TINY.format(epochs=epochs))
    return path


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (symlinks not followed) with its size and mtime (files and links; a
    directory only by its name: its mtime changes with what is made in it, which is checked on its own)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (0, 0) if name in dirnames else (st.st_size, st.st_mtime_ns)
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradmon: error: ") and "Traceback" not in err, err
    return lines[0]


def cli(*args: str, cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``gradmon *args`` in a real process; its peak memory (kB) is printed after its stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    code = ("import resource, sys; from gradmon.cli import main; rc = main(sys.argv[1:]); "
            "sys.stderr.flush(); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, **kw)
    *lines, rss = proc.stderr.rstrip("\n").split("\n")
    proc.stderr, proc.max_rss_kb = "\n".join(lines) + ("\n" if lines else ""), int(rss)
    return proc


# -- symlinks planted in a logdir are never followed ---------------------------------------------------------
PLANTED = ("report.json", "report.html", "history.npz", "checkpoint.npz", ".gradmon-write-test",
           ".history.npz.tmp.npz", f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}",
           f"events.out.tfevents.{int(time.time()) + 1}.{socket.gethostname()}")


def plant(logdir: Path, victims: Path) -> dict[Path, bytes]:
    logdir.mkdir(parents=True)
    victims.mkdir()
    planted = {}
    for i, name in enumerate(PLANTED):
        victim = victims / f"victim{i}"
        victim.write_bytes(b"precious %d" % i)
        (logdir / name).symlink_to(victim)
        planted[victim] = victim.read_bytes()
    return planted


def test_the_monitor_never_writes_through_symlinks_planted_in_its_logdir(tmp_path):
    logdir, victims = tmp_path / "shared", tmp_path / "victims"
    planted = plant(logdir, victims)
    spec = load_spec(tiny_spec(tmp_path))
    from gradmon.run import run_spec

    run_spec(spec, logdir, progress=False, console=False)
    for victim, content in planted.items():
        assert victim.read_bytes() == content, victim
    for name in ("report.json", "history.npz", "checkpoint.npz"):
        assert not (logdir / name).is_symlink()  # replaced by the run's own file, the link removed
    assert gradmon.HealthReport.load(logdir).ended == "completed"
    events = [p for p in logdir.glob("events.out.tfevents.*") if not p.is_symlink()]
    assert len(events) == 1 and events[0].name.split(".")[-2] == str(os.getpid())  # pid and a random suffix
    assert not list(logdir.glob(".gradmon-write-test.*")) and not list(logdir.glob(".*.tmp"))


def test_the_cli_never_writes_through_symlinks_and_refuses_a_planted_lock(tmp_path, capsys):
    logdir, victims = tmp_path / "shared", tmp_path / "victims"
    planted = plant(logdir, victims)
    spec = tiny_spec(tmp_path)
    assert main(["run", str(spec), "--logdir", str(logdir), "-q"]) == 2  # not empty: refused, nothing touched
    assert "is not empty" in one_error_line(capsys.readouterr().err)
    (logdir / LOCK_NAME).symlink_to(victims / "victim0")
    assert main(["run", str(spec), "--logdir", str(logdir), "-q", "--overwrite"]) == 2
    assert "not a gradmon lock" in one_error_line(capsys.readouterr().err)
    (logdir / LOCK_NAME).unlink()
    assert main(["run", str(spec), "--logdir", str(logdir), "-q", "--overwrite"]) == 0
    for victim, content in planted.items():
        assert victim.read_bytes() == content, victim
    assert not (logdir / LOCK_NAME).exists()  # released at exit


def test_files_that_must_be_new_are_created_exclusively_never_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(OSError):
            create_exclusive(tmp_path / name)
    assert victim.read_text() == "precious" and not (tmp_path / "nowhere").exists()


# -- a spec's name never becomes a path outside runs/ -------------------------------------------------------
@pytest.mark.parametrize("name", ["/ABS/escaped", "../../x", "..", "a/../../b", f"x{ESC}y", f"{BIDI}evil",
                                  "C:\\temp\\x", "\x00nul", "....//....//z"])
def test_a_spec_name_is_one_safe_path_component(tmp_path, monkeypatch, capsys, name):
    base = tmp_path / "base"
    cwd = base / "a" / "b" / "c" / "work"
    cwd.mkdir(parents=True)
    name = name.replace("/ABS", str(base))
    spec = tiny_spec(cwd)
    monkeypatch.chdir(cwd)
    before = listing(base)
    assert main(["run", str(spec), "--set", f"name={json.dumps(name)}", "-q"]) == 0
    (run,) = (cwd / "runs").iterdir()
    assert run.parent == cwd / "runs" and run.name.startswith(safe_name(name) + "-")
    new = set(listing(base)) - set(before)
    assert all(p.startswith(str(Path("a/b/c/work/runs"))) for p in new), sorted(new)
    out = capsys.readouterr().out
    assert "\x1b" not in out and BIDI not in out


def test_safe_name():
    assert safe_name("/etc/passwd") == "etc_passwd" and safe_name("../..") == "run"
    assert safe_name("moons-2") == "moons-2" and safe_name("a b\tc") == "a_b_c"
    assert all("/" not in safe_name(n) and not safe_name(n).startswith(".") for n in ("/", "../x", ".x", "a/./b"))


# -- the terminal sees escapes, never control or bidi characters --------------------------------------------
def test_printable_escapes_controls_and_bidi_and_keeps_text():
    assert printable("dense0 λ 😀") == "dense0 λ 😀"
    assert printable(f"a{ESC}b{BIDI}c\x9b\u2066") == "a\\x1b[2J\\x1b[Hb\\u202ec\\x9b\\u2066"
    assert printable("one\ntwo", keep_newlines=True) == "one\ntwo" and printable("one\ntwo") == "one\\x0atwo"


def test_check_of_a_crafted_report_cannot_write_to_the_terminal(tmp_path, capsys):
    report = gradmon.HealthReport(spec={"name": f"n{ESC}"}, steps=5, ended=f"completed{ESC}", findings=[
        gradmon.Finding("dead_units", "error", f"{BIDI}dense0", 1, 4, f"{ESC}status: healthy\r\x07", {})])
    report.save(tmp_path / "report.json")
    for fmt in ("text", "markdown", "json"):
        assert main(["check", str(tmp_path), "--format", fmt]) == 1
        out = capsys.readouterr().out
        assert not any(ch in out for ch in "\x1b\r\x07" + BIDI), (fmt, out)
        assert "status: healthy" in out  # the crafted text is shown, as text
    assert main(["check", str(tmp_path / f"no{ESC}such")]) == 2
    assert "\x1b" not in one_error_line(capsys.readouterr().err)


def test_console_sink_and_cli_prints_escape_layer_names_and_paths(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(64, 2)) * 1e3
    y = (X[:, 0] > 0).astype(int)
    net = core.Sequential([core.Dense(2, 8, name=f"evil{ESC}{BIDI}0"), core.ReLU(),
                           core.Dense(8, 2, name=f"evil{ESC}{BIDI}1")], seed=0)
    monitor = gradmon.Monitor(console=True, curvature_every=0)
    core.Trainer(net, optimizer=core.SGD(1e6), batch_size=16, callbacks=[monitor], progress=False).fit(X, y, epochs=2)
    err = capsys.readouterr().err
    assert "nonfinite_values" in err and "evil\\x1b[2J" in err and "\x1b" not in err and BIDI not in err
    logdir = tmp_path / f"out{ESC}"
    assert main(["run", str(tiny_spec(tmp_path)), "--logdir", str(logdir), "-q"]) == 0
    captured = capsys.readouterr()
    assert "out\\x1b[2J" in captured.out and "\x1b" not in captured.out + captured.err


# -- reads: regular files only, sizes checked before reading ------------------------------------------------
@pytest.fixture
def fifo(tmp_path):
    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path
    return make


def test_fifos_and_devices_are_refused_by_every_command_at_once(tmp_path, fifo):
    spec = tiny_spec(tmp_path)
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    run_fifo = tmp_path / "r1"
    fifo(run_fifo / "report.json")
    hist_run = tmp_path / "r2"
    hist_run.mkdir()
    gradmon.HealthReport(spec={}, steps=0, findings=[]).save(hist_run / "report.json")
    fifo(hist_run / "history.npz")
    resume_run = tmp_path / "r3"
    fifo(resume_run / "checkpoint.npz")
    cases = [("run", str(fifo(tmp_path / "spec.toml"))), ("run", str(tmp_path / "zero.toml")),
             ("run", str(spec), "--set", f'data.path="{fifo(tmp_path / "data.csv")}"'),
             ("run", str(spec), "--set", f'data.path="{fifo(tmp_path / "data.npz")}"'),
             ("run", str(spec), "--set", f'data.path="{tmp_path / "zero.csv"}"'),
             ("check", str(run_fifo)), ("report", str(run_fifo)), ("report", str(hist_run)),
             ("run", str(spec), "--logdir", str(resume_run), "--resume")]
    for args in cases:
        proc = cli(*args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        line = one_error_line(proc.stderr)
        assert "FIFO" in line or "character device" in line, line


def test_a_report_is_never_written_over_a_fifo_or_a_device(tmp_path, fifo, capsys):
    run = tmp_path / "run"
    run.mkdir()
    gradmon.HealthReport(spec={}, steps=0, findings=[]).save(run / "report.json")
    (tmp_path / "null.md").symlink_to(os.devnull)
    for out in (fifo(tmp_path / "pipe.md"), tmp_path / "null.md"):
        assert main(["report", str(run), "-o", str(out)]) == 2
        assert "not a regular file" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "null.md").is_symlink() and os.readlink(tmp_path / "null.md") == os.devnull


def test_an_npz_declaring_more_than_it_holds_is_refused_before_any_data_is_read(tmp_path):
    """7 MiB on disk declaring 1.6 GB of X: refused from the headers, the process never grows."""
    import zipfile

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("X.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (200_000_000, 1)})
            for _ in range(200):
                fh.write(bytes(8_000_000))
        with z.open("y.npy", "w") as fh:
            np.save(fh, np.zeros(10))
    assert path.stat().st_size < 8 * 2**20
    np.savez(tmp_path / "small.npz", X=np.zeros((4, 1)), y=np.array([0, 1, 0, -1]))
    runs = [cli("run", str(tiny_spec(tmp_path)), "--set", f'data.path="{data}"', "--logdir", str(tmp_path / "r"),
                cwd=tmp_path) for data in (path, tmp_path / "small.npz")]
    assert runs[0].returncode == 2 and "200,000,000 examples" in one_error_line(runs[0].stderr)
    assert runs[1].returncode == 2 and ">= 0" in one_error_line(runs[1].stderr)  # the same path, read whole
    assert runs[0].max_rss_kb - runs[1].max_rss_kb < 64 * 1024  # kB: never the declared 1.6 GB


def test_oversized_spec_and_csv_are_refused_by_their_size(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(SpecError, match="over the 1 MiB"):
        load_spec(big)
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as fh:  # sparse: no disk used, but 300 MiB to read
        fh.truncate(300 * 2**20)
    with pytest.raises(ValueError, match="over the 256 MiB"):
        load_file(huge)


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    rows = "1.5,2,0\n3,4,1\n5,6,0\n7,8.25,1\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    (tmp_path / "header.csv").write_bytes(b"\xef\xbb\xbfx1,x2,label\n" + rows.encode())
    for name in ("bom.csv", "header.csv"):
        X, y = load_file(tmp_path / name)
        assert X.tolist() == [[1.5, 2], [3, 4], [5, 6], [7, 8.25]] and y.tolist() == [0, 1, 0, 1], name


def test_values_near_the_float64_limit_are_standardised_not_nan(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (40, 3)) * np.array([1.7e308, 1.0, 1e300])
    y = (X[:, 1] > 0).astype(int)
    np.savez(tmp_path / "big.npz", X=X, y=y)
    np.savez(tmp_path / "scaled.npz", X=X / np.array([1e300, 1.0, 1e300]), y=y)
    big = load_dataset(path=tmp_path / "big.npz", seed=1)
    scaled = load_dataset(path=tmp_path / "scaled.npz", seed=1)
    assert np.isfinite(big.X_train).all()
    np.testing.assert_allclose(big.X_train, scaled.X_train, rtol=1e-12, atol=1e-12)  # the same standardisation


def test_a_zero_dimensional_x_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "zerod.npz", X=np.array(1.0), y=np.array([1]))
    assert main(["run", str(tiny_spec(tmp_path)), "--set", f'data.path="{tmp_path / "zerod.npz"}"']) == 2
    assert "zerod.npz: X must be 2-D" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no empty run left


@pytest.mark.parametrize("setting,key", [("train.epochs=1e12", "train.epochs"), ("train.epochs=4e8", "train.epochs")])
def test_an_impossible_number_of_steps_is_refused(tmp_path, monkeypatch, capsys, setting, key):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny_spec(tmp_path)), "--set", setting]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert key in line and "over the limit" in line
    csv = tmp_path / "d.csv"
    csv.write_text("".join(f"{i},{i % 2}\n" for i in range(50)))
    with pytest.raises(SpecError, match="train.epochs"):
        core.build.build(load_spec({"data": {"path": str(csv)}, "train": {"epochs": 10**9}}))


@pytest.mark.parametrize("kind", ["toml", "json", "set", "grid", "report"])
def test_deep_nesting_is_one_line(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    deep = "[" * 5000 + "]" * 5000
    spec = tiny_spec(tmp_path)
    if kind == "toml":
        (tmp_path / "d.toml").write_text(f"x = {deep}\n")
        args = ["run", str(tmp_path / "d.toml")]
    elif kind == "json":
        (tmp_path / "d.json").write_text('{"x": ' + "[" * 200_000 + "]" * 200_000 + "}")
        args = ["run", str(tmp_path / "d.json")]
    elif kind == "set":
        args = ["run", str(spec), "--set", f"train.lr={deep}"]
    elif kind == "grid":
        args = ["tune", str(spec), "--grid", f"train.lr={deep}"]
    else:
        (tmp_path / "report.json").write_text('{"schema": "gradmon.report/1", "spec": ' + '{"a": ' * 900 + "1"
                                              + "}" * 900 + "}")
        args = ["check", str(tmp_path)]
    assert main(args) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("logdir", ["s3://bucket/run", "gs://bucket/run", "s3:bucket/run", "hdfs://nn/x"])
def test_remote_logdirs_are_one_line(tmp_path, monkeypatch, capsys, logdir):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny_spec(tmp_path)), "--logdir", logdir]) == 2
    assert "is remote" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]
    with pytest.raises(LogdirError):
        gradmon.Monitor(logdir=logdir)


def test_a_tensorboard_sink_that_cannot_be_created_never_stops_training(tmp_path, monkeypatch, capsys):
    import gradmon.sinks.tensorboard as tb

    def refuse(logdir):
        raise ValueError("no such event file backend")  # what tensorboardX raised for remote paths

    monkeypatch.setattr(tb, "EventFile", refuse)
    assert main(["run", str(tiny_spec(tmp_path)), "--logdir", str(tmp_path / "r"), "-q"]) == 0
    assert capsys.readouterr().err.count("tensorboard sink failed") == 1
    report = gradmon.HealthReport.load(tmp_path / "r")
    assert report.ended == "completed" and any("tensorboard" in e for e in report.extra["sink_errors"])
