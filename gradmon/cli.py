"""The ``gradmon`` command line: run, check, report, doctor, tune, demo.

Bad input (a missing file, an unknown key, a wrong type, an impossible value) gives one line on stderr
naming the problem and exit code 2, never a traceback.  A run whose report.json could not be written (a
full disk) exits 3.  Ctrl-C, SIGTERM and SIGHUP end a run with its report written (``ended: interrupted`` or
``terminated``) and exit 130, 143 and 129.  Everything printed has its control and bidi characters escaped
(:func:`core.terminal.printable`): names and messages can come from files the user did not write.
(A little over 450 lines: the parser and one short function per command, in one place.)

    gradmon demo                                   # a pathology and its fix, side by side
    gradmon run examples/specs/moons.toml --set train.lr=0.5
    gradmon check runs/moons-20261124-101500 --fail-on warning
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
#: the run trained, but its report.json could not be written (the console says why)
EXIT_NOT_WRITTEN = 3


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _load_spec(source: str | os.PathLike, overrides: Sequence[str]) -> dict[str, Any]:
    from core.spec import load_spec

    return load_spec(source, overrides)


def _print(line: str = "") -> None:
    from core.terminal import printable

    print(printable(line, keep_newlines=True), flush=True)


def _error(message: object) -> None:
    """One line on stderr: ``gradmon: <message>`` (escaped, newlines included)."""
    from core.terminal import printable

    try:
        print(f"gradmon: {printable(message)}", file=sys.stderr, flush=True)
    except OSError:  # stderr is gone (a closed terminal after SIGHUP): nothing else to do
        pass


def _report_file(files: Sequence[Path]) -> Path | None:
    """Of the report files a run wrote, the one to open: report.html, else report.json, else None."""
    by_name = {Path(p).name: Path(p) for p in files}
    return by_name.get("report.html") or by_name.get("report.json")


def _print_report(prefix: str, files: Sequence[Path], note: str = "") -> None:
    """Print where a run's report is, naming only a file the run wrote (``files``; a reused ``--logdir``
    may hold a stale report.html): report.html, else report.json saying that report.html failed, else
    that no report was written.  ``note`` follows a written path."""
    path = _report_file(files)
    if path is None:
        _print(f"{prefix} not written (see the errors above)")
    elif path.name == "report.html":
        _print(f"{prefix} {path}{note}")
    else:
        _print(f"{prefix} {path} (report.html could not be written: see above){note}")


# -- commands -----------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from gradmon.run import run_spec

    spec = _load_spec(args.spec, args.set)
    logdir = _claim(args, spec)
    result = run_spec(spec, logdir, progress=_progress(args), console=not args.quiet, resume=args.resume)
    _print_report("report:     ", result.reports)
    _print(f"tensorboard: tensorboard --logdir {logdir}   (then http://localhost:6006/#custom_scalars)")
    _print(f"status:      {result.report.status} ({len(result.report.findings)} findings, "
           f"final loss {result.final_loss:.4g})")
    code = _written(logdir, result.reports)
    if code or args.fail_on is None:
        return code
    from gradmon.report.check import exit_code, summary_line

    code = exit_code(result.report, args.fail_on)
    if code:
        _print(summary_line(result.report, args.fail_on))
    return code


def _written(logdir: Path, files: Sequence[Path]) -> int:
    """:data:`EXIT_OK` when the run's report.json is among ``files``, else a line saying it is not and
    :data:`EXIT_NOT_WRITTEN`."""
    if any(Path(p).name == "report.json" for p in files):
        return EXIT_OK
    _error(f"error: the run's report.json could not be written to {logdir} (see the errors above)")
    return EXIT_NOT_WRITTEN


def _claim(args: argparse.Namespace, spec: Mapping[str, Any]) -> Path:
    """The command's logdir (``--logdir``, else a new ``runs/<name>-<time>``), claimed for its run by
    :func:`gradmon.outputs.claim_logdir` (``--overwrite``, ``--resume`` or a new one); :func:`main` releases
    the lock at the end.  ``args.run_dir`` names it for the message on an interrupt."""
    from gradmon.outputs import check_local, claim_logdir
    from gradmon.run import default_logdir

    mode = "resume" if getattr(args, "resume", False) else "overwrite" if getattr(args, "overwrite", False) else "new"
    if args.logdir:
        check_local(args.logdir)
        logdir = Path(args.logdir)
        args.created = [p for p in (logdir, *logdir.parents) if not p.exists()]
    else:
        if mode == "resume":
            raise UsageError("--resume needs the --logdir of the run to continue")
        logdir = default_logdir(spec)
        args.created = [logdir]
    args.lock = claim_logdir(logdir, mode)
    args.run_dir = logdir
    return logdir


def cmd_check(args: argparse.Namespace) -> int:
    from gradmon.findings import HealthReport
    from gradmon.report.check import exit_code, render_many, summary_line

    runs = [(path, HealthReport.load(_run_dir(path))) for path in args.dirs]
    if args.quiet and args.format == "text":
        text = "\n".join(summary_line(r, args.fail_on, name) for name, r in runs)
    else:
        text = render_many(runs, args.format, args.fail_on)
    _print(text.rstrip("\n"))
    return max(exit_code(r, args.fail_on) for _, r in runs)


def cmd_report(args: argparse.Namespace) -> int:
    from gradmon.findings import HealthReport
    from gradmon.history import History

    run_dir = _run_dir(args.dir)
    report = HealthReport.load(run_dir)
    history = History.load(run_dir / "history.npz") if (run_dir / "history.npz").exists() else None
    out = Path(args.output) if args.output else run_dir / "report.html"
    if (out.exists() or out.is_symlink()) and not out.is_file():  # /dev/stdout, a FIFO: never replaced by a file
        raise UsageError(f"-o {out}: not a regular file; name a file for the report (it is written whole, then "
                         f"renamed into place)")
    report.save(out, history=history)
    _print(str(out))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from gradmon.doctor import doctor, render_doctor

    spec = _load_spec(args.spec, args.set)
    logdir = _claim(args, {"name": f"doctor-{spec.get('name') or 'run'}"})
    result = doctor(spec, budget_steps=args.budget_steps, workers=args.workers, progress=_progress(args),
                    logdir=logdir, trial_logs=args.logdir is not None, source=args.spec, overrides=args.set)
    if args.format == "json":
        report = _report_file(result.reports)
        _print(json.dumps({**result.to_dict(), "report": str(report) if report is not None else None}, indent=2,
                          allow_nan=False))
    else:
        _print(render_doctor(result))
        _print("")
        _print_report("report:", result.reports, f"   (the table: {logdir / 'doctor.txt'})")
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from core.tune import parse_grid, search
    from gradmon.doctor import best_trial_line, health_trial, render_leaderboard

    spec = _load_spec(args.spec, args.set)
    grid = parse_grid(args.grid)
    progress = _progress(args)
    trial = health_trial(budget_steps=args.budget_steps, logdir=args.logdir, keys=list(grid),
                         progress=None if progress is None and not sys.stderr.isatty() else progress is None)
    trials = search(spec, grid, trial=trial, mode=args.mode, n_trials=args.n_trials, seed=args.seed,
                    progress=progress)
    if args.logdir:
        from gradmon.sinks.tensorboard import write_experiment

        write_experiment(args.logdir, {k: grid[k][0] for k in grid})
    if args.format == "json":
        _print(json.dumps([t.to_dict() for t in trials], indent=2, allow_nan=False))
    else:
        _print(render_leaderboard(trials))
        _print("")
        _print(best_trial_line(trials, args.spec, args.set))
        if args.logdir:
            _print(f"runs: {args.logdir}   (tensorboard --logdir {args.logdir}: HPARAMS compares the trials)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a scenario, then, for a pathology, the same run with the first fix of the root cause its report
    names (exactly the patch printed: the console's closing lines, the report and ``gradmon check`` name the
    same one)."""
    import tomllib

    from core.spec import apply_patch, load_spec
    from gradmon.report.text import patch_to_cli
    from gradmon.run import hparam_keys, run_spec
    from gradmon.scenarios import FIXES, SCENARIOS, scenario_text

    if args.scenario is not None and args.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {args.scenario!r}; use one of {', '.join(SCENARIOS)}")
    name = args.scenario or "vanishing"
    spec = load_spec(tomllib.loads(scenario_text(name)), args.set)
    root = _claim(args, {"name": f"demo-{name}"})
    with_fix = name in FIXES and not args.no_fix
    _print(f"gradmon demo: {SCENARIOS[name]}" + (" — and the same run with its fix" if with_fix else ""))
    results = []
    # HPARAMS: what differs between the runs (the documented fix until the run names its own)
    expected = FIXES.get(name) if with_fix else None
    compared = {"hparams": hparam_keys(spec, apply_patch(spec, expected)) if expected else hparam_keys(spec)}

    def run(label: str, s: dict[str, Any], note: str = "") -> Any:
        _print(f"\n== {label}{note}")
        logdir = root / label if with_fix else root
        args.run_dir = logdir
        result = run_spec(s, logdir, progress=_progress(args), console=not args.quiet, monitor_options=compared)
        results.append((label, logdir, result))
        return result

    first = run(name, spec)
    fix = first.report.primary_fix
    if with_fix:
        if fix is None or not fix.patch:
            _print(f"\n(no fix to run: this run of {name} found no root cause with a spec patch)")
        else:
            patch = dict(fix.patch)
            compared = {"hparams": hparam_keys(spec, apply_patch(spec, patch))}
            run(f"{name}-fixed", apply_patch(spec, patch), f"  (the root cause's first fix: {patch_to_cli(patch)})")
    _print("")
    for line in demo_table([(label, r) for label, _, r in results]):
        _print(line)
    _print("")
    for label, _, r in results:
        _print_report(f"report ({label}):", r.reports)
    _print(f"open the dashboards: tensorboard --logdir {root}   (then http://localhost:6006, tab CUSTOM SCALARS)")
    _print(f"gate a CI job on it:  gradmon check {results[0][1]} --fail-on warning")
    return EXIT_OK


