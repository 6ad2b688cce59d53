"""Every compute op in plain PyTorch, on any device.

The oracle for the compiled kernels and the "pure-PyTorch path" the benchmarks
compare against. Each op normalises its rows itself (fp32 for fp16/bf16/fp32
input, fp64 for fp64 input), so callers pass rows exactly as stored.

Op contract shared by every backend (`kernels.numba_cpu`, `kernels.triton_*`):

- `class_sums(rows, labels, num_classes) -> ClassSums`
- `cross_reduce(rows, labels, matrix, col_scale=None, col_valid=None) -> CrossReduce`
- `pairwise_class_sums(queries, keys, key_labels, num_classes, *, metric, p,
  query_offset, key_offset, zero_eps) -> PairwiseSums`
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError


class ClassSums(NamedTuple):
    """Pass-1 statistics of one chunk.

    sums: (C, D) float64, Σ of the normalised rows of each class.
    counts: (C,) int64 rows per class.
    sq_norm_sum: () float64, Σ ‖x̂_i‖² over the chunk (≈ n).
    first_bad: index in the chunk of the first zero-norm or non-finite row, -1 if none.
    """

    sums: torch.Tensor
    counts: torch.Tensor
    sq_norm_sum: torch.Tensor
    first_bad: int


class CrossReduce(NamedTuple):
    """Per-row reductions of `s_ik = x̂_i · m_k` against a small (K, D) matrix.

    correct: (n,) float64, s_{i, y_i}.
    other_sum: (n,) float64, Σ_{k ≠ y_i} s_ik.
    rank: (n,) int32, #{k : s_ik > s_{i, y_i}} (0 is a top-1 hit; ties count as hits).
    best_other: (n,) float64, max over k ≠ y_i with col_valid[k] of col_scale[k]·s_ik
        (-inf when no such k).
    sq_norm: (n,) float64, ‖x̂_i‖².
    first_bad: index of the first zero-norm or non-finite row, -1 if none.
    """

    correct: torch.Tensor
    other_sum: torch.Tensor
    rank: torch.Tensor
    best_other: torch.Tensor
    sq_norm: torch.Tensor
    first_bad: int


class PairwiseSums(NamedTuple):
    """Per-query, per-key-class sums over all (query, key) pairs.

    sums: (m, C) float64, Σ d_ij^p over keys j of class c (log d_ij when p == 0),
        counting only pairs with i ≠ j (global index) and d_ij > zero_eps.
    counts: (m, C) int64, the number of pairs summed.
    """

    sums: torch.Tensor
    counts: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_tensor(rows, device: torch.device | str | None = None) -> torch.Tensor:
    """A NumPy array (memory-mapped or not) or tensor as a tensor on `device`, zero-copy on CPU."""
    if not isinstance(rows, torch.Tensor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmaps: no op writes to its rows
            rows = torch.from_numpy(np.asarray(rows))
    return rows if device is None else rows.to(device)


def normalise_rows(rows: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """rows: (n, D) -> (x̂ (n, D), ‖x̂‖² (n,) float64, first bad row or -1); x̂ is a new tensor.

    The one definition of a unit row: x̂ = x / ‖x‖ in `dtype` (default `compute_dtype`: float64 for
    float64 rows, else float32); a zero-norm or non-finite row is reported, not divided by zero.
    The backends' fused kernels normalise the same way inside their loops.
    """
    x = rows.to(dtype or compute_dtype(rows.dtype))
    norm = torch.linalg.vector_norm(x, dim=1)
    bad = ~torch.isfinite(norm) | (norm == 0)
    first_bad = int(torch.nonzero(bad)[0, 0]) if bool(bad.any()) else -1
    x = x / norm.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(1)
    # ‖x̂‖² from the norms of the unit rows: a float64 copy of x̂ just to square it would cost more than the rest
    return x, torch.linalg.vector_norm(x, dim=1).double().square(), first_bad


def class_sums(rows: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassSums:
    """rows: (n, D) float; labels: (n,) int64 in [0, C) -> ClassSums."""
    x, sq_norm, first_bad = normalise_rows(rows)
    labels = labels.to(x.device)
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=num_classes)
    return ClassSums(sums, counts, sq_norm.sum(), first_bad)


def cross_reduce(rows: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor,
                 col_scale: torch.Tensor | None = None, col_valid: torch.Tensor | None = None) -> CrossReduce:
    """rows: (n, D); labels: (n,) int64 in [0, K); matrix: (K, D); col_scale: (K,); col_valid: (K,) bool."""
    x, sq_norm, first_bad = normalise_rows(rows)
    labels = labels.to(x.device)
    sims = (x @ matrix.to(x.device, x.dtype).T).double()
    correct = sims.gather(1, labels.unsqueeze(1)).squeeze(1)
    other_sum = sims.sum(1) - correct
    rank = (sims > correct.unsqueeze(1)).sum(1, dtype=torch.int32)
    scaled = sims if col_scale is None else sims * col_scale.to(sims.device, torch.float64)
    masked = torch.ones_like(sims, dtype=torch.bool)
    masked.scatter_(1, labels.unsqueeze(1), False)
    if col_valid is not None:
        masked &= col_valid.to(sims.device).unsqueeze(0)
    best_other = (scaled.masked_fill(~masked, -math.inf).amax(1) if sims.shape[1]
                  else correct.new_full(correct.shape, -math.inf))
    return CrossReduce(correct, other_sum, rank, best_other, sq_norm, first_bad)


PAIRWISE_METRICS = ("cosine", "euclidean")


def check_pairwise_args(metric: str, p: float) -> None:
    """The argument checks of `pairwise_class_sums`, the same on every backend."""
    if metric not in PAIRWISE_METRICS:
        raise InputError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")
    if not math.isfinite(p):
        raise InputError(f"the power p must be finite, got {p}; pass a finite exponent")


def pairwise_distances(xq: torch.Tensor, xk: torch.Tensor, metric: str) -> torch.Tensor:
    """Unit rows xq: (m, D), xk: (n, D) -> (m, n) cosine (1 - cos) or Euclidean distances."""
    check_pairwise_args(metric, 1.0)
    dist = xq @ xk.T
    if metric == "cosine":
        return dist.neg_().add_(1.0).clamp_min_(0.0)
    dist.mul_(-2.0).add_(xq.square().sum(1, keepdim=True)).add_(xk.square().sum(1).unsqueeze(0))
    return dist.clamp_min_(0.0).sqrt_()


def pairwise_class_sums(queries: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int, *,
                        metric: str = "euclidean", p: float = 1.0, query_offset: int = 0, key_offset: int = 0,
                        zero_eps: float = 0.0) -> PairwiseSums:
    """queries: (m, D), keys: (n, D), key_labels: (n,) int64 -> PairwiseSums (m, C).

    Rows are normalised first, distances computed in float64; pair (i, j) is the global pair
    (query_offset + i, key_offset + j).
    """
    check_pairwise_args(metric, p)
    # float64: near-duplicate rows put distances near 0, where sqrt turns fp32 rounding into 1e-4 errors.
    xq = normalise_rows(queries)[0].double()
    xk = normalise_rows(keys)[0].double().to(xq.device)
    dist = pairwise_distances(xq, xk, metric)
    keep = dist > zero_eps
    lo, hi = max(query_offset, key_offset), min(query_offset + xq.shape[0], key_offset + xk.shape[0])
    if hi > lo:  # the tile holds self pairs (i == j globally): leave them out
        own = torch.arange(lo, hi, device=xq.device)
        keep[own - query_offset, own - key_offset] = False
    if p == 0.0:
        term = dist.clamp_min_(torch.finfo(torch.float64).tiny).log_()
    elif p != 1.0:
        term = dist.clamp_min_(torch.finfo(torch.float64).tiny).pow_(p)
    else:
        term = dist
    term.masked_fill_(~keep, 0.0)
    onehot = torch.nn.functional.one_hot(key_labels.to(xq.device), num_classes).to(torch.float64)
    counts = keep.to(torch.float32) @ onehot.to(torch.float32)  # exact below 2**24 keys per tile
    return PairwiseSums(term @ onehot, counts.round_().long())


# ---------------------------------------------------------------- all pairs of one row set, symmetric tiles

# Pairs with cosine distance below this (x̂_i·x̂_j above 1 − NEAR_COS_DISTANCE) are recomputed from their
# two rows in float64: there the float32 dot product's rounding (~1e-7) is large against the distance
# (and decides which pairs fall under zero_eps). For unit rows it is a Euclidean distance below ~0.045.
NEAR_COS_DISTANCE = 1e-3


def near_dot(zero_eps: float) -> float:
    """Products x̂_i·x̂_j above this are recomputed in float64: cosine distances below NEAR_COS_DISTANCE, and every
    pair zero_eps might drop (so that d ≤ zero_eps is decided on the float64 distance). The same on every backend."""
    return 1.0 - max(NEAR_COS_DISTANCE, 10.0 * float(zero_eps))


ALL_PAIRS_TILE = 2048


class AllPairsSums(NamedTuple):
    """Per-row, per-class sums over every pair (i, j ≠ i) of ONE row set, in the caller's row order.

    euclidean: (n, C) float64 Σ_j ‖x̂_i − x̂_j‖ over the rows j of class c (None when not asked for).
    cosine: (n, C) float64 Σ_j d_ij^p (log d_ij for p = 0), d_ij = 1 − x̂_i·x̂_j, over the rows j of
        class c with d_ij > zero_eps (None when not asked for).
    cosine_pairs: (n, C) int64, how many pairs `cosine` sums.
    """

    euclidean: torch.Tensor | None
    cosine: torch.Tensor | None
    cosine_pairs: torch.Tensor | None


def tile_pairs(n: int, tile: int) -> list[tuple[int, int]]:
    """Starts (i0, j0), i0 ≤ j0, of the unordered tile pairs covering an n × n matrix."""
    starts = range(0, n, tile)
    return [(i0, j0) for i0 in starts for j0 in starts if j0 >= i0]


def checked_tile_pairs(pairs, n: int, tile: int) -> list[tuple[int, int]]:
    """`pairs` as a list, each one a tile pair of `tile_pairs(n, tile)` (else a ValueError)."""
    pairs = [(int(i0), int(j0)) for i0, j0 in pairs]
    for i0, j0 in pairs:
        if not (0 <= i0 <= j0 < n and i0 % tile == 0 and j0 % tile == 0):
            raise ValueError(f"({i0}, {j0}) is not a tile pair of {n} rows in tiles of {tile}")
    return pairs


def power_term(dist: torch.Tensor, p: float) -> torch.Tensor:
    """d^p (log d for p = 0), float64, clamped away from 0 as every backend does."""
    if p == 1.0:
        return dist
    dist = dist.clamp_min(torch.finfo(torch.float64).tiny)
    return dist.log() if p == 0.0 else dist.pow(p)


def all_pairs_class_sums(rows: torch.Tensor, labels: torch.Tensor, num_classes: int, *, euclidean: bool = True,
                         cosine_p: float | None = None, zero_eps: float = 0.0, tile: int = ALL_PAIRS_TILE,
                         progress=None, pairs=None) -> AllPairsSums:
    """rows: (n, D) as stored (checked rows: no zero or non-finite row); labels: (n,) int64 -> AllPairsSums.

    pairs: the tile pairs (i0, j0) of `tile_pairs(n, tile)` to sum (a unit of a distributed sweep; the
    sums of a partition of the tile pairs add up to the whole), None for all of them.

    Each unordered tile pair is one float32 matrix product (float64 for float64 rows) whose distances
    are added to both of its sides; the Euclidean and cosine sums share it. Near pairs (see `near_dot`) are recomputed
    in float64. progress(done, total) is called after each tile pair.
    """
    if cosine_p is not None:
        check_pairwise_args("cosine", cosine_p)
    x, sq, _ = normalise_rows(rows)
    labels = labels.to(x.device).long()
    n, c = x.shape[0], num_classes
    new = lambda: torch.zeros(n, c, dtype=torch.float64, device=x.device)  # noqa: E731
    out_e = new() if euclidean else None
    out_c, pairs_c = (new(), new()) if cosine_p is not None else (None, None)
    todo = tile_pairs(n, tile) if pairs is None else checked_tile_pairs(pairs, n, tile)
    near = near_dot(zero_eps)
    for done, (i0, j0) in enumerate(todo, 1):
        i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
        dots = (x[i0:i1] @ x[j0:j1].T).double()  # float32 products (float64 for float64 rows)
        pair = torch.ones_like(dots, dtype=torch.bool)
        if i0 == j0:
            pair = torch.triu(pair, diagonal=1)
        ii, jj = torch.nonzero(pair & (dots > near), as_tuple=True)
        xi, xj = x[i0 + ii].double(), x[j0 + jj].double()
        lab_i, lab_j = labels[i0:i1], labels[j0:j1]
        if euclidean:
            d2 = (sq[i0:i1].unsqueeze(1) + sq[j0:j1].unsqueeze(0) - 2.0 * dots)
            d2[ii, jj] = (xi - xj).square().sum(1)
            dist = d2.clamp_min_(0.0).sqrt_().masked_fill_(~pair, 0.0)
            _add_both_sides(out_e, dist, i0, i1, j0, j1, lab_i, lab_j)
        if cosine_p is not None:
            cos = 1.0 - dots
            cos[ii, jj] = 1.0 - (xi * xj).sum(1)
            cos.clamp_min_(0.0)
            keep = pair & (cos > zero_eps)
            term = power_term(cos, cosine_p).masked_fill_(~keep, 0.0)
            _add_both_sides(out_c, term, i0, i1, j0, j1, lab_i, lab_j)
            _add_both_sides(pairs_c, keep.double(), i0, i1, j0, j1, lab_i, lab_j)
        if progress:
            progress(done, len(todo))
    return AllPairsSums(out_e, out_c, None if pairs_c is None else pairs_c.round().long())


def _add_both_sides(out: torch.Tensor, values: torch.Tensor, i0: int, i1: int, j0: int, j1: int,
                    lab_i: torch.Tensor, lab_j: torch.Tensor) -> None:
    """values: (a, b) for pairs (i0 + r, j0 + s) -> out[i, class of j] and out[j, class of i]."""
    out[i0:i1].index_add_(1, lab_j, values)
    out[j0:j1].index_add_(1, lab_i, values.T)
