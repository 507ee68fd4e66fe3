"""Progress bars: tqdm when asked, or by default only when stderr is a terminal (not in CI logs)."""

from __future__ import annotations

import sys


def progress_bar(total: int, progress: bool | None, desc: str, unit: str):
    """A tqdm bar over ``total`` items, or None when progress is off (``progress=None``: auto)."""
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, leave=False)


def write_line(message: str) -> None:
    """One line on stderr that leaves an active progress bar intact (``tqdm.write``)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class LineProgress:
    """Progress as plain lines on stderr, for output that is not a terminal (a CI log, a pipe), where a
    redrawn bar would be noise or nothing at all: one line per finished item, with what it was and the time
    so far.  Offers what callers use of a tqdm bar (``update``, ``total``, ``refresh``, ``close``)."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        import time

        self.total, self.n, self.desc, self.unit = int(total), 0, desc, unit
        self._t0 = time.monotonic()

    def update(self, k: int = 1, note: str = "") -> None:
        import time

        self.n += k
        write_line(f"{self.desc}: {self.unit} {self.n}/{self.total} done"
                   + (f" ({note})" if note else "") + f" [{time.monotonic() - self._t0:.0f} s]")

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress_or_lines(total: int, progress: bool | None, desc: str, unit: str):
    """A tqdm bar in a terminal, :class:`LineProgress` when stderr is not one (``progress=None``), None when
    progress is off (``progress=False``)."""
    bar = progress_bar(total, progress, desc, unit)
    if bar is None and progress is None:
        return LineProgress(total, desc, unit)
    return bar
