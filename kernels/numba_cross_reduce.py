"""Pass 2 on the CPU: per-row reductions of s_ik = x̂_i · m_k against a small (K, D) matrix.

Two routes, chosen by the size of the matrix:
- fused (K·D small): each thread reads a row once into an L1 buffer, normalises it,
  dots it with every matrix row (the matrix stays in L1/L2) and reduces on the spot;
- blocked (K·D large): a block of rows is normalised into a small buffer, multiplied
  by the matrix with BLAS (torch.mm), and each row of the (block, K) product reduced.
Memory is O(K·D + block·K) whatever n is.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from . import numba_rows
from .numba_rows import within_torch_threads
from .numba_rows import (HALF_TABLE, REASSOC, compute_dtype, dot, first_bad, inverse_norm, kernel_labels,
                         kernel_rows, load_row, normalise_rows, num_blocks, readonly)
from ..errors import InputError
from .reference import CrossReduce

# The fused route up to this K·D: measured against the blocked route on one core (D = 512,
# float32 rows) the fused one wins up to K ≈ 16 and BLAS beyond (4× at K = 300).
FUSED_MAX_VALUES = 8192
SIMS_BLOCK_VALUES = 1 << 21  # rows × K of one blocked product (8 MiB in float32)


@within_torch_threads
def cross_reduce(rows, labels, matrix, col_scale=None, col_valid=None) -> CrossReduce:
    """rows: (n, D) float; labels: (n,) int64 in [0, K); matrix: (K, D); col_scale: (K,) float;
    col_valid: (K,) bool -> CrossReduce (see `kernels.reference.CrossReduce`)."""
    arr = kernel_rows(rows)
    n, d = arr.shape
    mat = _as_numpy(matrix)
    if mat.ndim != 2 or mat.shape[1] != d:
        raise InputError(f"the matrix has shape {mat.shape} but rows have D={d}; pass a (K, {d}) matrix")
    k = mat.shape[0]
    lab = kernel_labels(labels, n, k)
    scale = _column_vector(col_scale, k, np.float64, 1.0, "col_scale")
    valid = _column_vector(col_valid, k, np.bool_, True, "col_valid")
    correct, other, best, sq_norm = (np.empty(n) for _ in range(4))
    rank = np.empty(n, dtype=np.int32)
    bad = -1
    if n and k * d <= FUSED_MAX_VALUES:
        block_rows = numba_rows.BLOCK_ROWS
        bad_by_block = np.full(num_blocks(n, block_rows), -1, dtype=np.int64)
        with numba.parallel_chunksize(1):  # blocks go to whichever thread is free
            _fused(arr, lab, HALF_TABLE, readonly(np.ascontiguousarray(mat, dtype=np.float64)), scale, valid,
                   correct, other, rank, best, sq_norm, bad_by_block, block_rows)
        bad = first_bad(bad_by_block)
    elif n:
        bad = _blocked(arr, lab, mat, scale, valid, correct, other, rank, best, sq_norm)
    out = (torch.from_numpy(a) for a in (correct, other, rank, best, sq_norm))
    return CrossReduce(*out, bad)


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = (a.double() if a.dtype == torch.bfloat16 else a).numpy()
    return np.asarray(a)


def _column_vector(v, k: int, dtype, fill, name: str) -> np.ndarray:
    if v is None:
        return readonly(np.full(k, fill, dtype=dtype))
    arr = np.ascontiguousarray(_as_numpy(v), dtype=dtype)
    if arr.shape != (k,):
        raise InputError(f"{name} has shape {arr.shape} but the matrix has K={k} rows; pass one value per row")
    return readonly(arr)


@numba.njit(cache=True)
def _reduce_row(sims, y, scale, valid):
    """sims: (K,) -> (s_y, Σ_{k≠y} s_k, #{k: s_k > s_y}, max_{k≠y, valid} scale_k·s_k or -inf)."""
    correct = np.float64(sims[y])
    other = 0.0
    rank = 0
    best = -math.inf
    for k in range(sims.shape[0]):
        s = np.float64(sims[k])
        if s > correct:
            rank += 1
        if k != y:
            other += s
            if valid[k]:
                best = max(best, scale[k] * s)
    return correct, other, rank, best


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=REASSOC)
def _fused(rows, labels, table, matrix, scale, valid, correct, other, rank, best, sq_norm, bad_by_block, block_rows):
    n, d = rows.shape
    k = matrix.shape[0]
    for b in numba.prange(bad_by_block.shape[0]):
        buf = np.empty(d)
        sims = np.empty(k)
        first = -1
        for i in range(b * block_rows, min(n, (b + 1) * block_rows)):
            inv, sq_hat, bad = inverse_norm(load_row(rows, i, table, buf))
            if bad and first < 0:
                first = i
            for c in range(k):
                sims[c] = dot(buf, matrix[c]) * inv
            correct[i], other[i], rank[i], best[i] = _reduce_row(sims, labels[i], scale, valid)
            sq_norm[i] = sq_hat
        bad_by_block[b] = first


@numba.njit(parallel=True, nogil=True, cache=True)
def _reduce_block(sims, labels, scale, valid, correct, other, rank, best):
    for i in numba.prange(sims.shape[0]):
        correct[i], other[i], rank[i], best[i] = _reduce_row(sims[i], labels[i], scale, valid)


def _blocked(arr, lab, mat, scale, valid, correct, other, rank, best, sq_norm) -> int:
    n, k = arr.shape[0], mat.shape[0]
    mat_t = torch.from_numpy(np.ascontiguousarray(mat, dtype=compute_dtype(arr)).T)
    block = max(64, SIMS_BLOCK_VALUES // max(k, 1))
    bad = -1
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        x, sq_norm[lo:hi], block_bad = normalise_rows(arr[lo:hi])
        if bad < 0 and block_bad >= 0:
            bad = lo + block_bad
        sims = readonly(torch.mm(torch.from_numpy(x), mat_t).numpy())
        _reduce_block(sims, lab[lo:hi], scale, valid, correct[lo:hi], other[lo:hi], rank[lo:hi], best[lo:hi])
    return bad
