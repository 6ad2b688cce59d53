"""The `iimm` command group and its entry point: user errors as one line, tracebacks only with --debug."""

from __future__ import annotations

import difflib
import importlib
import signal
import sys

import click

from .. import __version__
from ..errors import IimmError
from .commands import COMMANDS
from . import interrupts


class LazyGroup(click.Group):
    """A group whose commands are imported when one is run (or its own help is asked for).

    Command modules import torch only inside the command body, so `iimm CMD --help` is as quick as `iimm --help`.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        entry = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{entry.module}"), entry.attribute)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            if close:
                raise click.UsageError(f"No such command {name!r}. Did you mean {close[0]!r}?", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.short) for name, entry in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="iimm")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """iimm: how much will fine-tuning a vision-language model gain on a task, and what will it forget?"""


def main(argv: list[str] | None = None) -> None:
    """Console entry point. `--debug` may appear anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    interrupts.install()
    try:
        try:
            cli.main(args=args, prog_name="iimm", standalone_mode=False)
        except Exception:  # click turns Ctrl-C into Abort; an error raised while a signal unwinds is that signal
            interrupts.raise_if_interrupted()
            raise
        interrupts.raise_if_interrupted()  # a signal whose exception something swallowed
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # a bare `iimm`: its help, not an error
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line, like every other user error
        command = exc.ctx.command_path if exc.ctx is not None else "iimm"
        click.echo(f"iimm: error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort outside standalone mode
            click.echo("iimm: interrupted", err=True)
            sys.exit(130)
        click.echo("iimm: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # SIGINT or SIGTERM (interrupts.Terminated): exit 130 or 143
        signum = interrupts.received() or signal.SIGINT
        click.echo(interrupts.message(signum), err=True)
        sys.exit(interrupts.exit_code(signum))
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
