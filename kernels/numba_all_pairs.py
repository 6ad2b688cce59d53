"""All pairs of one row set on the CPU: one SGEMM per unordered tile pair, its distances added to both sides.

The rows are normalised once (float32 for float16/float32 input) and sorted by label, so that a
tile's keys of one class are one contiguous run. For each tile pair (I, J), I ≤ J:

1. BLAS (torch.mm, float32; float64 for float64 input) gives the dot products;
2. one numba loop, parallel over ranges of query rows, turns each dot into distances (Euclidean
   and/or cosine from the same dot), sums each row's run of keys of one class into
   `out[i, class]` and, in the same loop, adds each distance into its range's column sums for the
   query row's class; pairs above `reference.near_dot` (cosine distance below 1e-3) are recomputed from
   their two rows in float64 (where float32 rounding matters);
3. the ranges' column sums are added into `out[j, class]`.

Diagonal tiles use their upper triangle only. Cosine pairs at or below zero_eps (duplicates) add
0 and are counted apart (every other pair counts); they can only be among the recomputed pairs.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .numba_pairwise import POWER_HALF, POWER_LOG, POWER_ONE, POWER_TWO, power_mode
from .numba_rows import REASSOC, TINY, kernel_labels, kernel_rows, normalise_rows, within_torch_threads
from .reference import (ALL_PAIRS_TILE, AllPairsSums, check_pairwise_args, checked_tile_pairs, near_dot,
                        tile_pairs)

PARTS_PER_THREAD = 4  # contiguous ranges of query rows per thread, each with its own column sums


@within_torch_threads
def all_pairs_class_sums(rows, labels, num_classes: int, *, euclidean: bool = True, cosine_p: float | None = None,
                         zero_eps: float = 0.0, tile: int = ALL_PAIRS_TILE, progress=None, pairs=None) -> AllPairsSums:
    """The contract of `kernels.reference.all_pairs_class_sums`, on NumPy arrays or CPU tensors. The tile
    pairs (`pairs`) are those of the rows stably sorted by label (the rows of a label-sorted set as given)."""
    if cosine_p is not None:
        check_pairwise_args("cosine", cosine_p)
    arr = kernel_rows(rows)
    n = arr.shape[0]
    lab = kernel_labels(labels, n, num_classes)
    order = np.argsort(lab, kind="stable")
    x, sq, _ = normalise_rows(arr)
    x, sq, lab = np.ascontiguousarray(x[order]), sq[order], np.ascontiguousarray(lab[order])
    xt = torch.from_numpy(x)  # float32 (float64 only for float64 input, whose definition it is)
    do_e, do_c = bool(euclidean), cosine_p is not None
    c = num_classes
    out_e = np.zeros((n, c) if do_e else (0, 0))
    out_c = np.zeros((n, c) if do_c else (0, 0))
    skipped_c = np.zeros((n, c) if do_c else (0, 0), dtype=np.int64)
    side = min(tile, n)
    parts = PARTS_PER_THREAD * numba.get_num_threads()
    p = 1.0 if cosine_p is None else float(cosine_p)
    mode = power_mode(p)
    near = near_dot(zero_eps)  # every other pair counts
    todo = tile_pairs(n, tile) if pairs is None else checked_tile_pairs(pairs, n, tile)
    col_e = col_c = np.zeros((0, 0, 0))
    for done, (i0, j0) in enumerate(todo, 1):
        i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
        dots = torch.mm(xt[i0:i1], xt[j0:j1].T).numpy()
        runs, run_of_row, run_class = _runs(lab[j0:j1]), _run_index(lab[i0:i1]), _run_classes(lab[i0:i1])
        shape = (parts, len(run_class), side)
        if do_e and col_e.shape[:2] != shape[:2]:
            col_e = np.zeros(shape)
        if do_c and col_c.shape[:2] != shape[:2]:
            col_c = np.zeros(shape)
        with numba.parallel_chunksize(1):  # parts go to whichever thread is free
            skipped = _tile_pass(dots, x, sq, lab, runs, run_of_row, i0, j0, i0 == j0, do_e, do_c, mode, p,
                                 float(zero_eps), near, parts, col_e, col_c, out_e, out_c, skipped_c)
        if do_e:
            _flush_columns(col_e, run_class, j0, j1 - j0, out_e)
        if do_c:
            _flush_columns(col_c, run_class, j0, j1 - j0, out_c)
            if skipped:
                _skipped_columns(dots, x, lab, i0, j0, i0 == j0, float(zero_eps), near, skipped_c)
        if progress:
            progress(done, len(todo))
    back = np.empty_like(order)
    back[order] = np.arange(n)
    sums_e = torch.from_numpy(out_e[back]) if do_e else None
    if not do_c:
        return AllPairsSums(sums_e, None, None)
    counted = _pairs_per_class(lab, c, todo, tile) - skipped_c
    return AllPairsSums(sums_e, torch.from_numpy(out_c[back]), torch.from_numpy(counted[back]))


def _pairs_per_class(lab: np.ndarray, c: int, todo: list, tile: int) -> np.ndarray:
    """(n, C) int64: for each row, how many rows of each class the tile pairs `todo` pair it with."""
    n = lab.shape[0]
    out = np.zeros((n, c), dtype=np.int64)
    for i0, j0 in todo:
        i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
        out[i0:i1] += np.bincount(lab[j0:j1], minlength=c)
        if i0 == j0:
            out[np.arange(i0, i1), lab[i0:i1]] -= 1  # a row is not its own pair
        else:
            out[j0:j1] += np.bincount(lab[i0:i1], minlength=c)
    return out


def _runs(lab: np.ndarray) -> np.ndarray:
    """Sorted labels (b,) -> starts of their runs of one class, then b."""
    return np.r_[0, np.flatnonzero(np.diff(lab)) + 1, len(lab)].astype(np.int64)


def _run_index(lab: np.ndarray) -> np.ndarray:
    """Sorted labels (a,) -> (a,) the index of each row's run."""
    return np.r_[0, np.cumsum(np.diff(lab) != 0)].astype(np.int64)


