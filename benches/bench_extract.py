"""End-to-end `iimm embed` throughput against the model's forward pass alone, and the cache's speed-up.

Run:  python -m pytest benches/bench_extract.py -q -s --benchmark-disable-gc
(IIMM_BENCH_IMAGES sets the dataset size, default 256 JPEGs of 256×256 px in 4 classes.)

Peers, all in the same run, same model (ViT-B-32, 224 px, seeded random weights):
- forward: `encode_image` on preloaded, preprocessed tensors (same batch size) — the ceiling;
- embed (first run): `iimm embed` end to end — model build, prompt encoding, decoding and
  preprocessing in DataLoader workers, encoding, fp16 shards written to the store;
- embed (second run): the same command on the same inputs, answered from the store.
Targets: first-run throughput ≥ 0.85 × forward; second run ≥ 20× faster than the first.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import write_jpeg_tree
from iimm.cli.embed import embed
from iimm.engine.embedding.models import encode_images, load_model

N_IMAGES = int(os.environ.get("IIMM_BENCH_IMAGES", "256"))
BATCH = 64
MODEL = ["--model", "ViT-B-32", "--pretrained", "random"]


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    return write_jpeg_tree(tmp_path_factory.mktemp("bench-images"), N_IMAGES, classes=4, size=256)


def _forward_only_seconds(root) -> float:
    """Time `encode_image` over the dataset's preprocessed tensors, already in memory."""
    lm = load_model("ViT-B-32", pretrained="random")
    files = sorted(root.glob("*/*.jpg"))
    x = torch.stack([lm.preprocess(Image.open(f).convert("RGB")) for f in files])
    with torch.inference_mode():
        encode_images(lm, x[:8])  # warm-up
        t0 = time.perf_counter()
        for lo in range(0, len(x), BATCH):
            encode_images(lm, x[lo:lo + BATCH])
        return time.perf_counter() - t0


def test_embed_throughput_vs_forward(benchmark, jpeg_tree, tmp_path):
    args = MODEL + ["--data", str(jpeg_tree), "--store", str(tmp_path / "store"), "--batch-size", str(BATCH),
                    "--no-progress", "--format", "json"]
    forward_s = _forward_only_seconds(jpeg_tree)
    runner = CliRunner()
    timings = {}

    def first_run():
        t0 = time.perf_counter()
        res = runner.invoke(embed, args, catch_exceptions=False)
        timings["first"] = time.perf_counter() - t0
        assert '"cached": false' in res.output

    benchmark.pedantic(first_run, rounds=1, iterations=1)
    t0 = time.perf_counter()
    res = runner.invoke(embed, args, catch_exceptions=False)
    timings["second"] = time.perf_counter() - t0
    assert '"cached": true' in res.output

    ratio = forward_s / timings["first"]
    speedup = timings["first"] / timings["second"]
    benchmark.extra_info.update({
        "images": N_IMAGES, "threads": torch.get_num_threads(),
        "forward_images_per_s": N_IMAGES / forward_s, "embed_images_per_s": N_IMAGES / timings["first"],
        "throughput_ratio": ratio, "target_ratio": 0.85,
        "cached_seconds": timings["second"], "cache_speedup": speedup, "target_speedup": 20.0,
    })
    print(f"\nforward only: {N_IMAGES / forward_s:.1f} img/s; iimm embed: {N_IMAGES / timings['first']:.1f} img/s "
          f"(ratio {ratio:.3f}, target >= 0.85); cached rerun {timings['second']:.3f} s "
          f"({speedup:.0f}x faster, target >= 20x)")
