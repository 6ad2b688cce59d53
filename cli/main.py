"""The `iimm` command group and its entry point: user errors as one line, tracebacks only with --debug."""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import IimmError

# name -> (module in iimm.cli, command object, one-line help). Commands import torch and the engine,
# seconds of start-up, so they load when run; `iimm --help` and `--version` answer at once.
COMMANDS = {
    "score": ("score", "score", "Score a task's zero-shot embeddings (IIMM, silhouettes, zero-shot accuracy, ...)."),
    "embed": ("embed", "embed", "Encode images with a model (no scoring) and print where the embeddings are."),
    "models": ("models_cmd", "models", "List the models `--model` accepts."),
    "finetune": ("finetune", "finetune", "Fine-tune a model on a task and record zero-shot vs fine-tuned accuracy, "
                                         "forgetting and the scores."),
    "calibrate": ("calibrate", "calibrate_cmd", "Fine-tune MODEL on every task of CATALOG with each --method and fit "
                                                "IIMM → gain / forgetting."),
    "screen": ("screen", "screen_cmd", "Score every dataset of CATALOG with every --model and rank them by predicted "
                                       "gain."),
    "predict": ("predict", "predict", "Predict fine-tuning gain and forgetting of a task from its IIMM."),
    "collect": ("collect", "collect", "Flatten JSON results into one CSV: nested keys become dotted columns, one row "
                                      "per object."),
    "bench": ("bench", "bench", "Time class sums, cross reduce and the all-pairs pass per backend, beside the naive "
                                "O(N²) peers."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is run (or its own help is asked for)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


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
    try:
        cli.main(args=args, prog_name="iimm", standalone_mode=False)
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