def demo_table(results: Sequence[tuple[str, Any]]) -> list[str]:
    """The demo's summary: one row per run (status, loss, accuracy, every finding code with info ones
    marked), then the first message of each finding code, so a pathology is visible even when it is only
    informational."""
    from gradmon.findings import severity_rank
    from gradmon.report.text import patch_to_cli

    with_val = all(r.n_validation for _, r in results)
    loss_head = "val loss" if with_val else "train loss"
    lines = [f"{'run':<22} {'status':<8} {loss_head:>10} {'accuracy':>9}  findings"]
    notes: list[str] = []
    for label, r in results:
        loss = (r.train_history.get("val_loss") or [math.nan])[-1] if with_val else r.final_loss
        acc = r.final_accuracy
        first: dict[str, Any] = {}
        for f in sorted(r.report.findings, key=lambda f: -severity_rank(f.severity)):
            first.setdefault(f.code, f)
        codes = ", ".join(code + (" (info)" if f.severity == "info" else "") for code, f in first.items()) or "-"
        lines.append(f"{label:<22} {r.report.status:<8} {loss:>10.4g} "
                     f"{(f'{acc:.1%}' if acc is not None else '-'):>9}  {codes}")
        notes += [f"  {label}: {f.severity.upper()} {code}: {f.message}" for code, f in first.items()]
        root, fix = r.report.root_cause, r.report.primary_fix
        if root is not None:
            notes.append(f"  {label}: root cause {root.code}" + (f" in {root.layer}" if root.layer else "")
                         + (f"; first fix: {fix.text}" + (f"  ({patch_to_cli(fix.patch)})" if fix.patch else "")
                            if fix is not None else ""))
    if notes:
        lines += ["", "what was found (first finding of each kind; info = worth knowing, not a failure):", *notes]
    return lines


