"""Ray's overhead on one machine: the same work through `--executor ray` (2 CPUs) and locally, in one run.

Run:  python -m pytest benches/bench_ray.py -q -s --benchmark-disable
(IIMM_BENCH_ROWS sets the scoring set's rows, default 1 000 000 × 512 float32, memory-mapped;
IIMM_BENCH_IMAGES the embedding set's images, default 2 000.)

- scoring: pass 1 + pass 2 scores of the memory-mapped set, one Ray task per ~UNIT_ROWS range, against
  `score()` in this process. Ratios with Ray's start-up (ray.init and the workers' imports) included
  and excluded. Target: ≤ 1.3× excluding start-up.
- embedding: a tiny open_clip model over JPEGs, one Ray task per store shard, against the ordinary
  loop. Start-up excluded (a warm-up run first). Target: ≤ 1.3×.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from iimm.engine import load_embeddings, score  # noqa: E402
from iimm.engine.distributed import Executor  # noqa: E402
from iimm.engine.embedding.extract import embed_dataset  # noqa: E402

KEYS = "iimm,acs,gap,zeroshot_top1,silhouette_class,silhouette_modality"
UNIT_ROWS = 250_000
N_IMAGES = int(os.environ.get("IIMM_BENCH_IMAGES", "2000"))
SHARD_ROWS = 500


def _start_ray(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}})
    return time.perf_counter() - t0


def test_scoring_on_ray_vs_local(bench_folder, tmp_path_factory, tmp_path):
    from iimm.engine.scoring.sharded import score_sharded

    es = load_embeddings(bench_folder)
    t0 = time.perf_counter()
    local = score(es, KEYS, backend="auto")
    local_s = time.perf_counter() - t0
    init_s = _start_ray(tmp_path_factory)
    try:
        t0 = time.perf_counter()
        first = score_sharded(str(bench_folder), KEYS, executor=Executor("ray"), partials=tmp_path / "p1",
                              unit_rows=UNIT_ROWS)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = score_sharded(str(bench_folder), KEYS, executor=Executor("ray"), partials=tmp_path / "p2",
                             unit_rows=UNIT_ROWS)
        warm_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    for key, value in local.scores.items():
        assert warm.scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert first.scores[key] == warm.scores[key]
    print(f"\nscoring {es.n}x{es.d} ({KEYS}): local {local_s:.2f} s; ray first run {first_s:.2f} s "
          f"+ ray.init {init_s:.2f} s -> {(first_s + init_s) / local_s:.2f}x with start-up; ray warm "
          f"{warm_s:.2f} s -> {warm_s / local_s:.2f}x without start-up (target <= 1.3x)")


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    from conftest import write_jpeg_tree

    return write_jpeg_tree(tmp_path_factory.mktemp("bench-images"), N_IMAGES, classes=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_tiny import tiny_model_config, write_local_dir

    return f"local-dir:{write_local_dir(tmp_path_factory.mktemp('tiny'), tiny_model_config('clip'))}"


def test_embedding_on_ray_vs_local(jpeg_tree, tiny_model, tmp_path_factory, tmp_path):
    kw = dict(workers=0, batch_size=100, shard_rows=SHARD_ROWS)
    embed_dataset(tiny_model, str(jpeg_tree), store=tmp_path / "local-warm-up", **kw)  # files in the page cache
    t0 = time.perf_counter()
    local, _ = embed_dataset(tiny_model, str(jpeg_tree), store=tmp_path / "local", **kw)
    local_s = time.perf_counter() - t0
    init_s = _start_ray(tmp_path_factory)
    try:
        t0 = time.perf_counter()
        embed_dataset(tiny_model, str(jpeg_tree), store=tmp_path / "warm-up", executor="ray", **kw)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_ray, info = embed_dataset(tiny_model, str(jpeg_tree), store=tmp_path / "ray", executor="ray", **kw)
        warm_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    assert info.encoded == N_IMAGES and on_ray.n == local.n
    print(f"\nembedding {N_IMAGES} images, tiny CLIP, {N_IMAGES // SHARD_ROWS} shards: local {local_s:.2f} s "
          f"({torch.get_num_threads()} torch threads); ray first run {first_s:.2f} s + ray.init {init_s:.2f} s "
          f"-> {(first_s + init_s) / local_s:.2f}x with start-up; ray warm {warm_s:.2f} s -> "
          f"{warm_s / local_s:.2f}x without start-up (target <= 1.3x)")