def _run_classes(lab: np.ndarray) -> np.ndarray:
    return lab[_runs(lab)[:-1]]


@numba.njit(cache=True, fastmath=REASSOC)
def _exact_pair(x, a, b):
    """(‖x_a − x_b‖², x_a·x_b) in float64 from the two rows, without the cancellation of 2 − 2·cos."""
    d2 = 0.0
    dot = 0.0
    for k in range(x.shape[1]):
        u, v = np.float64(x[a, k]), np.float64(x[b, k])
        d2 += (u - v) * (u - v)
        dot += u * v
    return d2, dot


@numba.njit(cache=True)
def _power(dist, mode, p):
    if mode == POWER_ONE:
        return dist
    if mode == POWER_LOG:
        return math.log(max(dist, TINY))
    if mode == POWER_TWO:
        return dist * dist
    if mode == POWER_HALF:
        return math.sqrt(dist)
    return max(dist, TINY) ** p


# The run loops index views from 0: with bounds read from an array, numba cannot rule out negative indices
# (which wrap around), and the loops would not vectorise (5× slower).
@numba.njit(nogil=True, cache=True, fastmath=REASSOC, inline="always")
def _euclidean_run(dots, sq_keys, col, sq_i, near_dot):
    """One query row against a run of keys: dots (b,), sq_keys (b,) ‖x̂_j‖², col (b,) += each distance ->
    (Σ distances, near pairs); near pairs (dot above near_dot) add 0 here and are redone from their rows."""
    total = 0.0
    near = 0
    for u in range(dots.shape[0]):
        dot = np.float64(dots[u])
        near += dot > near_dot
        de = math.sqrt(max(sq_i + sq_keys[u] - 2.0 * dot, 0.0)) if not dot > near_dot else 0.0
        col[u] += de
        total += de
    return total, near


