"""Hostile input, generated: specs, command lines, data files, report.json, history.npz and checkpoints.

Two rules are asserted on every case.  The one-line-exit-2 rule: the command line never lets an exception
out, exits 0-3, and on exit 2 writes exactly one line (``gradmon: error: ...``) to stderr, with no control
character anywhere in its output; a library reader raises one ValueError whose message is one line.  And
nothing is written outside the run: each command runs in a fresh sandbox (its own working directory, a
``HOME`` of its own, the inputs beside them), and every path in the sandbox is compared before and after;
only the ``--logdir`` (or the new ``runs/<name>-<time>``), an ``-o`` file and a re-rendered report may change.
(matplotlib is imported first: with a fresh ``HOME`` it would make its own font cache there, as it does
for any program that plots.)

The examples are few so that the suite stays fast; ``GRADMON_FUZZ_EXAMPLES=500`` runs each property longer.
(Over 450 lines: one generator per kind of input, and the sandbox they share.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.build
import gradmon
from core.checkpoint import load_checkpoint
from core.data import load_dataset
from core.spec import load_spec
from gradmon.cli import main
from gradmon.history import History
from gradmon.scenarios import scenario_path
from tests.test_security import ESC, TINY, listing

pytest.importorskip("matplotlib.pyplot")  # imported (its caches found) before any sandbox changes HOME
SCALE = int(os.environ.get("GRADMON_FUZZ_EXAMPLES", "0"))


def examples(n: int) -> settings:
    return settings(max_examples=SCALE or n, deadline=None, database=None, derandomize=not SCALE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# -- hostile values -----------------------------------------------------------------------------------------
TEXTS = ["", " ", "..", "../../x", "/etc/passwd", "s3://bucket/x", "C:\\x", f"a{ESC}b", "\u202eevil", "\x00",
         "x" * 300, "nan", "1e308", "-", "--logdir", "[[[[", '"', "'", "\\", "名前", "relu", "sgd", "full"]
NUMBERS = [0, 1, 2, 3, -1, 10**12, 2**63, 1e308, -1e308, float("nan"), float("inf"), 0.5, 1e-320, True, False]


def deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


values = st.recursive(st.one_of(st.sampled_from(TEXTS), st.sampled_from(NUMBERS), st.none(),
                                st.integers(-5, 300), st.builds(deep, st.integers(10, 60))),
                      lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(TEXTS),
                                                                                        children, max_size=2),
                      max_leaves=6)
SPEC_KEYS = {"": ["name", "seed", "bogus"], "data": ["name", "path", "n_samples", "noise", "test_fraction",
                                                      "n_classes", "task"],
             "model": ["hidden", "activation", "init", "init_std", "bias_init", "batchnorm", "dropout"],
             "train": ["loss", "optimizer", "lr", "momentum", "nesterov", "batch_size", "epochs", "clip_norm",
                       "clip_value", "l2"],
             "monitor": ["every", "curvature_every", "curvature_samples", "thresholds"]}
#: values a spec key may well have: odd but valid ones, so that many cases train (and must write nothing
#: outside their run), the rest are refused
PLAUSIBLE = {
    "name": TEXTS[:11] + ["名前"], "seed": [0, 2**31, 10**30], "n_samples": [2, 3, 40], "noise": [0.0, 1e300],
    "test_fraction": [0.0, 0.99], "n_classes": [2, 7], "task": ["auto", "regression"], "hidden": [[], [1], [9, 9, 9]],
    "activation": ["sigmoid", "tanh", "leaky_relu", "elu"], "init": ["zeros", "normal", "xavier_uniform"],
    "init_std": [1e-30, 1e30], "bias_init": [-1e30, 0.0], "batchnorm": [True], "dropout": [0.0, 0.999],
    "loss": ["mse", "binary_cross_entropy", "auto"], "optimizer": ["sgd", "momentum", "adam", "rmsprop"],
    "lr": [1e-30, 1e30, 0.5], "momentum": [0.0, 1.0], "nesterov": [True], "batch_size": [1, "full", 10**6],
    "epochs": [1, 2], "clip_norm": [1e-30, 1e30], "clip_value": [1e-30], "l2": [1e30, 0.0], "every": [1, 10**9],
    "curvature_every": [1, 10**9], "curvature_samples": [1, 10**9], "path": ["missing.csv"],
    "thresholds": [{}, {"judging": {"open_after": 1}}, {"bogus": {"x": 1}}]}
#: caps on sizes that a valid spec may keep, so that a case that trains stays a tiny run
CAPS = {("data", "n_samples"): 160, ("train", "epochs"): 2, ("monitor", "curvature_samples"): 32}


#: warnings Python does not show a command-line user by default (any other one is an extra stderr line)
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


class Sandbox:
    """A fresh directory tree for one case: ``cwd`` (nested, so ``../..`` stays inside), ``home`` and
    ``inputs``.  :meth:`run` runs the command line in it and checks both rules."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="gradmon-fuzz-"))
        self.cwd = self.base / "a" / "b" / "c" / "work"
        self.home, self.inputs = self.base / "home", self.base / "in"
        for d in (self.cwd, self.home, self.inputs):
            d.mkdir(parents=True)

    def __enter__(self) -> "Sandbox":
        self._saved = os.getcwd(), os.environ.get("HOME")
        os.chdir(self.cwd)
        os.environ["HOME"] = str(self.home)
        return self

    def __exit__(self, *exc: Any) -> None:
        os.chdir(self._saved[0])
        if self._saved[1] is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = self._saved[1]
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        before = listing(self.base)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's --help
                rc = int(exc.code or 0)
        out_text, err_text = out.getvalue(), err.getvalue()
        shown = [w for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)]
        assert not shown, (argv, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in shown])
        assert rc in (0, 1, 2, 3), (argv, rc, err_text)
        assert "Traceback" not in err_text, (argv, err_text)
        if rc == 2:
            lines = err_text.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("gradmon: error: "), (argv, err_text)
        bad = [c for c in out_text + err_text if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) < 0xA0
                                                                or 0x202A <= ord(c) <= 0x202E)]
        assert not bad, (argv, bad[:5])
        self.check_writes(argv, before)
        return rc, out_text, err_text

    def check_writes(self, argv: list[str], before: dict[str, tuple[int, float]]) -> None:
        allowed = [self.cwd / "runs"]
        for flag in ("--logdir", "-o", "--output"):
            allowed += [self.cwd / argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
        if argv and argv[0] == "report":
            allowed += [self.cwd / a for a in argv[1:2]]  # re-rendering a run writes its report.html
        allowed = [Path(os.path.normpath(p)) for p in allowed]
        after = listing(self.base)
        changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
        for p in changed:
            full = Path(os.path.normpath(self.base / p))
            made_for = full.is_dir() and p not in before and any(full in a.parents for a in allowed)  # -o sub/x.md
            assert made_for or any(full == a or a in full.parents for a in allowed), (argv, p, "written outside")


def tiny(directory: Path, name: str = "tiny.toml") -> Path:
    path = directory / name
    path.write_text(TINY.format(epochs=1))
    return path


# -- specs ------------------------------------------------------------------------------------------------------
@st.composite
def specs(draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "fz", "data": {"name": "moons", "n_samples": 80}, "model": {"hidden": [4]},
                            "train": {"epochs": 1}, "monitor": {"curvature_every": 0}}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(list(SPEC_KEYS)))
        key = draw(st.sampled_from(SPEC_KEYS[section]))
        hostile = key not in PLAUSIBLE or draw(st.integers(0, 3)) == 0
        value = draw(values) if hostile else draw(st.sampled_from(PLAUSIBLE[key]))
        if section:
            if not isinstance(spec.get(section), dict):
                spec[section] = {}
            spec[section][key] = value
        else:
            spec[key] = value
    if draw(st.integers(0, 5)) == 0:
        spec[draw(st.sampled_from(["data", "train", "x"]))] = draw(values)  # a section of the wrong type
    for (section, key), cap in CAPS.items():
        v = spec.get(section, {}).get(key) if isinstance(spec.get(section), dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v > cap:
            spec[section][key] = cap
    hidden = spec.get("model", {}).get("hidden") if isinstance(spec.get("model"), dict) else None
    if isinstance(hidden, list) and (len(hidden) > 3 or any(isinstance(h, int) and h > 16 for h in hidden)):
        spec["model"]["hidden"] = [4]
    return spec


def dump(spec: dict[str, Any], path: Path, fmt: str) -> Path:
    if fmt == "json":
        path.write_text(json.dumps(spec))
    else:  # TOML by hand: JSON values are TOML values except null, NaN and infinities
        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, float) and v != v:
                return "nan"
            if isinstance(v, float) and v in (float("inf"), float("-inf")):
                return "inf" if v > 0 else "-inf"
            if isinstance(v, list):
                return "[" + ", ".join(value(x) for x in v) + "]"
            if isinstance(v, dict):
                return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
            return '""' if v is None else json.dumps(v)
        lines = [f"{json.dumps(k)} = {value(v)}" for k, v in spec.items() if not isinstance(v, dict)]
        for k, v in spec.items():
            if isinstance(v, dict):
                lines += [f"[{json.dumps(k)}]", *(f"{json.dumps(kk)} = {value(vv)}" for kk, vv in v.items())]
        path.write_text("\n".join(lines) + "\n")
    return path


