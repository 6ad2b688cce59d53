"""The commands of `iimm`: where each lives and its one-line help, written once.

`iimm --help` lists them from this table without importing any command (commands import torch
and the engine, seconds of start-up); each command's `--help` starts with the same line.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import click


class CommandEntry(NamedTuple):
    module: str     # module in iimm.cli
    attribute: str  # the click.Command in it
    short: str      # one-line help


COMMANDS: dict[str, CommandEntry] = {
    "score": CommandEntry("score", "score",
                          "Score a task's zero-shot embeddings (IIMM, silhouettes, zero-shot accuracy, ...)."),
    "embed": CommandEntry("embed", "embed",
                          "Encode images with a model (no scoring) and print where the embeddings are."),
    "models": CommandEntry("models_cmd", "models", "List the models `--model` accepts."),
    "finetune": CommandEntry("finetune", "finetune", "Fine-tune a model on a task and record zero-shot vs "
                                                     "fine-tuned accuracy, forgetting and the scores."),
    "calibrate": CommandEntry("calibrate", "calibrate_cmd", "Fine-tune MODEL on every task of CATALOG with each "
                                                            "--method and fit IIMM → gain / forgetting."),
    "screen": CommandEntry("screen", "screen_cmd", "Score every dataset of CATALOG with every --model and rank "
                                                   "them by predicted gain."),
    "predict": CommandEntry("predict", "predict", "Predict fine-tuning gain and forgetting of a task from its IIMM."),
    "catalog": CommandEntry("catalog_cmd", "catalog_cmd", "Write a catalog of the datasets found under a data root "
                                                          "(init), or list the datasets iimm knows by name (list)."),
    "collect": CommandEntry("collect", "collect", "Flatten JSON results into one CSV: nested keys become dotted "
                                                  "columns, one row per object."),
    "demo": CommandEntry("demo_cmd", "demo", "Write a tiny random model, small image tasks and a catalog to try every "
                                             "command offline, in minutes on a CPU."),
    "bench": CommandEntry("bench", "bench", "Time class sums, cross reduce and the all-pairs pass per backend, "
                                            "beside the naive O(N²) peers."),
    "store": CommandEntry("store_cmd", "store", "List, check and clean the embedding store (ls, check, rm, gc)."),
}


def command(name: str, cls: type[click.Command] = click.Command, **kwargs):
    """`click.command(name)` whose help is the table's one line, then the function's docstring."""
    short = COMMANDS[name].short

    def decorate(f):
        details = inspect.cleandoc(f.__doc__ or "")
        return click.command(name, cls=cls, help=f"{short}\n\n{details}".strip(), short_help=short, **kwargs)(f)

    return decorate
