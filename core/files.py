"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The data goes to a temp file in the target's directory (``tempfile.mkstemp``: an unpredictable name opened
with ``O_EXCL``), is flushed and fsynced, gets the mode the umask gives any new file (``0o666 & ~umask``;
mkstemp alone would leave ``0o600``), and is renamed over the target with ``os.replace``.  The directory is
then fsynced (best effort) so the rename survives a crash.  On any failure, Ctrl-C included, the temp file
is removed and the target is untouched.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> atomic_write_text(target, "hello\\n").read_text()
'hello\\n'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically with what ``write(fh)`` writes to a binary file handle.

    Missing parent directories are created.  Returns ``path`` as a :class:`~pathlib.Path`.  Use it for
    writers that stream into a handle (``np.savez(fh, ...)``); :func:`atomic_write_bytes` and
    :func:`atomic_write_text` cover data already in memory.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the rename makes them the file
            _chmod(fh.fileno(), tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Create or replace ``path`` atomically with ``data`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Create or replace ``path`` atomically with ``text`` in ``encoding`` (see :func:`atomic_write`).
    Newlines are written as given (no translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _umask() -> int:
    """The process umask.  Read from /proc on Linux; elsewhere set and restored, which is the only portable
    way (another thread creating a file in between would get mode 0o666 & ~0o022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod(fd: int, path: str, mode: int) -> None:
    """Set ``mode`` on the open temp file (by descriptor where the system can, else by name)."""
    if os.chmod in os.supports_fd:
        os.chmod(fd, mode)
    else:
        os.chmod(path, mode)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some systems cannot open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
