"""Stopping a training run promptly on SIGINT / SIGTERM, wherever the signal lands.

Python raises KeyboardInterrupt where the main thread happens to be; when that is inside a
callback whose exceptions are only reported (an at-fork hook run while a DataLoader worker is
forked prints "Exception ignored in: <function _releaseLock ...>"), the interrupt is lost and
training runs on. `StopSignals` raises at once as usual and also remembers the signal, and
`check()` (called between batches, before and after validation) raises it again when an earlier
raise was swallowed. The exception is the one the handler installed before would raise (the
command line's process-wide handler: it also records the signal for the exit code, 130 / 143);
without one, SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(143), the shell's code for a
process ended by SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGTERM_EXIT = 128 + signal.SIGTERM


class StopSignals:
    """Context manager: while active (in the main thread), SIGINT and SIGTERM stop the run (see the module)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._deferring = False

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum
        if not self._deferring:
            self._raise()

    @contextlib.contextmanager
    def deferred(self):
        """A block a signal does not cut short (the end-of-epoch saves); it stops the run right after."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def _raise(self) -> None:
        previous = self._previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)  # the process-wide handler raises (and records) its own exception
        if self.received == signal.SIGTERM:
            raise SystemExit(SIGTERM_EXIT)
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the stop signal received earlier whose exception did not reach the caller."""
        if self.received is not None:
            self._raise()