@examples(30)
@given(specs(), st.sampled_from(["json", "toml"]))
def test_hostile_specs(spec, fmt):
    with Sandbox() as box:
        path = dump(spec, box.inputs / f"s.{fmt}", fmt)
        box.run(["run", str(path), "-q"])


# -- command lines ----------------------------------------------------------------------------------------------
def sandbox_inputs(box: Sandbox, run_dir: Path) -> dict[str, list[str]]:
    """What a command line may name, by kind: specs (one tiny and valid), runs, logdirs, and files no
    command should read (a FIFO, /dev/zero, a directory, deep nesting, nothing at all)."""
    inputs = box.inputs
    tiny(inputs)
    (inputs / "bad.json").write_text('{"train": {"lr": -1}}')
    (inputs / "deep.json").write_text('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}")
    os.mkfifo(inputs / "fifo.toml")
    (inputs / "zero.toml").symlink_to("/dev/zero")
    shutil.copytree(run_dir, inputs / "run", symlinks=True)
    hostile = [str(inputs / n) for n in ("fifo.toml", "zero.toml", "deep.json", "missing.toml")] + [str(inputs)]
    return {"spec": [str(inputs / "tiny.toml")] * 3 + [str(inputs / "bad.json")] + hostile,
            "run": [str(inputs / "run"), str(inputs / "run" / "report.json")] + hostile,
            "logdir": ["out", "out/sub", "../../up", "s3://bucket/x", str(inputs / "run"), str(box.base / "abs"),
                       f"o{ESC}", str(inputs / "tiny.toml"), ""],
            "other": hostile}


#: flags by command (and the kind of value each takes)
COMMAND_FLAGS = {
    "run": {"--logdir": "logdir", "--set": "set", "--overwrite": None, "--resume": None, "-q": None},
    "check": {"--format": ["text", "json", "markdown", "junit", "", ESC], "--fail-on": ["info", "warning", "nope"]},
    "report": {"-o": ["x.md", "x.json", "x.html", "x.txt", "sub/x.md", "../../up.md", ""]},
    "doctor": {"--logdir": "logdir", "--set": "set", "--format": ["json", "text", "xml"], "--overwrite": None,
               "--budget-steps": ["3", "0", "-1", "x", "1e9"], "--workers": ["1", "0", "-2"]},
    "tune": {"--grid": "grid", "--set": "set", "--mode": ["grid", "random", "x"], "--n-trials": ["1", "0", "-1"],
             "--budget-steps": ["3", "0"], "--format": ["json", "text"], "--seed": ["0", "-1", "x"]},
    "demo": {"--logdir": "logdir", "--set": "set", "--no-fix": None, "--overwrite": None},
}
VALUES = {"set": ["train.lr=0.5", "train.epochs=1e12", "data.n_samples=1e9", "model.hidden=[4]", f'name="{ESC}"',
                  "train.lr=" + "[" * 500 + "]" * 500, "x=1", "=", "train.lr", "monitor.thresholds.x.y=1",
                  'name="../../up"', 'name="/abs"', "train.epochs=2", "model.activation=tanh"],
          "grid": ["train.lr=0.1,0.2", "train.lr=", "model.hidden=[4],[2,2]", "x=1,2", "train.lr=" + "[" * 500,
                   "train.epochs=1e12,1"]}


@st.composite
def command_lines(draw, pools: dict[str, list[str]]) -> list[str]:
    command = draw(st.sampled_from(list(COMMAND_FLAGS) + ["bogus"]))
    own = COMMAND_FLAGS.get(command, {})
    argv = [command]
    if command != "demo" and draw(st.integers(0, 5)):
        argv.append(draw(st.sampled_from(pools["run" if command in ("check", "report") else "spec"] + TEXTS[:6])))
    elif command == "demo":
        argv.append(draw(st.sampled_from(["nothing", "..", ESC, "-x"])))  # a real scenario trains for seconds
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(list(own))) if own and draw(st.integers(0, 4)) else \
            draw(st.sampled_from(["--logdir", "--set", "--format", "-o", "--help", "--bogus", "-q", "--resume"]))
        kind = own.get(flag, "logdir" if flag in ("--logdir", "-o") else "set" if flag == "--set" else None)
        argv.append(flag)
        if isinstance(kind, str) and draw(st.integers(0, 7)):
            argv.append(draw(st.sampled_from(pools["logdir"] if kind == "logdir" else VALUES[kind])))
        elif isinstance(kind, list):
            argv.append(draw(st.sampled_from(kind)))
    if command in ("doctor", "tune"):
        argv += ["--budget-steps", "3"] + (["--workers", "1"] if command == "doctor" else [])
    return argv


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A monitored run with findings, suggestions, curvature, a history and a checkpoint."""
    from gradmon.run import run_spec

    logdir = tmp_path_factory.mktemp("fuzz") / "run"
    spec = load_spec(scenario_path("vanishing"), ["train.epochs=2", "monitor.curvature_every=10",
                                                  "monitor.curvature_samples=64"])
    run_spec(spec, logdir, progress=False, console=False)
    return logdir


@examples(80)
@given(st.data())
def test_hostile_command_lines(real_run, data):
    with Sandbox() as box:
        pools = sandbox_inputs(box, real_run)
        box.run(data.draw(command_lines(pools)))


def test_every_kind_of_logdir_a_user_may_type(real_run):
    """Relative, nested, upwards, absolute, remote, with an escape, an existing run, a file, empty."""
    with Sandbox() as box:
        pools = sandbox_inputs(box, real_run)
        codes = [box.run(["run", pools["spec"][0], "--logdir", logdir, "-q"])[0] for logdir in pools["logdir"]]
    assert codes == [0, 0, 0, 2, 2, 0, 0, 2, 0]  # an empty --logdir is the default one


# -- data files -------------------------------------------------------------------------------------------------
cells = st.sampled_from(["1", "0", "-2.5", "1e308", "-1e308", "nan", "inf", "", " ", "x", '"1"', "1,5", "0x10",
                         "1_0", "\x00", "1e-320"])


@st.composite
def data_files(draw, directory: Path) -> Path:
    kind = draw(st.sampled_from(["csv", "npz", "npz-bytes"]))
    if kind == "csv":
        rows = draw(st.lists(st.lists(cells, min_size=1, max_size=4), max_size=12))
        text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(",".join(r) for r in rows)
        prefix = draw(st.sampled_from(["", "\ufeff", "a,b,y\n", "\ufeffa,b,y\n"]))
        path = directory / "d.csv"
        path.write_bytes((prefix + text).encode("utf-8", "surrogatepass"))
        return path
    shape = draw(st.sampled_from([(), (0,), (5,), (6, 2), (6, 0), (2, 3, 2), (1, 1)]))
    dtype = draw(st.sampled_from(["f8", "f4", "i8", "u1", "?", "U3", "c16", "f2"]))
    with np.errstate(over="ignore", invalid="ignore"):  # a cast overflowing to inf is one more hostile value
        X = np.resize(np.array(draw(st.lists(st.sampled_from(NUMBERS[:12]), min_size=1, max_size=6)),
                               dtype=float), shape).astype(dtype) if shape else np.array(1.0, dtype=dtype)
    y = np.arange(draw(st.integers(0, 7))) % draw(st.integers(1, 3))
    path = directory / "d.npz"
    arrays = {"X": X, "y": y}
    if draw(st.booleans()):
        arrays.pop(draw(st.sampled_from(["X", "y"])))
    np.savez(path, **arrays)
    if kind == "npz-bytes":  # damaged on disk: truncated, or bits flipped
        raw = bytearray(path.read_bytes())
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        else:
            for i in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
                raw[i] ^= 1 << draw(st.integers(0, 7))
        path.write_bytes(bytes(raw))
    return path


def one_line_error(exc: BaseException, must_name: str) -> None:
    message = str(exc)
    assert isinstance(exc, ValueError) and "\n" not in message and must_name in message, repr(exc)


@examples(150)
@given(st.data())
def test_hostile_data_files_are_read_or_refused_in_one_line(tmp_path, data):
    path = data.draw(data_files(tmp_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy complaining means an unchecked value
            ds = load_dataset(path=path, seed=0)
    except ValueError as exc:
        one_line_error(exc, str(path))
    else:
        assert np.isfinite(ds.X_train).all() and len(ds.X_train) >= 1 and ds.X_train.ndim == 2


@examples(8)
@given(st.data())
def test_hostile_data_files_on_the_command_line(data):
    with Sandbox() as box:
        path = data.draw(data_files(box.inputs))
        box.run(["run", str(tiny(box.inputs)), "--set", f"data.path={json.dumps(str(path))}", "-q",
                 "--set", "train.loss=\"auto\""])


# -- report.json, history.npz, checkpoints -------------------------------------------------------------------
def paths_of(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            out += paths_of(v, prefix + (i,))
    return out


@st.composite
def mutated(draw, document: Any) -> Any:
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths_of(doc)))
        if not where:
            return draw(values)
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = draw(values)
    return doc


@examples(60)
@given(st.data())
def test_mutated_reports_render_or_are_refused_in_one_line(real_run, data):
    report = json.loads((real_run / "report.json").read_text())
    doc = data.draw(mutated(report))
    fmt = data.draw(st.sampled_from(["text", "json", "markdown", "md", "html"] + ["text"] * 5))
    with Sandbox() as box:
        run = box.inputs / "run"
        run.mkdir()
        (run / "report.json").write_text(json.dumps(doc))
        if fmt == "html":
            box.run(["report", str(run)])
        elif fmt == "md":
            box.run(["report", str(run), "-o", str(box.cwd / "out.md")])
        else:
            box.run(["check", str(run), "--format", fmt])


@st.composite
def damaged_archive(draw, raw: bytes, arrays: dict[str, np.ndarray], directory: Path, name: str) -> Path:
    path = directory / name
    how = draw(st.sampled_from(["truncate", "flip", "replace", "drop", "add"]))
    if how in ("truncate", "flip"):
        out = bytearray(raw)
        if how == "truncate":
            out = out[: draw(st.integers(0, len(out) - 1))]
        for i in (draw(st.lists(st.integers(0, len(out) - 1), min_size=1, max_size=3)) if how == "flip" else []):
            out[i] ^= 1 << draw(st.integers(0, 7))
        path.write_bytes(bytes(out))
        return path
    arrays = dict(arrays)
    key = draw(st.sampled_from(sorted(arrays)))
    if how == "drop":
        arrays.pop(key)
    elif how == "add":
        arrays[draw(st.sampled_from(["extra", "optimizer/all/v", "model/x", "scalar/loss"]))] = np.zeros(3)
    else:
        arrays[key] = draw(st.sampled_from([np.zeros((2, 2)), np.array("text"), np.array(json.dumps(deep(40))),
                                            np.array([1.5]), np.zeros(0), np.array(["a", "b"]),
                                            np.array('{"format": "core.checkpoint/1", "step": -1}')]))
    np.savez(path, **arrays)
    return path


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@examples(80)
@given(st.data())
def test_damaged_histories_load_or_are_refused_in_one_line(real_run, tmp_path, data):
    path = data.draw(damaged_archive((real_run / "history.npz").read_bytes(), arrays_of(real_run / "history.npz"),
                                     tmp_path, "history.npz"))
    try:
        h = History.load(path)
    except ValueError as exc:
        one_line_error(exc, str(path))
    else:
        assert len(h.steps) == len(h.scalar("loss"))


@examples(80)
@given(st.data())
def test_damaged_checkpoints_are_refused_in_one_line_and_change_nothing(real_run, tmp_path, data):
    path = data.draw(damaged_archive((real_run / "checkpoint.npz").read_bytes(),
                                     arrays_of(real_run / "checkpoint.npz"), tmp_path, "checkpoint.npz"))
    report = gradmon.HealthReport.load(real_run)
    trainer = core.build.build(report.spec).trainer
    before = ({k: v.copy() for k, v in trainer.model.state_dict().items()}, trainer.optimizer.state_dict(),
              trainer.step, trainer.epoch, trainer.rng.bit_generator.state)
    try:
        load_checkpoint(path, trainer)
    except ValueError as exc:
        one_line_error(exc, str(path))
        after = (trainer.model.state_dict(), trainer.optimizer.state_dict(), trainer.step, trainer.epoch,
                 trainer.rng.bit_generator.state)
        assert all(np.array_equal(v, after[0][k]) for k, v in before[0].items())
        assert before[1].keys() == after[1].keys() and before[2:] == after[2:]
