"""Distributed embedding (engine/embedding/shard_units.py, `iimm embed --executor ray`): one store shard per unit,
files then a done-marker from the worker, the registry written by the driver alone; resumable and exact."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures_tiny import write_digits_png
from iimm.cli.embed import embed
from iimm.engine import load_embeddings
from iimm.engine.embedding.data import load_image_dataset
from iimm.engine.embedding.prompts import resolve_templates
from iimm.engine.embedding.extract import embed_dataset
from iimm.engine.embedding.models import resolve_model
from iimm.engine.embedding.shard_units import ShardJob, marker_name, read_marker
from iimm.engine.embedding.store import file_digest, shard_name

SHARD, BATCH = 10, 5  # shards are whole batches: the unit path encodes exactly the batches of the local loop


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    """5 classes × 10 digits = 50 images = 5 shards of 10."""
    return write_digits_png(tmp_path_factory.mktemp("small-digits"), per_class=10, classes=5)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir, small_digits, one_torch_thread):
    """The reference: the same embeddings encoded by the ordinary single-process loop."""
    store = tmp_path_factory.mktemp("local-store")
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, workers=0,
                             batch_size=BATCH, shard_rows=SHARD)
    return es, info


def _rows(es) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


def _job(model_dir, data, folder: Path, fingerprint: str, dim: int) -> ShardJob:
    spec = resolve_model(f"local-dir:{model_dir}")
    return ShardJob(spec, load_image_dataset(str(data)), tuple(resolve_templates(None, None, None)), "fp16", BATCH,
                    0, "cpu", 0.05, SHARD, dim, str(folder), fingerprint)


def test_shard_job_as_a_plain_function_writes_the_local_shards_then_a_marker(tmp_path, tiny_model_dir,
                                                                              small_digits, local_run,
                                                                              one_torch_thread):
    es, info = local_run
    job = _job(tiny_model_dir, small_digits, tmp_path, "fp-1", es.d)
    first = job(3)
    files = first.pop("files")  # each file's size and sha256, for the driver to record
    assert first == {"shard": 3, "rows": SHARD, "skipped": [], "fingerprint": "fp-1", "encoded": True}
    assert {kind: tuple(v) for kind, v in files.items()} == \
        {kind: file_digest(tmp_path / shard_name(kind, 3)) for kind in ("image", "label")}
    local = Path(info.location)
    for kind in ("image", "label"):
        np.testing.assert_array_equal(np.load(tmp_path / shard_name(kind, 3)), np.load(local / shard_name(kind, 3)))
    assert sorted(os.listdir(tmp_path)) == [marker_name(3), shard_name("image", 3), shard_name("label", 3)]
    # a second (retried or duplicated) run of the shard finds its marker and encodes nothing
    assert job(3)["encoded"] is False
    # a marker of another fingerprint, or without its files, does not count
    assert read_marker(tmp_path, 3, "fp-2") is None
    os.unlink(tmp_path / shard_name("label", 3))
    assert read_marker(tmp_path, 3, "fp-1") is None and job(3)["encoded"] is True


@pytest.mark.ray
def test_ray_embedding_equals_local_and_the_driver_alone_records_shards(tmp_path, ray_cluster, tiny_model_dir,
                                                                        small_digits, local_run):
    es_local, info_local = local_run
    store = tmp_path / "store"
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, batch_size=BATCH,
                             shard_rows=SHARD, executor="ray")
    assert info.set_id == info_local.set_id and info.encoded == 50 and not info.cached
    np.testing.assert_array_equal(_rows(es), _rows(es_local))
    np.testing.assert_array_equal(es.label, es_local.label)
    np.testing.assert_array_equal(es.text, es_local.text)
    with sqlite3.connect(store / "registry.sqlite") as con:
        assert sorted(r[0] for r in con.execute("SELECT idx FROM shards")) == [0, 1, 2, 3, 4]
    # the rerun is a cache hit
    _, again = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, batch_size=BATCH,
                             shard_rows=SHARD, executor="ray")
    assert again.cached and again.encoded == 0


@pytest.mark.ray
def test_ray_embedding_resumes_from_markers_left_by_a_dead_driver(tmp_path, ray_cluster, tiny_model_dir,
                                                                   small_digits, local_run, one_torch_thread):
    """Shards 0 and 2 were finished by workers whose driver died before recording them: only 3 shards run."""
    es_local, info_local = local_run
    store = tmp_path / "store"
    folder = store / "embeddings" / info_local.set_id
    folder.mkdir(parents=True)
    image_key = _image_key(info_local)
    job = _job(tiny_model_dir, small_digits, folder, image_key, es_local.d)
    job(0), job(2)
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, batch_size=BATCH,
                             shard_rows=SHARD, executor="ray")
    assert info.encoded == 30  # shards 1, 3, 4 ran; 0 and 2 came from their markers
    np.testing.assert_array_equal(_rows(es), _rows(es_local))


def _image_key(info) -> str:
    with sqlite3.connect(Path(info.location).parents[1] / "registry.sqlite") as con:
        return con.execute("SELECT image_key FROM embedding_sets WHERE id=?", (info.set_id,)).fetchone()[0]


class DriverKilled(BaseException):
    """Stands for the driver dying: nothing after it runs on the driver, the tasks in flight go on."""


@pytest.mark.ray
def test_a_driver_dying_midway_then_rerunning_gives_the_same_embeddings(tmp_path, ray_cluster, tiny_model_dir,
                                                                        small_digits, local_run):
    """The driver stops dead after recording 2 shards, tasks still in flight; the rerun finishes the set."""
    es_local, _ = local_run
    store = tmp_path / "store"

    def die_after_two_shards(stage, done, total):
        if done >= 2 * SHARD:
            raise DriverKilled

    with pytest.raises(DriverKilled):
        embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, batch_size=BATCH,
                      shard_rows=SHARD, executor="ray", progress=die_after_two_shards)
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, batch_size=BATCH,
                             shard_rows=SHARD, executor="ray")
    assert info.encoded <= 30  # the shards finished before the driver died were not encoded again
    np.testing.assert_array_equal(_rows(es), _rows(es_local))
    np.testing.assert_array_equal(es.label, es_local.label)


@pytest.mark.ray
def test_cli_embed_with_ray_equals_local_bit_for_bit(tmp_path, ray_cluster, tiny_model_dir, small_digits):
    runner = CliRunner()
    base = ["--model", f"local-dir:{tiny_model_dir}", "--data", str(small_digits), "--workers", "0", "--no-progress",
            "--batch-size", str(BATCH), "--format", "json"]
    local = runner.invoke(embed, base + ["--store", str(tmp_path / "a")])
    ray_run = runner.invoke(embed, base + ["--store", str(tmp_path / "b"), "--executor", "ray",
                                           "--ray-address", ray_cluster.get_runtime_context().gcs_address])
    assert local.exit_code == 0 and ray_run.exit_code == 0, local.output + ray_run.output
    a, b = json.loads(local.output), json.loads(ray_run.output)
    assert b["encoded"] == a["encoded"] == 50
    ea, eb = load_embeddings(a["location"]), load_embeddings(b["location"])
    np.testing.assert_array_equal(_rows(eb), _rows(ea))
    np.testing.assert_array_equal(eb.label, ea.label)
    np.testing.assert_array_equal(eb.text, ea.text)
