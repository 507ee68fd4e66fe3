"""Atomic writes (core.files): content, permissions from the umask, and nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from core.files import atomic_write, atomic_write_bytes, atomic_write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_text_and_bytes_and_creates_the_directory(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"
    assert atomic_write_text(target, "{}\n") == target
    assert target.read_text() == "{}\n"
    assert atomic_write_bytes(str(target), b"\x00\xff") == target  # a str path works too; replaces the file
    assert target.read_bytes() == b"\x00\xff"
    atomic_write(target, lambda fh: np.save(fh, np.arange(3)))  # a writer that streams into the handle
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp files left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_the_file_gets_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert _mode(path) == mode


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, exc):
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"half a zip")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
