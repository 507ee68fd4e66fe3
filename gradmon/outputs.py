"""A run's files: the logdir it claims, the checks before it writes anything, and ``report.json``,
``history.npz`` and ``report.<fmt>`` at its end.

Each file is written independently and atomically (:mod:`core.files`: a temp file with an unpredictable
name, created exclusively, then renamed; removed on any failure): one that cannot be written (a full disk, a
renderer failing on odd input) is reported and the others are still written.  ``report.json`` and
``history.npz`` come first, with Ctrl-C, SIGTERM and SIGHUP held back for the milliseconds they take
(:func:`gradmon.signals.held`), so a second Ctrl-C during the slower HTML report cannot lose them.

A logdir is claimed by one run at a time (:func:`claim_logdir`): a lock file created exclusively (a stale
lock of a process that is gone is taken over), and a directory that already holds files is refused unless
the run is told to ``overwrite`` it or to ``resume`` the run it holds.  Nothing gradmon creates in a logdir
follows a symlink planted there.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

from core.callbacks import RunInfo
from core.files import create_exclusive
from gradmon.findings import HealthReport
from gradmon.history import History
from gradmon.signals import held, release

#: the lock file a run keeps in its logdir while it runs
LOCK_NAME = ".gradmon.lock"
#: the files of a run in its logdir (glob patterns): what ``overwrite`` removes
RUN_FILES = ("events.out.tfevents.*", "report.json", "report.html", "report.md", "history.npz", "checkpoint.npz",
             "doctor.txt", ".*.tmp", ".gradmon-write-test.*")
#: ways to claim a logdir that may already hold files
MODES = ("new", "overwrite", "resume")
#: a remote logdir (``s3://bucket/x``, ``gs:bucket``): gradmon writes local files only
_REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|(?:s3|gs|hdfs|az|abfss?|wasbs?|gcs|file):)")


class LogdirError(OSError, ValueError):
    """A logdir that cannot be used: remote, in use by another run, already holding a run, not writable (an
    OSError, as it always was, and a ValueError: bad input)."""


def spec_from_run(run: RunInfo) -> dict[str, Any]:
    """A spec-like description of a run that did not come from a spec (Python API, other loops)."""
    return {
        "model": {"layers": [{"name": l.name, "kind": l.kind} for l in run.layers]},
        "train": {"loss": run.loss, "optimizer": run.optimizer, **{k: v for k, v in run.hyperparams.items()},
                  "batch_size": run.batch_size, "epochs": run.epochs,
                  "clip_norm": run.clip_norm or 0, "l2": run.l2},
        "framework": run.framework,
    }


def write_run_files(target: Path, report: HealthReport, history: History | None, formats: Sequence[str],
                    sink_errors: list[str], on_failure: Callable[[str], None]) -> list[Path]:
    """Write ``history.npz`` and ``report.<fmt>`` for each of ``formats`` into ``target``; returns the files
    written.  A file that fails is reported through ``on_failure(message)`` (which adds to ``sink_errors``)
    and the others are still written.

    Order: ``history.npz`` and ``report.json`` first, with termination signals held; then the other formats
    (HTML plots take seconds).  When one of those fails, report.json is written again so that its
    ``sink_errors`` list the failure."""
    written: list[Path] = []

    def attempt(name: str, write: Any) -> bool:
        try:
            written.append(write())
            return True
        except Exception as exc:  # one output failing must not cost the others
            on_failure(f"could not write {name}: {type(exc).__name__}: {exc}")
            return False

    def write_json() -> bool:
        if sink_errors:
            report.extra["sink_errors"] = list(sink_errors)
        return attempt("report.json", lambda: report.save(target / "report.json"))

    json_ok = False
    with held():
        if history is not None:
            attempt("history.npz", lambda: history.save(target / "history.npz"))
        if "json" in formats:
            json_ok = write_json()
        release()  # also a hold that began earlier (an interrupted run's): the slow formats stay interruptible
    failures = len(sink_errors)
    for fmt in formats:
        if fmt != "json":
            attempt(f"report.{fmt}", lambda: report.save(target / f"report.{fmt}", history=history))
    if json_ok and len(sink_errors) > failures:
        with held():
            if write_json():  # else the first report.json stands, without the later failure
                written.remove(target / "report.json")  # listed once
    return written


def check_writable(logdir: Path) -> None:
    """A clear error before training when ``logdir`` is remote or cannot be created or written.  The probe
    file has an unpredictable name, is created exclusively (never through a planted symlink) and is
    removed whatever happens."""
    check_local(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / f".gradmon-write-test.{secrets.token_hex(8)}"
        try:
            with create_exclusive(probe) as fh:
                fh.write(b"ok")
        finally:
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass
    except OSError as exc:
        raise LogdirError(f"cannot write to logdir {str(logdir)!r} ({exc.strerror or exc}); "
                          f"choose another --logdir") from None


def check_local(logdir: str | os.PathLike) -> None:
    """LogdirError for a remote logdir (``s3://``, ``gs://``, any ``scheme://``): gradmon writes local files."""
    text = os.fspath(logdir)
    if _REMOTE.match(text):
        raise LogdirError(f"logdir {text!r} is remote: gradmon writes to a local directory (write the run "
                          f"locally, then copy it, e.g. with `aws s3 sync` or `gsutil rsync`)")


# -- claiming a logdir ----------------------------------------------------------------------------------------
class LogdirLock:
    """A run's claim on its logdir: the lock file, held open with an exclusive ``flock`` for the run's
    lifetime (the kernel releases it when the process ends, however it ends), removed by :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        #: the fields (``pid``, ``host``) of a stale lock this one took over ({} when there was none)
        self.stale: dict[str, str] = {}

    def release(self) -> None:
        """Remove the lock file (if it is still this run's) and let go of it (idempotent)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "LogdirLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_logdir(logdir: str | os.PathLike, mode: str = "new") -> LogdirLock:
    """Create ``logdir`` if needed and lock it for this run; returns the lock (release it at the end).

    ``mode``: ``new`` refuses a directory that holds files (another run's, or anything else); ``overwrite``
    removes the run files there (:data:`RUN_FILES`; other files are left alone); ``resume`` needs the
    ``checkpoint.npz`` of the run to continue.  A directory locked by a running process is refused; a lock
    left by a process that is gone is taken over.  Every refusal is one :class:`LogdirError` line.
    """
    if mode not in MODES:
        raise ValueError(f"unknown logdir mode {mode!r}; use one of {', '.join(MODES)}")
    path = Path(logdir)
    check_local(path)
    if mode == "resume" and not (path / "checkpoint.npz").exists():
        raise LogdirError(f"--resume: logdir {str(path)!r} holds no checkpoint.npz to resume from")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LogdirError(f"logdir {str(path)!r} exists and is not a directory; choose another --logdir") from None
    except OSError as exc:
        raise LogdirError(f"cannot create logdir {str(path)!r} ({exc.strerror or exc}); choose another --logdir") \
            from None
    lock = _take_lock(path)
    try:
        held_files = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
        if mode == "new" and held_files:
            hint = "--resume to continue it, " if "checkpoint.npz" in held_files else ""
            shown = ", ".join(held_files[:4]) + (", ..." if len(held_files) > 4 else "")
            raise LogdirError(f"logdir {str(path)!r} is not empty ({shown}); use --overwrite to replace the run "
                              f"there, {hint}or another --logdir")
        if mode == "overwrite":
            _remove_run_files(path)
    except BaseException:
        lock.release()
        raise
    return lock


def _remove_run_files(path: Path) -> None:
    """Remove the files of a previous run (:data:`RUN_FILES`); a symlink is removed, never followed."""
    for pattern in RUN_FILES:
        for p in path.glob(pattern):
            if p.is_symlink() or p.is_file():
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise LogdirError(f"--overwrite: cannot remove {str(p)!r} ({exc.strerror or exc})") from None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _lock_fields(fd: int) -> dict[str, str]:
    """The ``key=value`` fields of a lock file (``pid``, ``host``)."""
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return {}
    return dict(part.split("=", 1) for part in data.split() if "=" in part)


def _take_lock(path: Path) -> LogdirLock:
    """Lock ``path`` for this process: create :data:`LOCK_NAME` exclusively (never through a symlink) and
    hold an exclusive ``flock`` on it.  A lock file that exists but that no process holds (its run was
    killed) is stale and is taken over; one that a process holds is refused."""
    lock_path = path / LOCK_NAME
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(5):
        created = True
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o644)
        except FileExistsError:
            created = False
            try:  # someone's lock: held by a live run, or stale
                fd = os.open(lock_path, os.O_RDWR | os.O_NONBLOCK | nofollow)
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            except OSError as exc:  # a symlink (ELOOP), a FIFO, a directory, a file we may not open
                raise LogdirError(f"logdir {str(path)!r} has a {LOCK_NAME} that is not a gradmon lock "
                                  f"({exc.strerror or exc}); remove it if no run uses the directory, or choose "
                                  f"another --logdir") from None
        except OSError as exc:
            raise LogdirError(f"cannot write to logdir {str(path)!r} ({exc.strerror or exc}); "
                              f"choose another --logdir") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LogdirError(f"logdir {str(path)!r} has a {LOCK_NAME} that is not a gradmon lock; remove it "
                                  f"if no run uses the directory, or choose another --logdir")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fields = _lock_fields(fd)
                raise LogdirError(f"logdir {str(path)!r} is in use by another gradmon run (pid "
                                  f"{fields.get('pid', '?')} on {fields.get('host', '?')}); wait for it to finish "
                                  f"or choose another --logdir") from None
            if not _same_file(fd, lock_path):  # released and removed between our open and our flock
                os.close(fd)
                continue
            stale = {} if created else _lock_fields(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
            lock = LogdirLock(lock_path, fd)
            lock.stale = stale
            return lock
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    raise LogdirError(f"logdir {str(path)!r}: could not take its lock (other runs keep taking it); try again")
