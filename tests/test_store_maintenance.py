"""Shard sizes and checksums in the registry, bad shards re-encoded, and `iimm store ls/check/rm/gc`."""

import json
import os
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from iimm.cli.main import cli
from iimm.engine.embedding.extract import embed_dataset
from iimm.engine.embedding.store import Store, file_digest, shard_name
from iimm.engine.embedding.store_maintenance import collect_garbage, resolve_set_ids
from iimm.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(es) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


@pytest.fixture
def built(tmp_path, tiny_model_dir, digits_png_dir):
    """A store with one finished set of 200 digits in shards of 64 rows; (store, model, data, es, info)."""
    store = tmp_path / "store"
    model = f"local-dir:{tiny_model_dir}"
    es, info = embed_dataset(model, str(digits_png_dir), store=store, workers=0, shard_rows=64)
    return store, model, str(digits_png_dir), _rows(es), info


def _embed(built):
    store, model, data, _, _ = built
    return embed_dataset(model, data, store=store, workers=0, shard_rows=64)


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_registry_records_each_shard_files_size_and_sha256(built):
    store, _, _, _, info = built
    folder = store / "embeddings" / info.set_id
    records = Store(store).shard_records(info.set_id)
    assert [r["idx"] for r in records] == [0, 1, 2, 3]
    for r in records:
        for kind in ("image", "label"):
            assert (r[f"{kind}_bytes"], r[f"{kind}_sha256"]) == file_digest(folder / shard_name(kind, r["idx"]))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_a_damaged_shard_is_encoded_again_never_read(built, damage):
    store, _, _, want, info = built
    path = store / "embeddings" / info.set_id / shard_name("image", 2)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flip a byte":
        data[-7] ^= 0xFF  # inside the rows: the file still loads as a valid array
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    res = invoke("store", "check", "--store", str(store))
    assert res.exit_code == 1 and "image-00002.npy" in res.stdout
    es, again = _embed(built)
    assert again.encoded == 64 and not again.cached  # shard 2 alone
    np.testing.assert_array_equal(_rows(es), want)
    assert invoke("store", "check", "--store", str(store)).exit_code == 0


def _shard_files(folder):
    return sorted(p.name for p in folder.glob("*-*.npy"))


def _age(paths, seconds=60):
    """Move files' mtimes back, as for a set written a while ago (a fresh file's signature is not trusted)."""
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


@pytest.fixture
def digests_read(monkeypatch):
    """The names of the files whose sha256 is computed from here on."""
    from iimm.engine.embedding import store as store_module

    names, real = [], store_module.file_digest
    monkeypatch.setattr(store_module, "file_digest", lambda path: names.append(path.name) or real(path))
    return names


def test_a_cache_hit_reads_a_shard_again_only_when_its_file_changed(built, digests_read):
    store, _, _, want, info = built
    folder = store / "embeddings" / info.set_id
    _age(folder.glob("*-*.npy"))
    _, first = _embed(built)
    assert first.cached and sorted(digests_read) == _shard_files(folder)  # checked once, signatures kept
    digests_read.clear()
    _, second = _embed(built)
    assert second.cached and digests_read == []
    path = folder / shard_name("image", 1)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))  # a new mtime: read again, found altered, encoded again
    es, third = _embed(built)
    assert "image-00001.npy" in digests_read and third.encoded == 64
    np.testing.assert_array_equal(_rows(es), want)


def test_a_file_changed_moments_ago_keeps_no_signature(built, digests_read):
    """Within a tick of a coarse file clock a rewrite can keep its mtime: a file younger than RACY_SECONDS is
    read again on every hit until it is older."""
    store, _, _, _, info = built
    folder = store / "embeddings" / info.set_id
    for _ in range(2):
        digests_read.clear()
        assert _embed(built)[1].cached
        assert sorted(digests_read) == _shard_files(folder)
    with sqlite3.connect(store / "registry.sqlite") as con:
        assert {v for (v,) in con.execute("SELECT verified FROM shards")} == {None}


def test_store_check_reads_every_byte_even_of_an_unchanged_looking_file(built):
    """A change that keeps size, mtime and inode (a bit flip on disk) passes a cache hit; `iimm store check`
    reads the bytes and names the file."""
    store, _, _, _, info = built
    folder = store / "embeddings" / info.set_id
    _age(folder.glob("*-*.npy"))
    assert _embed(built)[1].cached
    path = folder / shard_name("image", 3)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_ino == before.st_ino and path.stat().st_size == before.st_size
    res = invoke("store", "check", "--store", str(store))
    assert res.exit_code == 1 and "image-00003.npy" in res.stdout and "sha256" in res.stdout


