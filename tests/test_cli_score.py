"""`iimm score` end to end: formats, files written whole, every bad input as one line and a non-zero exit."""

import csv
import io
import json
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

import naive_scores as naive
from iimm.cli.main import cli, main
from synthetic import structured


@pytest.fixture
def npz(tmp_path):
    x, y, t = structured(0, 150, 19, 5)
    path = tmp_path / "task.npz"
    np.savez(path, image=x, label=y, text=t)
    return path, (x, y, t)


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_json_is_one_object_with_the_documented_fields(npz):
    path, (x, y, t) = npz
    res = CliRunner().invoke(cli, ["score", "--embeddings", str(path), "--format", "json", "--backend", "torch",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert {"input", "n", "d", "c", "backend", "device", "seconds", "version", "scores"} <= set(obj)
    assert (obj["n"], obj["d"], obj["c"], obj["backend"]) == (150, 19, 5, "torch")
    want = naive.all_scores(x, y, t)
    assert set(obj["scores"]) == set(want)
    for k, v in want.items():
        assert obj["scores"][k] == pytest.approx(v, rel=1e-6, abs=1e-7)


def test_table_and_csv(npz, tmp_path):
    path, _ = npz
    res = CliRunner().invoke(cli, ["score", "--embeddings", str(path), "--metrics", "iimm,gap", "--backend", "torch"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert any(l.startswith("iimm ") and "Inter-Intra" in l for l in lines)
    assert not any(l.startswith("acs") for l in lines)
    out = tmp_path / "s.csv"
    res = CliRunner().invoke(cli, ["score", "--embeddings", str(path), "--metrics", "iimm,acs", "--format", "csv",
                                   "--backend", "torch", "-o", str(out)])
    assert res.exit_code == 0
    row = next(csv.DictReader(io.StringIO(out.read_text())))
    assert {"iimm", "acs", "n"} <= set(row) and "gap" not in row and float(row["n"]) == 150


@pytest.mark.parametrize("args,message", [
    (["--metrics", "iimm,bogus"], "unknown metric 'bogus'; valid keys: all, baselines, everything, iimm"),
    (["--backend", "cuda-magic"], "'cuda-magic' is not one of 'auto', 'torch', 'numba', 'triton'"),  # a click.Choice
    (["--backend", "triton", "--device", "cpu"], "triton backend needs a CUDA GPU"),
    (["--device", "cuda"], "no CUDA GPU is visible"),
    (["--template", "a photo of {}."], "with --embeddings need --model M"),
    (["--template", "a photo of {}.", "--executor", "ray"], "with --embeddings need --model M"),  # checked before Ray
    (["--data", "imgs", "--executor", "ray"], "--embeddings and --data both given"),
])
def test_bad_options_are_one_line_errors(npz, capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    path, _ = npz
    out = tmp_path / "never.json"
    code, stdout, stderr = run_main(["score", "--embeddings", str(path), "--format", "json", "-o", str(out)] + args,
                                    capsys)
    assert code != 0
    assert message in stderr and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.glob(".never*")) == []


@pytest.mark.parametrize("arrays,message", [
    (lambda x, y, t: dict(image=x, label=y, text=t[:, :3]), "D=19 but text embeddings have D=3"),
    (lambda x, y, t: dict(image=x, label=np.where(y == 0, -2, y), text=t), "labels must be class indices"),
    (lambda x, y, t: dict(image=np.where(np.arange(len(x))[:, None] == 5, np.nan, x), label=y, text=t),
     "row 5 has NaN or Inf"),
    (lambda x, y, t: dict(image=np.where(np.arange(len(x))[:, None] == 7, 0.0, x), label=y, text=t),
     "row 7 is all zeros"),
    (lambda x, y, t: dict(image=x[:1], label=y[:1], text=t), "at least 2 rows"),
    (lambda x, y, t: dict(image=x, text=t), "lacks the array(s) label"),
    (lambda x, y, t: dict(image=x, label=np.zeros_like(y), text=t[:1]), "needs at least 2 classes"),
])
def test_bad_embeddings_are_one_line_errors(tmp_path, capsys, arrays, message):
    x, y, t = structured(1, 60, 19, 4)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(x, y, t))
    out = tmp_path / "out.csv"
    code, stdout, stderr = run_main(["score", "--embeddings", str(path), "--backend", "torch", "--format", "csv",
                                     "-o", str(out)], capsys)
    assert code == 2 and message in stderr, stderr
    assert stderr.count("\n") == 1 and stdout == ""
    assert not out.exists()


def test_missing_file_and_debug_traceback(tmp_path, capsys):
    code, _, stderr = run_main(["score", "--embeddings", str(tmp_path / "none.npz")], capsys)
    assert code == 2 and "embeddings not found" in stderr and "Traceback" not in stderr
    from iimm.errors import InputError
    with pytest.raises(InputError):
        main(["--debug", "score", "--embeddings", str(tmp_path / "none.npz")])


def test_installed_console_script(npz):
    path, (x, y, t) = npz
    res = subprocess.run(["iimm", "score", "--embeddings", str(path), "--metrics", "iimm", "--format", "json",
                          "--backend", "torch"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["scores"]["iimm"] == pytest.approx(naive.all_scores(x, y, t)["iimm"], rel=1e-6)
    res = subprocess.run([sys.executable, "-m", "iimm.cli.main", "score", "--embeddings", "/no/such.npz"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("iimm: error: embeddings not found")


@pytest.mark.parametrize("command", [
    ["score", "--embeddings", "TASK"],
    ["calibrate", "CATALOG", "--model", "clip", "--method", "full"],
    ["screen", "CATALOG", "--model", "clip"],
    ["collect", "TASK"],
])
def test_an_unwritable_output_fails_before_any_work(tmp_path, npz, capsys, command):
    """The output folder is checked when the options are read, not after hours of work."""
    path, _ = npz
    (tmp_path / "catalog.toml").write_text('[[dataset]]\nname = "a"\npath = "a"\n')
    (tmp_path / "a-file").write_text("")
    argv = [str(path) if a == "TASK" else str(tmp_path / "catalog.toml") if a == "CATALOG" else a for a in command]
    for out, message in [(tmp_path / "a-file" / "x.json", "is a file, not a folder"),
                         (tmp_path / "missing" / "x.json", "does not exist")]:
        code, stdout, stderr = run_main([*argv, "--output", str(out)], capsys)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize("model,message", [
    ("ViT-B-33", "unknown model 'ViT-B-33'; use an alias (clip, siglip, coca, eva02)"),
    ("ViT-B-32", "--model ViT-B-32 names an architecture without weights; pass --pretrained TAG"),
])
def test_model_names_are_checked_before_the_weights(tmp_path, capsys, model, message):
    code, _, stderr = run_main(["score", "--model", model, "--data", str(tmp_path)], capsys)
    assert code == 2 and message in stderr


def test_the_command_list_loads_no_command_and_matches_each_commands_help():
    """`iimm --help` / `--version` import neither torch nor a command; the list says what each command's help says."""
    import subprocess
    import sys

    from iimm.cli.main import COMMANDS, cli

    probe = ("import sys\nfrom click.testing import CliRunner\nfrom iimm.cli.main import cli\n"
             "out = CliRunner().invoke(cli, ['--help']).output\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('iimm.engine')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    ctx = click.Context(cli)
    for name, (_, _, short) in COMMANDS.items():
        assert cli.get_command(ctx, name).get_short_help_str(limit=500) == short, name


@pytest.mark.parametrize("argv,message", [
    (["score", "--format", "xml"], "iimm: error: Invalid value for '--format': 'xml' is not one of 'table', 'json', "
                                   "'csv'. (see `iimm score --help`)"),
    (["bogus"], "iimm: error: No such command 'bogus'. (see `iimm --help`)"),
    (["calibrate"], "iimm: error: Missing argument 'CATALOG'. (see `iimm calibrate --help`)"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 2 and stdout == "" and stderr.strip() == message


def test_a_bare_iimm_prints_its_help(capsys):
    code, stdout, stderr = run_main([], capsys)
    assert "Commands:" in stdout + stderr and "iimm: error" not in stdout + stderr
