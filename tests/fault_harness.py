"""Run `iimm` command lines in real child processes, signal or kill them, and read what they left.

Children fork from a forkserver that imported torch and the CLI once, so a trial costs the command's
own work, not seconds of imports; each child is a real process with the CLI's own signal handling,
its own process group (so a signal can go to its DataLoader workers too, as a terminal's Ctrl-C does)
and its stdout / stderr in files.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

FORK = multiprocessing.get_context("forkserver")
FORK.set_forkserver_preload(["torch", "iimm.cli.main", "iimm.cli.embed", "iimm.cli.score",
                             "iimm.engine.embedding.extract"])


def cli_child(argv: list[str], out: str, err: str) -> None:
    """Child-process target: `iimm ARGV` with stdout and stderr in files, in a process group of its own."""
    import torch

    os.setpgrp()
    # As if started from a terminal: whatever the test process had done to SIGINT / SIGTERM (blocked or ignored
    # in the thread that started the fork server: a full-suite run once lost a SIGINT that way) is undone here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    from iimm.cli.main import main

    main(argv)


@dataclass
class Finished:
    exitcode: int
    stdout: str
    stderr: str
    seconds: float


class Child:
    """One `iimm` command line running in a child process."""

    def __init__(self, argv: list[str], folder: Path, name: str = "run"):
        self.out, self.err = folder / f"{name}.stdout", folder / f"{name}.stderr"
        self.t0 = time.monotonic()
        self.process = FORK.Process(target=cli_child, args=(list(argv), str(self.out), str(self.err)))
        self.process.start()

    def signal(self, signum: int, group: bool = False) -> None:
        """Send signum to the command (group=True: to its DataLoader workers as well)."""
        try:
            (os.killpg if group else os.kill)(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 300) -> Finished:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.signal(signal.SIGKILL, group=True)
            self.process.join()
            raise AssertionError(f"the command did not stop within {timeout} s")
        return Finished(self.process.exitcode, self.out.read_text(), self.err.read_text(),
                        time.monotonic() - self.t0)


def run(argv: list[str], folder: Path, name: str = "run", timeout: float = 300) -> Finished:
    return Child(argv, folder, name).wait(timeout)


def shard_count(store: Path) -> int:
    """Shards recorded in a store's registry so far (0 before the registry exists)."""
    db = store / "registry.sqlite"
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM shards").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def wait_for(predicate, child: Child, timeout: float = 600, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not child.process.is_alive():
            raise AssertionError("the command ended before the point where the test interrupts it")
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(poll)
