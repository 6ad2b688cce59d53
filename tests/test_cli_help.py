"""The CLI's help: every `iimm CMD --help` answers without torch, each command's one line is written once,
`--backend` is one shared choice, and a mistyped command gets a suggestion."""

import subprocess
import sys

import click
import pytest

from iimm.cli.commands import COMMANDS
from iimm.cli.main import cli, main
from iimm.kernels import BACKENDS

HEAVY = ("torch", "numba", "triton", "open_clip", "scipy", "sklearn", "matplotlib")


def test_every_subcommand_help_imports_no_torch():
    """One child process asks every command for its help and reports what got imported."""
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom iimm.cli.main import cli\n"
             f"for name in {list(COMMANDS)!r}:\n"
             "    res = CliRunner().invoke(cli, [name, '--help'])\n"
             "    assert res.exit_code == 0 and 'Usage: ' in res.output, (name, res.output)\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_each_command_help_starts_with_its_line_of_the_command_list():
    ctx = click.Context(cli)
    for name, entry in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command.help.splitlines()[0] == entry.short, name
        assert command.help.count(entry.short) == 1, name


@pytest.mark.parametrize("name", ["score", "predict", "screen", "finetune", "calibrate"])
def test_backend_is_one_choice_of_every_backend(name, capsys):
    command = cli.get_command(click.Context(cli), name)
    option = next(p for p in command.params if p.name == "backend")
    assert isinstance(option.type, click.Choice) and list(option.type.choices) == ["auto", *BACKENDS]
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--backend", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'cuda' is not one of 'auto', 'torch', 'numba', 'triton'" in err


@pytest.mark.parametrize("argv,suggestion", [(["scor"], "'score'"), (["calibrat", "x"], "'calibrate'"),
                                             (["modles"], "'models'")])
def test_a_mistyped_command_gets_a_suggestion(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err == f"iimm: error: No such command {argv[0]!r}. Did you mean {suggestion}? (see `iimm --help`)"
