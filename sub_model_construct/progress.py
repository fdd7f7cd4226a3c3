"""Progress a person can read in both places it ends up: a tqdm bar on a terminal, and, when stderr is not a
terminal (CI, `> log`, the table scripts' per-run logs), a plain line per tenth of the work instead of hundreds of
carriage-return frames, e.g. `distill: 81/405 steps, loss 0.1043, 170 s`.

`FEDPFT_PROGRESS=bars` or `=lines` overrides the choice.
"""

from __future__ import annotations

import math
import os
import sys
import time

from tqdm.auto import tqdm

ENV = "FEDPFT_PROGRESS"


def interactive() -> bool:
    """True when progress should be drawn as bars: stderr is a terminal (or FEDPFT_PROGRESS=bars)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bars", "lines"):
        return forced == "bars"
    return sys.stderr.isatty()


class Progress:
    """A bar (`interactive()`) or a line every `ceil(total / lines)` units and at the end (`lines=0`: no lines,
    for work whose caller logs its own line). `update(n, **postfix)` advances it; `close()` ends it."""

    def __init__(
        self, total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "steps", lines: int = 10
    ) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.enabled, self.started, self.postfix = enabled, time.perf_counter(), {}
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False) if enabled and interactive() else None
        self.every = math.ceil(max(total, 1) / lines) if lines > 0 else 0

    def update(self, n: int = 1, **postfix: str) -> None:
        before, self.done = self.done, self.done + n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix)
        elif (
            self.enabled and self.every and (self.done // self.every > before // self.every or self.done == self.total)
        ):
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            seconds = time.perf_counter() - self.started
            print(
                f"{self.desc}: {self.done}/{self.total} {self.unit}{extra}, {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
