"""The `iimm` command group and its entry point: user errors as one line, tracebacks only with --debug."""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..engine.errors import IimmError
from .bench import bench
from .calibrate import calibrate_cmd
from .collect import collect
from .embed import embed
from .finetune import finetune
from .models_cmd import models
from .predict import predict
from .score import score
from .screen import screen_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="iimm")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """iimm: how much will fine-tuning a vision-language model gain on a task, and what will it forget?"""


for command in (score, embed, models, finetune, calibrate_cmd, screen_cmd, predict, collect, bench):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. `--debug` may appear anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        cli.main(args=args, prog_name="iimm", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("iimm: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("iimm: interrupted", err=True)
        sys.exit(130)
    except IimmError as exc:
        if debug:
            raise
        click.echo(f"iimm: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if debug:
            raise
        click.echo(f"iimm: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback "
                   f"and report it)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
