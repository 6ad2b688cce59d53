"""`--executor local|ray` and `--ray-address`: where `embed`, `score`, `screen` and `calibrate` run their units."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ..engine.distributed import EXECUTORS, Executor
from .option_group import option_group


@dataclass
class ExecutorOptions:
    executor: str
    ray_address: str | None

    def build(self) -> Executor:
        return Executor(self.executor, self.ray_address)


_OPTIONS = [
    click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                 help="Run here (local) or as tasks on a Ray cluster (ray; needs `pip install \"iimm[ray]\"`)."),
    click.option("--ray-address", metavar="ADDRESS",
                 help="Ray cluster to join: auto (a running `ray start` cluster) or ray://HOST:10001 "
                      "[default: start a local Ray with this machine's cores]."),
]

executor_options = option_group(ExecutorOptions, _OPTIONS, "run_on")
"""Decorator: add --executor/--ray-address and pass them to the command as `run_on=ExecutorOptions(...)`."""