@numba.njit(nogil=True, cache=True, fastmath=REASSOC, inline="always")
def _cosine_run(dots, col, mode, p, near_dot):
    """As `_euclidean_run` for the cosine distance's power term (log for p = 0)."""
    total = 0.0
    near = 0
    if mode == POWER_ONE:
        for u in range(dots.shape[0]):
            dot = np.float64(dots[u])
            near += dot > near_dot
            tc = max(1.0 - dot, 0.0) if not dot > near_dot else 0.0
            col[u] += tc
            total += tc
    else:
        for u in range(dots.shape[0]):
            dot = np.float64(dots[u])
            near += dot > near_dot
            tc = _power(max(1.0 - dot, 0.0), mode, p) if not dot > near_dot else 0.0
            col[u] += tc
            total += tc
    return total, near


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=REASSOC)
def _tile_pass(dots, x, sq, lab, runs, run_of_row, i0, j0, diagonal, do_e, do_c, mode, p, zero_eps, near_dot,
               parts, col_e, col_c, out_e, out_c, skipped_c):
    """dots: (a, b) x̂_i·x̂_j of rows i0.., j0.. -> row sums into out_*[i, key class] and column sums into
    col_*[part, run of query rows of one class, key] (a part is a contiguous range of query rows).

    runs: (k + 1,) starts of the runs of keys of one class in 0..b, then b; run_of_row: (a,) the index
    of each query row's run. Diagonal tiles take pairs above the diagonal only. Near pairs are left
    out of the vectorised loops and recomputed from their rows; a cosine pair at or below zero_eps adds 0 and is counted in
    skipped_c on the row side (`_skipped_columns` counts its column side). Returns that count.
    """
    a, b = dots.shape
    skipped_total = 0
    for w in numba.prange(parts):
        row_lo = a * w // parts
        row_hi = a * (w + 1) // parts
        for r in range(row_lo, row_hi):
            gi = i0 + r
            first = r + 1 if diagonal else 0
            kr = run_of_row[r]
            sq_i = sq[gi]
            for k in range(runs.shape[0] - 1):
                s = max(runs[k], first)
                end = runs[k + 1]
                if s >= end:
                    continue
                cls = lab[j0 + s]
                near = 0
                sum_e = 0.0
                if do_e:
                    sum_e, near = _euclidean_run(dots[r, s:end], sq[j0 + s:j0 + end], col_e[w, kr, s:end], sq_i,
                                                 near_dot)
                sum_c = 0.0
                if do_c:
                    sum_c, near = _cosine_run(dots[r, s:end], col_c[w, kr, s:end], mode, p, near_dot)
                skipped = 0
                if near:
                    for t in range(s, end):
                        dot = np.float64(dots[r, t])
                        if not dot > near_dot:
                            continue
                        d2, exact = _exact_pair(x, gi, j0 + t)
                        if do_e:
                            de = math.sqrt(d2)
                            sum_e += de
                            col_e[w, kr, t] += de
                        if do_c:
                            dc = max(1.0 - exact, 0.0)
                            tc = _power(dc, mode, p) if dc > zero_eps else 0.0
                            skipped += not dc > zero_eps
                            sum_c += tc
                            col_c[w, kr, t] += tc
                if do_e:
                    out_e[gi, cls] += sum_e
                if do_c:
                    out_c[gi, cls] += sum_c
                    skipped_c[gi, cls] += skipped
                    skipped_total += skipped
    return skipped_total


@numba.njit(nogil=True, cache=True)
def _skipped_columns(dots, x, lab, i0, j0, diagonal, zero_eps, near_dot, skipped_c):
    """The column side of the pairs `_row_pass` left out (cosine distance ≤ zero_eps): rare, so serial."""
    a, b = dots.shape
    for r in range(a):
        for t in range(r + 1 if diagonal else 0, b):
            if dots[r, t] > near_dot and not max(1.0 - _exact_pair(x, i0 + r, j0 + t)[1], 0.0) > zero_eps:
                skipped_c[j0 + t, lab[i0 + r]] += 1


@numba.njit(nogil=True, cache=True, fastmath=REASSOC)
def _flush_columns(col, run_class, j0, b, out):
    """out[j0 + t, run_class[k]] += Σ_part col[part, k, t]; col is zeroed for the next tile. Small: serial."""
    parts, k_runs = col.shape[0], run_class.shape[0]
    acc = np.empty(b)
    for k in range(k_runs):
        acc[:] = 0.0
        for w in range(parts):
            for t in range(b):
                acc[t] += col[w, k, t]
                col[w, k, t] = 0.0
        for t in range(b):
            out[j0 + t, run_class[k]] += acc[t]