def test_a_registry_row_whose_files_are_gone_is_repaired(built):
    import shutil

    store, _, _, want, info = built
    shutil.rmtree(store / "embeddings" / info.set_id)
    res = invoke("store", "check", "--store", str(store))
    assert res.exit_code == 1 and "folder is gone" in res.stdout
    es, again = _embed(built)
    assert again.encoded == 200
    np.testing.assert_array_equal(_rows(es), want)
    assert invoke("store", "check", "--store", str(store)).exit_code == 0


def test_a_store_written_before_checksums_still_loads(built):
    store, _, _, want, info = built
    with sqlite3.connect(store / "registry.sqlite") as con:
        con.execute("UPDATE shards SET image_bytes=NULL, image_sha256=NULL, label_bytes=NULL, label_sha256=NULL")
    es, again = _embed(built)
    assert again.cached
    np.testing.assert_array_equal(_rows(es), want)


def test_store_ls_rm_and_gc(built, tmp_path):
    store, model, data, _, info = built
    res = invoke("store", "ls", "--store", str(store), "--format", "json")
    listed = json.loads(res.stdout)
    assert [(s["id"], s["model"], s["data"], s["rows"], s["status"]) for s in listed] == \
        [(info.set_id, model, data, 200, "complete")]
    folder = store / "embeddings" / info.set_id
    assert listed[0]["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    table = invoke("store", "ls", "--store", str(store)).stdout
    assert info.set_id in table and "1 sets" in table

    # garbage: a killed write's temporary file, a folder no row owns, a partial set
    temp = folder / ".image-00001.npy.abcd.tmp"
    temp.write_bytes(b"half")
    os.utime(temp, (0, 0))
    orphan = store / "embeddings" / "0123456789abcdef01234567"
    orphan.mkdir()
    (orphan / "image-00000.npy").write_bytes(b"x")
    st = Store(store)
    st.open_set("partialset0000000000000", "key", st.get_set(info.set_id)["dataset_id"], dict(
        model="m", architecture="a", pretrained=None, model_fingerprint="f", preprocess="p", classnames="[]",
        templates="[]", dtype="fp16", shard_rows=8))
    st.set_dir("partialset0000000000000").mkdir()
    dry = invoke("store", "gc", "--store", str(store))
    assert dry.exit_code == 0 and "pass --yes" in dry.stderr
    assert temp.exists() and orphan.exists()  # a dry run removes nothing
    assert invoke("store", "gc", "--store", str(store), "--yes").exit_code == 0
    assert not temp.exists() and not orphan.exists() and not st.set_dir("partialset0000000000000").exists()
    assert st.get_set("partialset0000000000000") is None
    assert [s["id"] for s in json.loads(invoke("store", "ls", "--store", str(store), "--format", "json").stdout)] \
        == [info.set_id]  # the finished set stays
    assert invoke("store", "check", "--store", str(store)).exit_code == 0

    # rm: dry run, then by prefix
    assert "would remove" in invoke("store", "rm", info.set_id[:6], "--store", str(store)).stdout
    assert folder.exists()
    st.record_score_run({"iimm": 0.5}, input="x", embedding_set_id=info.set_id)
    assert invoke("store", "rm", info.set_id[:6], "--store", str(store), "--yes").exit_code == 0
    assert not folder.exists() and st.get_set(info.set_id) is None
    with st.connect(write=False) as con:  # the score run keeps its scores
        assert con.execute("SELECT embedding_set_id, scores FROM score_runs").fetchone()[:] == (None, '{"iimm": 0.5}')
    with pytest.raises(InputError, match="matches no set"):
        resolve_set_ids(st, ["zzzz"])


def test_gc_leaves_a_set_another_run_is_writing(built):
    store, _, _, _, info = built
    st = Store(store)
    st.forget_shards(info.set_id, [3])  # partial now
    with st.lock(info.set_id):
        removal = collect_garbage(st, dry_run=False)
    assert removal.busy == [info.set_id] and (store / "embeddings" / info.set_id).exists()


@pytest.mark.parametrize("after", [False, True])
def test_a_run_stopped_while_opening_its_set_leaves_the_store_consistent(tmp_path, tiny_model_dir, digits_png_dir,
                                                                        monkeypatch, after):
    """A kill between creating a set's registry row and its folder (either side) is no store problem, and the
    rerun finishes the set."""
    from iimm.engine.embedding.store_maintenance import check_store

    store = tmp_path / "store"
    model = f"local-dir:{tiny_model_dir}"
    real = Store.open_set

    def stop(self, *args, **kwargs):
        if after:  # the row exists, the folder not yet
            real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "open_set", stop)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(model, str(digits_png_dir), store=store, workers=0, shard_rows=64)
    monkeypatch.setattr(Store, "open_set", real)
    assert check_store(Store(store)) == []
    es, info = embed_dataset(model, str(digits_png_dir), store=store, workers=0, shard_rows=64)
    assert info.encoded == es.n == 200
    assert check_store(Store(store)) == []
