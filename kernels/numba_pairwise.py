"""All-pairs distances on the CPU, reduced to per-query, per-key-class sums, tile by tile.

Queries are normalised once; keys one block at a time. For each (query block, key
block) tile, BLAS (torch.mm, float64) gives the dot products and a numba loop turns them into
distances, drops self pairs and near-zero distances, applies the power and adds
each term to its key's class. Nothing larger than one tile is ever held.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ..errors import InputError
from .numba_rows import within_torch_threads
from .numba_rows import TINY, kernel_labels, kernel_rows, normalise_rows, readonly
from .reference import PairwiseSums, check_pairwise_args

QUERY_BLOCK = 512
KEY_BLOCK = 2048
# How d^p is computed: the common exponents get exact cheap forms.
POWER_ONE, POWER_LOG, POWER_TWO, POWER_HALF, POWER_ANY = range(5)


def power_mode(p: float) -> int:
    return {1.0: POWER_ONE, 0.0: POWER_LOG, 2.0: POWER_TWO, 0.5: POWER_HALF}.get(float(p), POWER_ANY)


@within_torch_threads
def pairwise_class_sums(queries, keys, key_labels, num_classes: int, *, metric: str = "euclidean", p: float = 1.0,
                        query_offset: int = 0, key_offset: int = 0, zero_eps: float = 0.0) -> PairwiseSums:
    """queries: (m, D), keys: (n, D), key_labels: (n,) int64 -> PairwiseSums (m, C).

    The contract of `kernels.reference.pairwise_class_sums`: Σ d_ij^p (log d_ij for p = 0) and pair
    counts per key class, over pairs whose global indices differ and with d_ij > zero_eps.
    """
    check_pairwise_args(metric, p)
    q_rows, k_rows = kernel_rows(queries), kernel_rows(keys)
    if q_rows.shape[1] != k_rows.shape[1]:
        raise InputError(f"queries have D={q_rows.shape[1]} but keys have D={k_rows.shape[1]}; "
                         f"pass embeddings of one model")
    m, n = q_rows.shape[0], k_rows.shape[0]
    labels = kernel_labels(key_labels, n, num_classes)
    sums = np.zeros((m, num_classes))
    counts = np.zeros((m, num_classes), dtype=np.int64)
    if m and n:
        # float64 dot products, as the reference: near-duplicate rows put distances near 0, where
        # sqrt turns fp32 rounding into 1e-4 errors.
        xq, sq_q, _ = normalise_rows(q_rows)
        xq = xq.astype(np.float64, copy=False)
        euclidean, mode = metric == "euclidean", power_mode(p)
        for k0 in range(0, n, KEY_BLOCK):
            k1 = min(n, k0 + KEY_BLOCK)
            xk, sq_k, _ = normalise_rows(k_rows[k0:k1])
            xk_t = torch.from_numpy(xk.astype(np.float64, copy=False)).T
            for q0 in range(0, m, QUERY_BLOCK):
                q1 = min(m, q0 + QUERY_BLOCK)
                dots = readonly(torch.mm(torch.from_numpy(xq[q0:q1]), xk_t).numpy())
                _accumulate_tile(dots, sq_q[q0:q1], sq_k, labels[k0:k1], query_offset + q0, key_offset + k0,
                                 euclidean, mode, float(p), float(zero_eps), sums[q0:q1], counts[q0:q1])
    return PairwiseSums(torch.from_numpy(sums), torch.from_numpy(counts))


@numba.njit(parallel=True, nogil=True, cache=True)
def _accumulate_tile(dots, sq_q, sq_k, labels, q_start, k_start, euclidean, mode, p, zero_eps, sums, counts):
    """dots: (a, b) x̂_q·x̂_k of one tile; adds its terms into sums/counts (a, C) by key class."""
    a, b = dots.shape
    for i in numba.prange(a):
        gi = q_start + i
        for j in range(b):
            if gi == k_start + j:
                continue
            s = np.float64(dots[i, j])
            if euclidean:
                dist = math.sqrt(max(sq_q[i] + sq_k[j] - 2.0 * s, 0.0))
            else:
                dist = max(1.0 - s, 0.0)
            if not dist > zero_eps:
                continue
            if mode == POWER_ONE:
                term = dist
            elif mode == POWER_LOG:
                term = math.log(max(dist, TINY))
            elif mode == POWER_TWO:
                term = dist * dist
            elif mode == POWER_HALF:
                term = math.sqrt(dist)
            else:
                term = max(dist, TINY) ** p
            c = labels[j]
            sums[i, c] += term
            counts[i, c] += 1
