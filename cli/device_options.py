"""`--backend`, `--device` and `--store`, declared once for every command that computes scores, encodes images or
reads the embedding store."""

from __future__ import annotations

import click

from ..kernels import BACKENDS


def backend_option(help: str = "Compute backend of the scores; auto: triton on a GPU, numba on the CPU."):
    return click.option("--backend", type=click.Choice(["auto", *BACKENDS], case_sensitive=False), default="auto",
                        show_default=True, help=help)


def device_option(help: str = "cpu, cuda, cuda:N or auto (the first GPU when one is visible, else the CPU)."):
    return click.option("--device", default="auto", show_default=True, help=help)


def store_option(help: str = "Embedding store folder [default: $IIMM_HOME, else ~/.cache/iimm]."):
    return click.option("--store", type=click.Path(file_okay=False), envvar="IIMM_HOME", help=help)
