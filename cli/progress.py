"""Progress on stderr, fed by the engine's `progress(stage, done, total)` callbacks.

A tqdm bar when stderr is a terminal; plain lines when it is not (a log, a pipe, CI): a stage
that runs longer than `LINE_AFTER_S` gets a line then and every `LINE_EVERY_S` after, and a
last line when it ends. `enabled=None` chooses by the terminal, True forces progress on (a bar or
lines), False turns it off. `notice` prints a one-line message whatever `enabled` says.
"""

from __future__ import annotations

import sys
import time

import click

LINE_AFTER_S = 2.0
LINE_EVERY_S = 10.0
# Below this many steps a bar counts plainly (0/6, not 0.00/6.00) and shows no rate (?it/s before the first step).
SCALED_TOTAL = 1000
SMALL_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

from .interrupts import raise_if_interrupted


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """One bar (or series of lines) per stage."""

    def __init__(self, unit: str = "rows", enabled: bool | None = True):
        self.unit = unit
        self.enabled = enabled is not False
        self.lines = not stderr_is_terminal()
        self._bar = None
        self._stage = None
        self._started = self._last_line = 0.0
        self._printed = False
        self._done = self._total = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        raise_if_interrupted()  # a Ctrl-C swallowed where it landed stops the command at its next step
        if not self.enabled:
            return
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._started = time.monotonic()
            if not self.lines:
                self._bar = new_bar(stage, total, self.unit)
        self._done, self._total = done, total
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            return
        now = time.monotonic()
        due = LINE_EVERY_S if self._printed else LINE_AFTER_S
        if now - (self._last_line if self._printed else self._started) >= due:
            self._line(now)

    def _line(self, now: float) -> None:
        share = f" ({100.0 * self._done / self._total:.0f}%)" if self._total else ""
        click.echo(f"iimm: {self._stage}: {self._done:,}/{self._total:,} {self.unit}{share}, "
                   f"{now - self._started:.0f} s", err=True)
        self._printed, self._last_line = True, now

    def notice(self, message: str) -> None:
        """One line on stderr (between bars, never inside one)."""
        if self._bar is not None:
            self._bar.clear()
        click.echo(f"iimm: {message}", err=True)
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed and self._stage is not None:
            self._line(time.monotonic())
        self._stage = None
        self._printed = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_bar(stage: str, total: int, unit: str):
    """A tqdm bar for one stage on stderr (tqdm is imported here: `iimm CMD --help` does not need it)."""
    from tqdm.auto import tqdm

    if total is not None and total < SCALED_TOTAL:
        return tqdm(total=total, desc=stage, unit=unit, leave=False, bar_format=SMALL_BAR)
    return tqdm(total=total, desc=stage, unit=unit, unit_scale=True, leave=False)
