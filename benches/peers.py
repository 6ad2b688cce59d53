"""Timing helpers for benches: the slow peer timed once, our path by pytest-benchmark, the ratio recorded."""

from __future__ import annotations

import time

import numpy as np


def time_once(fn, *args, **kwargs):
    """(seconds, result) of one call; for peers too slow for repeated rounds."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def record_ratio(benchmark, peer_name: str, peer_seconds: float) -> float:
    """Store `peer / ours` (how many times faster we are) in extra_info and print it."""
    ours = benchmark.stats.stats.median
    ratio = peer_seconds / ours
    benchmark.extra_info[f"{peer_name}_seconds"] = peer_seconds
    benchmark.extra_info[f"speedup_vs_{peer_name}"] = ratio
    print(f"\n{benchmark.name}: ours {ours:.4f} s, {peer_name} {peer_seconds:.4f} s, speedup {ratio:.1f}x")
    return ratio


def structured_embeddings(n: int, d: int, c: int, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    x = (centroids[y] + 2.0 * rng.normal(size=(n, d))).astype(dtype)
    t = centroids + rng.normal(size=(c, d))
    return x, y, t
