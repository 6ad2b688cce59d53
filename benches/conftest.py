"""Shared bench fixtures: a large memory-mapped embedding folder, written once per session.

IIMM_BENCH_ROWS (default 1 000 000) sets its row count; D = 512 float32, C = 1000 classes
(an ImageNet-sized label space), so the full file is 2 GB. IIMM_BENCH_DIR, when set, keeps
the folder there between sessions (rewritten only when its row count differs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

BENCH_D = 512
BENCH_C = 1000
WRITE_ROWS = 65536


def bench_rows() -> int:
    raw = os.environ.get("IIMM_BENCH_ROWS", "1000000")
    try:
        rows = int(raw)
    except ValueError:
        raise pytest.UsageError(f"IIMM_BENCH_ROWS must be a positive integer, got {raw!r}") from None
    if rows < 1024:
        raise pytest.UsageError(f"IIMM_BENCH_ROWS must be at least 1024, got {rows}")
    return rows


def write_embedding_folder(folder: Path, n: int, d: int = BENCH_D, c: int = BENCH_C, seed: int = 0) -> Path:
    """folder/image.npy (n, d) float32 (class centroids plus noise), label.npy (n,) int64, text.npy (c, d)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(c, d))
    labels = rng.integers(0, c, size=n)
    image = np.lib.format.open_memmap(folder / "image.npy.tmp", mode="w+", dtype=np.float32, shape=(n, d))
    for lo in range(0, n, WRITE_ROWS):
        hi = min(n, lo + WRITE_ROWS)
        image[lo:hi] = centroids[labels[lo:hi]] + 2.0 * rng.standard_normal((hi - lo, d))
    image.flush()
    del image
    os.replace(folder / "image.npy.tmp", folder / "image.npy")
    np.save(folder / "label.npy", labels)
    np.save(folder / "text.npy", centroids + rng.normal(size=(c, d)))
    return folder


def read_through(path: Path, block: int = 64 << 20) -> None:
    """Read a file once so that it sits in the page cache and every timed reader starts from RAM."""
    with open(path, "rb") as f:
        while f.read(block):
            pass


@pytest.fixture(scope="session")
def bench_folder(tmp_path_factory) -> Path:
    """A folder of embeddings (image.npy memory-mapped by readers), IIMM_BENCH_ROWS × 512 float32."""
    rows = bench_rows()
    keep = os.environ.get("IIMM_BENCH_DIR")
    if keep:
        folder = Path(keep) / f"pass1-{rows}x{BENCH_D}-c{BENCH_C}"
        if not _complete(folder, rows):
            write_embedding_folder(folder, rows)
    else:
        folder = write_embedding_folder(tmp_path_factory.mktemp("pass1") / "embeddings", rows)
    read_through(folder / "image.npy")
    return folder


def _complete(folder: Path, rows: int) -> bool:
    try:
        image = np.load(folder / "image.npy", mmap_mode="r")
        return image.shape == (rows, BENCH_D) and np.load(folder / "text.npy").shape == (BENCH_C, BENCH_D) \
            and np.load(folder / "label.npy", mmap_mode="r").shape == (rows,)
    except (OSError, ValueError):
        return False


def write_jpeg_tree(root: Path, n: int, classes: int, size: int | None = None) -> Path:
    """n random 32×32 JPEGs in `classes` class folders under root (upsampled to size×size when given)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        if size is not None:
            image.resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
        else:
            image.save(folder / f"{i:05d}.jpg")
    return root