# -- plumbing -------------------------------------------------------------------------------------------------
def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) or getattr(args, "quiet", False) else None


def _run_dir(path: str) -> Path:
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return p.parent
    if not p.exists():
        raise UsageError(f"no such run directory: {path}")
    if not (p / "report.json").exists():
        raise UsageError(f"{path} has no report.json: is it a gradmon run directory?")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradmon")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradmon", description="A diagnostic training monitor for neural networks.")
    parser.add_argument("--version", action="version", version=f"gradmon {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or finding lines")

    p = sub.add_parser("run", help="train a spec with the monitor")
    p.add_argument("spec", help="a TOML or JSON run spec")
    p.add_argument("--logdir", help="where events and reports go (default runs/<name>-<time>); a directory that "
                   "holds files is refused unless --overwrite or --resume")
    reuse = p.add_mutually_exclusive_group()
    reuse.add_argument("--overwrite", action="store_true", help="replace the run in --logdir (its events, reports, "
                       "history and checkpoint)")
    reuse.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint.npz "
                       "(same spec; raise train.epochs to train longer): bitwise the run it would have been")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    p.add_argument("--fail-on", choices=("info", "warning", "error"), default=None,
                   help="exit 1 when the run has a finding at or above this severity (default: exit 0)")
    common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="print the findings of finished runs; exit 1 at --fail-on or if a run did "
                       "not finish")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (with report.json)")
    p.add_argument("--fail-on", choices=("info", "warning", "error"), default="error")
    p.add_argument("--format", choices=("text", "json", "markdown", "junit", "github"), default="text",
                   help="junit: JUnit XML for CI test reports; github: GitHub Actions annotations")
    p.add_argument("-q", "--quiet", action="store_true", help="one summary line per run")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help="(re)write the health report of a run")
    p.add_argument("dir", help="a run directory (with report.json)")
    p.add_argument("-o", "--output", help="output file: .html (default), .md or .json")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("doctor", help="try the suggested fixes in short trials and rank them")
    p.add_argument("spec")
    p.add_argument("--budget-steps", type=int, default=300, help="steps per trial (default 300)")
    p.add_argument("--workers", type=int, default=None, help="parallel trial processes (default: cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--logdir", help="where the baseline's report (with the ranking), doctor.txt and each trial's "
                   "events and reports go (default runs/doctor-<name>-<time>, baseline and table only)")
    p.add_argument("--overwrite", action="store_true", help="replace what a previous doctor wrote in --logdir")
    common(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("tune", help="grid or random search with health-aware pruning")
    p.add_argument("spec")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True)
    p.add_argument("--mode", choices=("grid", "random"), default="grid")
    p.add_argument("--n-trials", type=int, default=None, help="random search: number of trials")
    p.add_argument("--budget-steps", type=int, default=None, help="cut each trial at this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--logdir", help="keep every trial's run (events, report) in DIR/<key=value,...>, with one "
                   "HPARAMS experiment over the grid's keys (default: nothing written)")
    common(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("demo", help="run a built-in scenario beside its fix (default: vanishing gradients)")
    p.add_argument("scenario", nargs="?", help="vanishing (default), exploding, dead-relu, saturation, sharpness, "
                   "healthy")
    p.add_argument("--no-fix", action="store_true", help="run the scenario alone, without its fix beside it")
    p.add_argument("--logdir", help="where the runs go (default runs/demo-<scenario>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace what a previous demo wrote in --logdir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gradmon.signals import termination_as_interrupt

    with termination_as_interrupt():  # SIGTERM and SIGHUP end a run like Ctrl-C, with its report
        args = argparse.Namespace()
        try:
            return _main(argv, args)
        except KeyboardInterrupt as exc:
            return _interrupted(args, exc)
        finally:
            lock = getattr(args, "lock", None)
            if lock is not None:
                lock.release()
            for directory in getattr(args, "created", []):  # made for a command that failed before writing
                try:
                    directory.rmdir()
                except OSError:  # not empty: the run's files
                    break


def _main(argv: Sequence[str] | None, args: argparse.Namespace) -> int:
    parser = build_parser()
    try:
        parser.parse_args(argv, namespace=args)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.func(args))
    except UsageError as exc:
        _error(f"error: {exc}")
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, ImportError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _error(f"error: {message}")
        return EXIT_USAGE
    except BrokenPipeError:  # `gradmon check DIR | head -1`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except OSError as exc:
        _error(f"error: {exc}")
        return EXIT_USAGE
    except MemoryError:
        _error("error: out of memory: make the data (data.n_samples) or the model (model.hidden) smaller")
        return EXIT_USAGE
    except RecursionError:
        _error("error: the input is nested too deeply")
        return EXIT_USAGE


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """Say where an interrupted or terminated run's files are; the exit code of its signal (130 for Ctrl-C,
    143 for SIGTERM, 129 for SIGHUP)."""
    from gradmon.signals import exit_code

    how = "terminated" if getattr(exc, "ended", "") == "terminated" else "interrupted"
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None and (Path(run_dir) / "report.json").exists():
        _error(f"{how}; the partial run's report.json and event files are in {run_dir}")
    else:
        _error(f"{how} before a report was written")
    return exit_code(exc)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
