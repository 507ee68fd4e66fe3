"""Progress bars: tqdm when asked, or by default only when stderr is a terminal (not in CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Any


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


class LineProgress:
    """Progress as plain lines on stderr, for output that is not a terminal (a CI log, a pipe), where a
    redrawn bar would be noise or nothing at all: one line per finished item, with what it was and the time
    so far.  Offers what callers use of a tqdm bar (``update``, ``total``, ``refresh``, ``close``)."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.n, self.desc, self.unit = int(total), 0, desc, unit
        self._t0 = time.monotonic()

    def update(self, k: int = 1, note: str = "") -> None:
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


#: seconds between a trial's step lines when progress goes to a log rather than a terminal
STEP_LINE_SECONDS = 10.0


class StepLines:
    """Step progress inside a trial as lines on stderr (a hook-protocol callback): ``tune: lr=0.1: step
    150/300`` at most every ``interval`` seconds, and when the trial ends."""

    def __init__(self, label: str, budget: int | None = None, interval: float = STEP_LINE_SECONDS) -> None:
        self.label, self.budget, self.interval = label, budget, interval
        self.total = 0
        self.step = 0
        self._last = 0.0

    def on_train_begin(self, run: Any) -> None:

        total = int(getattr(run, "total_steps", 0) or 0)
        self.total = min(total, self.budget) if self.budget and total else (self.budget or total)
        self._last = time.monotonic()

    def on_step_end(self, state: Any) -> None:

        self.step = state.step + 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            write_line(f"{self.label}: step {self.step}/{self.total or '?'}")

    def on_train_end(self, logs: Any) -> None:
        write_line(f"{self.label}: finished at step {self.step}/{self.total or '?'}")
