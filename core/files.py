"""Files, written and read safely: atomic writes, exclusive creation, and bounded reads of regular files.

Writes are atomic: a reader sees the old file or the new one, never a half-written one.

The data goes to a temp file in the target's directory (``tempfile.mkstemp``: an unpredictable name opened
with ``O_EXCL``), is flushed and fsynced, gets the mode the umask gives any new file (``0o666 & ~umask``;
mkstemp alone would leave ``0o600``), and is renamed over the target with ``os.replace``.  The directory is
then fsynced (best effort) so the rename survives a crash.  On any failure, Ctrl-C included, the temp file
is removed and the target is untouched.

A file that must be new (an event file, a lock) is created with :func:`create_exclusive`: ``O_EXCL`` and
``O_NOFOLLOW``, so a name planted in a shared directory (a symlink to someone's file, a file already there)
makes the creation fail instead of writing through it.  Temp files get unpredictable names (``mkstemp``).

Reads go through :func:`open_regular`: only a regular file is read (a FIFO would block forever, ``/dev/zero``
never ends), and :func:`read_bounded` refuses a file larger than the caller's limit before reading it.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> atomic_write_text(target, "hello\\n").read_text()
'hello\\n'
>>> read_bounded(target, 1024, "a note")
b'hello\\n'
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

#: flags for a new file that must not exist yet and whose last component must not be a symlink
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


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


def create_exclusive(path: str | os.PathLike, mode: int = 0o666) -> BinaryIO:
    """A new file at ``path`` opened for binary writing: fails (``FileExistsError``, or ``OSError`` ELOOP for
    a symlink) when anything, a symlink included, is already there, so nothing is ever written through a
    planted name.  ``mode`` is filtered by the umask, as for any new file."""
    fd = os.open(os.fspath(path), _CREATE_FLAGS, mode)
    return os.fdopen(fd, "wb")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading, or ``ValueError`` naming it when it is not a regular file (a
    directory, a FIFO, a device such as ``/dev/zero``, a socket) or cannot be opened.  The file is opened
    without blocking (a FIFO with no writer would block forever) and checked on the open descriptor, so it
    cannot be swapped between the check and the read.  Symlinks are followed: the user named the file."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: the {what} is a directory, not a regular file") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot open the {what} ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{p}: the {what} is {_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_size(fh: BinaryIO) -> int:
    """The size in bytes of an open file."""
    return os.fstat(fh.fileno()).st_size


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), or ``ValueError`` naming it when it
    holds more than ``limit`` bytes (checked before reading, and again while reading, for a file that grows)."""
    with open_regular(path, what) as fh:
        size = file_size(fh)
        if size > limit:
            raise ValueError(f"{os.fspath(path)}: the {what} is {_bytes(size)}, over the {_bytes(limit)} a {what} "
                             f"may have")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ValueError(f"{os.fspath(path)}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)}: the {what} grew over the {_bytes(limit)} a {what} may have")
    return data


def read_bounded_text(path: str | os.PathLike, limit: int, what: str = "file") -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped), read by :func:`read_bounded`;
    ``ValueError`` naming the file when it is not UTF-8."""
    data = read_bounded(path, limit, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{os.fspath(path)}: the {what} is not UTF-8 text (byte {exc.start})") from None


def nesting_depth(value: object, limit: int) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), counted without recursion and
    stopping once ``limit`` is passed (so a hostile document costs at most its size)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{int(n)} bytes"
        n /= 1024
    return f"{n:.3g} TiB"


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
