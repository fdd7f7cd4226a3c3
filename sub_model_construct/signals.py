"""Clean stops on SIGINT and SIGTERM (ARCHITECTURE §3: results are written atomically).

A command line runs inside `stopping_on_signals()`: a signal raises `Interrupted` where the program is, unless it
is inside `deferred()` (writing a result file or a checkpoint), in which case it is raised when that block ends,
so a stop never leaves a half-replaced checkpoint. The command lines turn `Interrupted` into one `error:` line
naming what was interrupted and the last checkpoint, and exit with 128 + the signal number.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"depth": 0, "pending": None, "installed": False}


class Interrupted(BaseException):
    """A stop asked for by a signal. A BaseException, like KeyboardInterrupt, so that no `except Exception` on the
    way (the readers' one-line errors, a loader's fallbacks) mistakes it for a failure of its own."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}{' ' + self.detail if self.detail else ''}"

    def saying(self, detail: str) -> Interrupted:
        """The same stop, told with what it interrupted ("during round 3; last round checkpoint: ...")."""
        return Interrupted(self.signum, detail)


def _handle(signum, _frame) -> None:
    if _state["depth"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block; the previous handlers come back afterwards."""
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _state.update(depth=0, pending=None, installed=True)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.update(depth=0, pending=None, installed=False)


@contextmanager
def deferred() -> Iterator[None]:
    """A block a signal does not cut short (a file or checkpoint being written): the stop comes after it."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending is not None:
            _state["pending"] = None
            raise Interrupted(pending)
