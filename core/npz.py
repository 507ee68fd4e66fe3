"""Reading ``.npz`` archives safely: sizes checked before any array is read, never a pickle.

An ``.npz`` is a zip of ``.npy`` members, each a small header (dtype, shape) and the raw data.  A member
can declare far more data than the file holds (a compressed run of zeros inflates a thousandfold), and
``np.load`` allocates what the header declares before it reads a byte.  :func:`read_npz` reads every
``.npy`` header first (other members are ignored) and checks, before reading any data: that the file is a
regular file (:func:`core.files.open_regular`), that each header agrees with the member's size in the zip
directory, that no member holds Python objects (reading them would unpickle), and that the declared arrays
fit the caller's byte limit.  Every error is one
``ValueError`` naming the file.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
>>> np.savez(path, X=np.zeros((3, 2)), y=np.arange(3))
>>> {k: v.shape for k, v in read_npz(path, 1 << 20, "data file").items()}
{'X': (3, 2), 'y': (3,)}
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from core.files import _bytes, file_size, open_regular

#: the largest ``.npy`` header read (numpy's own default guard)
MAX_HEADER = 10_000
#: the most members an archive may have
MAX_MEMBERS = 4096


@dataclass(frozen=True)
class Member:
    """What an ``.npy`` member declares: its ``shape``, ``dtype`` and data size in ``nbytes``."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


#: a check of the declared members before any data is read: raises ValueError (its message is prefixed
#: with the file's path)
Check = Callable[[Mapping[str, Member]], None]



class Refused(ValueError):
    """An archive that is readable but refused: over the size limit, or not what the caller expects."""


def read_npz(path: str | os.PathLike, limit: int, what: str = "archive",
             check: Check | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` by name (``"X"`` for member ``X.npy``).

    ``limit``: the most bytes the declared arrays may hold together.  ``check(members)`` (optional) sees the
    declared shapes and dtypes before any data is read and raises ValueError to refuse them (a trainer's
    checkpoint must match its model, say).  Any damage (a truncated or bit-flipped file, a member that is
    not an array, a header that lies) is one ValueError naming the file.
    """
    p = os.fspath(path)
    with open_regular(p, what) as fh:
        try:
            magic = fh.read(6)
            if magic == b"\x93NUMPY":
                raise ValueError("not an .npz archive (it holds one array); save named arrays with "
                                 "np.savez(path, name=array, ...)")
            if not magic.startswith(b"PK"):
                raise ValueError("not an .npz archive (a zip of .npy arrays written by np.savez; pickled or "
                                 "object content is never loaded)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as archive:
                infos = archive.infolist()
                if len(infos) > MAX_MEMBERS:
                    raise ValueError(f"it has {len(infos)} members, over the {MAX_MEMBERS} an archive may have")
                infos = [info for info in infos if info.filename.endswith(".npy")]  # others are never read
                members = {info.filename: _member(archive, info, file_size(fh)) for info in infos}
                total = sum(m.nbytes for m in members.values())
                named = {name[:-4]: m for name, m in members.items()}
                try:
                    if total > limit:
                        raise ValueError(f"its arrays declare {_bytes(total)}, over the {_bytes(limit)} a {what} "
                                         f"may hold")
                    if check is not None:
                        check(named)
                except ValueError as exc:  # a refusal, not damage
                    raise Refused(f"{p}: {exc}") from None
                return {info.filename[:-4]: _read(archive, info, members[info.filename]) for info in infos}
        except Refused:
            raise
        except ValueError as exc:
            raise ValueError(f"{p}: not a readable {what}: {' '.join(str(exc).split())[:200]}") from None
        except Exception as exc:  # damage surfaces as whatever the zip, zlib or header parser raises
            why = " ".join(str(exc).split())[:200]  # one line, however the parser words it
            raise ValueError(f"{p}: not a readable {what} ({type(exc).__name__}: {why})") from None


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int) -> Member:
    """The declared shape and dtype of one member, from its header alone; checked against its size."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise ValueError(f"member {name!r} is encrypted")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError as exc:
            raise ValueError(f"member {name!r}: {exc}") from None
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"member {name!r} has .npy format version {version}; save it with np.savez")
        header = member.tell() if member.seekable() else None
    if dtype.hasobject:
        raise ValueError(f"array {name[:-4]} holds Python objects, and object arrays (pickles) are never loaded")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"array {name[:-4]!r} declares an invalid shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if header is not None and header + nbytes != info.file_size:
        raise ValueError(f"array {name[:-4]!r} declares shape {shape} of {dtype} ({_bytes(nbytes)}), but its member "
                         f"holds {_bytes(max(0, info.file_size - header))}")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size > archive_size:
        raise ValueError(f"member {name!r} is larger than the file")
    return Member(shape=tuple(shape), dtype=dtype, nbytes=nbytes)


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: Member) -> np.ndarray:
    """The data of one member whose header was checked (its size is then bounded by the check)."""
    with archive.open(info) as fh:
        arr = np.lib.format.read_array(fh, allow_pickle=False, max_header_size=MAX_HEADER)
    if arr.shape != member.shape:  # a member changed between the two reads
        raise ValueError(f"array {info.filename[:-4]!r} changed while it was read")
    return arr
