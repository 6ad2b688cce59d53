"""Every file iimm writes honours the umask (0644 under umask 022), store shards and outputs alike."""

import os
import stat

import pytest
from click.testing import CliRunner

from iimm.cli.main import cli
from iimm.engine.files import current_umask, write_atomic, write_json_atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(folder) -> dict[str, int]:
    """Permission bits of every plain file under folder (the SQLite registry and lock files included)."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_atomic_writes_get_0666_less_the_umask(tmp_path, umask):
    want = 0o666 & ~umask
    assert stat.S_IMODE(write_atomic(tmp_path / "a.bin", b"x").stat().st_mode) == want
    assert stat.S_IMODE(write_json_atomic(tmp_path / "b.json", {"a": 1}).stat().st_mode) == want
    open(tmp_path / "plain.txt", "w").close()  # the peer: what a plain open() gives under this umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == want


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_store_shards_and_outputs_honour_the_umask(tmp_path, umask, tiny_model_dir, digits_png_dir):
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    common = ["--model", f"local-dir:{tiny_model_dir}", "--data", str(digits_png_dir), "--store", str(store),
              "--workers", "0", "--no-progress"]
    res = CliRunner().invoke(cli, ["embed", *common, "-o", str(out / "emb.npz")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for fmt in ("json", "csv"):
        res = CliRunner().invoke(cli, ["score", *common, "--metrics", "iimm", "--backend", "torch", "--format", fmt,
                                       "-o", str(out / f"scores.{fmt}")], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    written = {**modes(store), **{f"out/{k}": v for k, v in modes(out).items()}}
    assert any(k.endswith("image-00000.npy") for k in written) and "out/scores.csv" in written
    assert {k for k, v in written.items() if v != 0o666 & ~umask} == set()
