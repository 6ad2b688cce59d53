"""SIGINT and SIGTERM stop a command where they land, keep its finished shards and exit 130 / 143 with one line."""

import signal

import numpy as np
import pytest

from fault_harness import Child, run, shard_count, wait_for
from iimm.engine.embedding.extract import embed_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(es) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


@pytest.mark.parametrize("signum, workers, group", [(signal.SIGTERM, 0, False), (signal.SIGINT, 1, True)])
def test_embed_stops_on_a_signal_keeps_its_shards_and_resumes(tmp_path, tiny_model_dir, digits_png_dir, signum,
                                                              workers, group):
    store = tmp_path / "store"
    model = f"local-dir:{tiny_model_dir}"
    argv = ["embed", "--model", model, "--data", str(digits_png_dir), "--store", str(store), "--workers", str(workers),
            "--batch-size", "2", "--shard-rows", "3", "--no-progress"]
    child = Child(argv, tmp_path)
    wait_for(lambda: shard_count(store) >= 2, child)
    child.signal(signum, group=group)  # group: the DataLoader worker gets it too, as from a terminal
    done = child.wait()
    assert done.exitcode == 128 + signum
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"iimm: {'interrupted' if signum == signal.SIGINT else 'terminated'} ("), done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    kept = shard_count(store)
    assert 2 <= kept < 67, "the command was not interrupted midway"
    assert not [p for p in store.rglob("*.tmp")], "a temporary file was left behind"

    es, info = embed_dataset(model, str(digits_png_dir), store=store, workers=0, batch_size=2, shard_rows=3)
    assert info.encoded == 200 - 3 * kept  # the finished shards were not encoded again
    want, _ = embed_dataset(model, str(digits_png_dir), workers=0, batch_size=2, shard_rows=3, use_cache=False)
    np.testing.assert_array_equal(_rows(es), _rows(want))
    np.testing.assert_array_equal(es.label, want.label)


def test_a_finished_command_exits_0_and_an_unknown_one_2(tmp_path):
    assert run(["--version"], tmp_path).exitcode == 0
    assert run(["no-such-command"], tmp_path).exitcode == 2


def test_shard_batches_start_at_each_shard_and_stay_inside_it():
    from iimm.engine.embedding.extract import shard_batches

    assert shard_batches([0, 1, 2], 5, 12, 2) == [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9], [10, 11]]
    assert shard_batches([1], 5, 12, 2) == [[5, 6], [7, 8], [9]]  # shard 1 alone: the same batches
    assert shard_batches([2], 5, 12, 4) == [[10, 11]]
    assert shard_batches([], 5, 12, 4) == []


def test_shard_rows_option_reaches_the_store(tmp_path, tiny_model_dir, digits_png_dir):
    from click.testing import CliRunner

    from iimm.cli.main import cli
    from iimm.engine.embedding.store import Store

    store = tmp_path / "store"
    res = CliRunner().invoke(cli, ["embed", "--model", f"local-dir:{tiny_model_dir}", "--data", str(digits_png_dir),
                                   "--store", str(store), "--workers", "0", "--shard-rows", "64", "--no-progress"])
    assert res.exit_code == 0, res.output
    with Store(store).connect(write=False) as con:
        assert [tuple(r) for r in con.execute("SELECT idx, rows FROM shards ORDER BY idx")] == \
            [(0, 64), (1, 64), (2, 64), (3, 8)]
        assert con.execute("SELECT shard_rows FROM embedding_sets").fetchone()[0] == 64
