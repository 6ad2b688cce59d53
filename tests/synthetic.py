"""Random embeddings with structure: class centroids plus noise, unequal class sizes."""

from __future__ import annotations

import numpy as np


def structured(seed: int = 0, n: int = 200, d: int = 37, c: int = 6, noise: float = 1.2,
               singleton: bool = True, empty: bool = True, duplicates: int = 3, dtype=np.float32):
    """(image (n, d), label (n,), text (c, d)) with a one-row class, an empty class index and duplicated rows.

    Class c-1 is left empty and class c-2 has exactly one row when requested.
    """
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(c, d))
    weights = rng.dirichlet(np.ones(c) * 2.0)
    if empty:
        weights[-1] = 0.0
    if singleton:
        weights[-2] = 0.0
    weights /= weights.sum()
    y = rng.choice(c, size=n, p=weights)
    if singleton:
        y[0] = c - 2
    x = centroids[y] + noise * rng.normal(size=(n, d))
    for _ in range(duplicates):
        i, j = rng.choice(np.arange(1, n), 2, replace=False)
        x[j], y[j] = x[i], y[i]
    text = centroids + 0.8 * rng.normal(size=(c, d))
    return x.astype(dtype), y.astype(np.int64), text
