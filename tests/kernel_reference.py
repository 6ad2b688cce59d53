"""The three kernel ops written out as their float64 definitions, for the numba and Triton kernel tests.

Every helper takes NumPy arrays or tensors (on any device) and returns NumPy: rows are normalised
as stored, in float64, with nothing fused or blocked, so each result is the plain definition.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy() if a.is_floating_point() else a.detach().cpu().numpy()
    return np.asarray(a)


def unit64(rows) -> np.ndarray:
    """rows: (n, D) as stored -> (n, D) float64, each row divided by its norm (the definition, no tricks)."""
    x = as_numpy(rows).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_class_sums(rows, labels, c: int) -> tuple[np.ndarray, np.ndarray, float]:
    """-> (per-class sums of unit rows (c, D), class counts (c,), Σ‖x̂‖² over all rows)."""
    x, y = unit64(rows), as_numpy(labels)
    sums = np.zeros((c, x.shape[1]))
    for i in range(len(x)):
        sums[y[i]] += x[i]
    return sums, np.bincount(y, minlength=c), float((x * x).sum())


def naive_cross_reduce(rows, labels, matrix, col_scale=None, col_valid=None) -> dict[str, np.ndarray]:
    """Per row i with label y_i and s_k = x̂_i · m_k (matrix: (K, D) float):

    sims (n, K); correct = s_y; other_sum = Σ_{k≠y} s_k; rank = #{k ≠ y: s_k > s_y};
    best_other = max over valid k ≠ y of scale_k · s_k (−inf when there is none).
    """
    x, y, m = unit64(rows), as_numpy(labels), as_numpy(matrix).astype(np.float64)
    k = m.shape[0]
    scale = np.ones(k) if col_scale is None else as_numpy(col_scale).astype(np.float64)
    valid = np.ones(k, bool) if col_valid is None else as_numpy(col_valid).astype(bool)
    sims = np.zeros((len(x), k))
    out = {"correct": [], "other_sum": [], "rank": [], "best_other": []}
    for i in range(len(x)):
        s = sims[i] = (m * x[i]).sum(1)  # equal matrix rows give equal similarities, bit for bit
        others = [j for j in range(k) if j != y[i]]
        out["correct"].append(s[y[i]])
        out["other_sum"].append(sum(s[j] for j in others))
        out["rank"].append(sum(1 for j in others if s[j] > s[y[i]]))
        out["best_other"].append(max([scale[j] * s[j] for j in others if valid[j]], default=-math.inf))
    return {"sims": sims, **{key: np.array(v) for key, v in out.items()}}


def naive_distances(queries, keys, metric: str) -> np.ndarray:
    """(m, n) distances between unit rows: Euclidean ‖x̂ − ẑ‖, or cosine 1 − x̂·ẑ."""
    xq, xk = unit64(queries), unit64(keys)
    if metric == "euclidean":
        return np.sqrt(((xq[:, None, :] - xk[None, :, :]) ** 2).sum(-1))
    return 1.0 - xq @ xk.T


def naive_pairwise(queries, keys, key_labels, c: int, metric: str, p: float, query_offset: int, key_offset: int,
                   zero_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (sums (m, c), counts (m, c)): Σ_j d_ij^p (Σ log d_ij for p = 0) over the keys j of each class,
    skipping the self pair (same global index) and pairs not farther apart than zero_eps."""
    dist, y = naive_distances(queries, keys, metric), as_numpy(key_labels)
    sums, counts = np.zeros((dist.shape[0], c)), np.zeros((dist.shape[0], c), np.int64)
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            d = dist[i, j]
            if query_offset + i == key_offset + j or not d > zero_eps:
                continue
            sums[i, y[j]] += math.log(d) if p == 0 else d ** p
            counts[i, y[j]] += 1
    return sums, counts
