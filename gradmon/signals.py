"""Signals that end a run: SIGTERM and SIGHUP handled like Ctrl-C, and a section that holds them back.

A CI timeout, ``docker stop`` or a scheduler sends SIGTERM; a closed terminal sends SIGHUP.  Under
:func:`termination_as_interrupt` both raise :class:`Terminated`, a ``KeyboardInterrupt``, so a training loop
ends the way it does on Ctrl-C: the callbacks' ``on_exception`` runs and the monitor writes its report, with
``ended = "terminated"``.  The command line exits with ``128 + signal number`` (130 for SIGINT, 143 for
SIGTERM, 129 for SIGHUP), as a shell reports a process killed by that signal.

:func:`held` delays SIGINT, SIGTERM and SIGHUP while a file that must not be lost is written (report.json
takes milliseconds): a signal that arrives meanwhile is delivered, to the handler that was in place, right
after.  Under :func:`termination_as_interrupt` the first ending signal itself starts a hold before it
raises, so a second Ctrl-C that comes at once, while the first one unwinds the training loop, waits too; the
run's ``on_exception`` writes report.json and :func:`release` ends that hold.  A quick second Ctrl-C cannot
cost the report.  Both act in the main
thread only (the only one Python delivers signals to); elsewhere they do nothing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

#: the signals that end a run as an interruption, where the platform has them
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_ENDING = (signal.SIGINT, *_TERMINATING)


class Terminated(KeyboardInterrupt):
    """A run ended by SIGTERM or SIGHUP; it unwinds like Ctrl-C.  ``ended`` is the report's ``ended``."""

    ended = "terminated"

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """``128 + signal number``: 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a process that an interruption ended: 130 for Ctrl-C, ``128 + n`` for signal n."""
    return exc.exit_code if isinstance(exc, Terminated) else 128 + int(signal.SIGINT)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM and SIGHUP raise :class:`Terminated` and SIGINT raises ``KeyboardInterrupt`` (a signal
    the process ignores, as under ``nohup``, stays ignored).  The first of them also starts a hold
    (:func:`held`): signals that follow wait until :func:`release`, so they cannot interrupt the writing of
    the interrupted run's report.  The previous handlers come back on exit (a hold still in force is dropped
    with what it held: the command is ending anyway)."""
    global _hold
    if not _in_main_thread():
        yield
        return
    first = [True]

    def interrupt(signum: int, frame: Any) -> None:
        if first[0]:
            first[0] = False
            _start_hold()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous: dict[int, Any] = {}
    for signum in _ENDING:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or current is None:
            continue
        if signum == signal.SIGINT and current is not signal.default_int_handler:
            continue  # someone else's Ctrl-C handler: left alone
        previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        _hold = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


#: the hold in force: the handlers it replaced and the signals that arrived meanwhile (None: no hold)
_hold: dict[str, Any] | None = None


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back inside; the first one that arrived is raised again when the hold
    ends, to the handler that was in place (so a Ctrl-C then raises ``KeyboardInterrupt`` there).  Inside
    another hold this one changes nothing; :func:`release` ends the hold in force early."""
    global _hold
    if not _in_main_thread() or _hold is not None:
        yield
        return
    _start_hold()
    try:
        yield
    finally:
        release()


def _start_hold() -> None:
    """Put the hold in force: SIGINT, SIGTERM and SIGHUP are recorded, not acted on, until :func:`release`."""
    global _hold
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {}
    for signum in _ENDING:
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN and current is not None:
            previous[signum] = signal.signal(signum, hold)
    _hold = {"previous": previous, "pending": pending}


def release() -> None:
    """End the hold in force now (nothing without one): the handlers come back, and the first signal held
    is raised to its handler."""
    global _hold
    if _hold is None or not _in_main_thread():
        return
    state, _hold = _hold, None
    for signum, handler in state["previous"].items():
        signal.signal(signum, handler)
    if state["pending"]:
        signal.raise_signal(state["pending"][0])
