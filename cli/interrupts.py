"""SIGINT and SIGTERM stop every command the same way: an exception where the signal lands, exit 130 / 143.

Python turns SIGINT into KeyboardInterrupt but leaves SIGTERM to kill the process at once, so a
`kill` or a scheduler's stop skipped every `finally` (store transactions, temporary files). `install()`
makes SIGTERM raise `Terminated`, a KeyboardInterrupt, so both unwind alike. The signal is also
remembered: an interrupt that lands where Python can only print it ("Exception ignored in ..." inside
a destructor, an at-fork hook or a C callback) is raised again at the next `raise_if_interrupted()` (every
progress update calls it), and the exit code says which signal came even when the exception was
swallowed or replaced by another one on its way out.
"""

from __future__ import annotations

import signal

NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

_received: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like a Ctrl-C so that the same cleanup runs."""


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum, frame) -> None:
    global _received
    _received = signum
    raise _exception(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (and in the DataLoader workers it forks, which end quietly
    on a KeyboardInterrupt). A signal the parent process set to be ignored (nohup, `&` in a script) stays
    ignored."""
    for signum in NAMES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


def received() -> int | None:
    """The last SIGINT / SIGTERM this process received, or None."""
    return _received


def raise_if_interrupted() -> None:
    """Raise the interrupt again when a signal came but its exception was swallowed on the way."""
    if _received is not None:
        raise _exception(_received)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def message(signum: int) -> str:
    return (f"iimm: {'interrupted' if signum == signal.SIGINT else 'terminated'} ({NAMES[signum]}); finished "
            f"work is kept, run the same command again to resume")
