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
    """One line on stderr that leaves an active progress bar intact (``tqdm.write``); control and bidi
    characters escaped (:func:`core.terminal.printable`)."""
    from tqdm import tqdm

    from core.terminal import printable

    tqdm.write(printable(message), file=sys.stderr)
