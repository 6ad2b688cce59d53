"""Embedding throughput from webdataset tar shards against the same images as a PNG class-folder tree.

Run:  python -m pytest benches/bench_datasets.py -q -s --benchmark-disable-gc
(IIMM_BENCH_IMAGES sets the image count, default 2 000 PNGs of 64×64 px in 10 classes, in 8 shards.)

Peers, same run, same tiny open_clip model (tests/fixtures_tiny.py, 32 px, seeded random weights),
same DataLoader workers and batch size, without the store (every image is decoded and encoded):
- folder: `embed_dataset` on ROOT/<class>/<k>.png (one file opened per image, map-style loader);
- shards: `embed_dataset` on 'shards/{00000..00007}.tar' (the same PNG bytes, streamed tar by tar).
Target: shards ≥ 1.0× the folder's images/s (`extra_info["shards_vs_folder"]`). The two embeddings
are checked equal, so the figure compares equal work.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_tiny import tiny_model_config, write_local_dir  # noqa: E402

from iimm.engine.embedding.extract import embed_dataset  # noqa: E402

N_IMAGES = int(os.environ.get("IIMM_BENCH_IMAGES", "2000"))
N_SHARDS = 8
CLASSES = 10
BATCH = 128


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    """(model dir, PNG folder tree, shard pattern) holding the same N_IMAGES images in the same order."""
    root = tmp_path_factory.mktemp("bench-datasets")
    rng = np.random.default_rng(0)
    per_class = N_IMAGES // CLASSES
    per_shard = -(-N_IMAGES // N_SHARDS)
    tars = [tarfile.open(root / f"{s:05d}.tar", "w") for s in range(N_SHARDS)]
    k = 0
    for c in range(CLASSES):
        (root / "tree" / f"class_{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data = buf.getvalue()
            (root / "tree" / f"class_{c:02d}" / f"{i}.png").write_bytes(data)
            for name, payload in ((f"s{k:06d}.png", data), (f"s{k:06d}.cls", str(c).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tars[k // per_shard].addfile(info, io.BytesIO(payload))
            k += 1
    for t in tars:
        t.close()
    model = write_local_dir(root / "model", tiny_model_config("clip"))
    return f"local-dir:{model}", str(root / "tree"), str(root / f"{{00000..{N_SHARDS - 1:05d}}}.tar")


def _embed_seconds(model: str, data: str):
    t0 = time.perf_counter()
    es, info = embed_dataset(model, data, use_cache=False, batch_size=BATCH, workers=2)
    return time.perf_counter() - t0, es


def test_shards_vs_folder_throughput(benchmark, image_sets):
    model, tree, shards = image_sets
    _embed_seconds(model, tree)  # warm-up: model build, page cache
    folder_s, folder_es = _embed_seconds(model, tree)
    shard_s, shard_es = benchmark.pedantic(lambda: _embed_seconds(model, shards), rounds=1, iterations=1)
    np.testing.assert_array_equal(np.concatenate(shard_es.image_blocks), np.concatenate(folder_es.image_blocks))
    ratio = folder_s / shard_s
    benchmark.extra_info.update({"images": N_IMAGES, "folder_images_per_s": N_IMAGES / folder_s,
                                 "shards_images_per_s": N_IMAGES / shard_s, "shards_vs_folder": ratio})
    print(f"\n{N_IMAGES} images: folder {N_IMAGES / folder_s:.0f} img/s, shards {N_IMAGES / shard_s:.0f} img/s, "
          f"shards/folder = {ratio:.2f}x (target >= 1.0x)")
