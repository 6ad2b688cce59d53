"""All pairs of one row set as one tiled Triton kernel: each unordered block pair once, added to both sides.

The launcher normalises the rows once (`reference.normalise_rows`: float32 unit rows, float64 for
float64 input) and sorts them by label, so that the keys of one class are one contiguous run of a
block. For each tile pair (i0, j0), i0 ≤ j0, of `reference.tile_pairs` it launches one grid of
(BLOCK_M, BLOCK_N) blocks; a program:

1. computes its block of dot products with `tl.dot` (three-pass TF32 on tensor cores for float32,
   which keeps float32 accuracy; IEEE float64 for float64 rows);
2. recomputes in float64, from the two rows, every pair whose cosine distance is below
   `NEAR_COS_DISTANCE` (`reference.near_dot`), where the float32 product's rounding matters;
3. turns each dot into the Euclidean distance and/or the cosine distance's power (one product feeds
   both scores), in float64;
4. sums each query row's distances over every class run of the block's keys, and each key's over
   every class run of its queries, and adds both into the (n, C) float64 outputs with atomics.

Blocks of a diagonal tile pair below the diagonal do nothing; on the diagonal only pairs i < j count.
The float64 atomics make the sums independent of the block order up to float64 rounding (not bitwise
repeatable); the outputs are accumulators, so they start zeroed rather than poisoned.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import triton
import triton.language as tl

from . import triton_settings as settings
from .reference import (ALL_PAIRS_TILE, AllPairsSums, check_pairwise_args, checked_tile_pairs, near_dot,
                        normalise_rows, tile_pairs)
from .triton_common import CompileVariant, check_labels, first_flagged, kernel_device, kernel_rows, label_order


@triton.jit
def _exact_pair(x_ptr, stride_x, i, j, D, BLOCK_DK: tl.constexpr):
    """(x̂_i·x̂_j, ‖x̂_i − x̂_j‖²) in float64 from the two unit rows, without the cancellation of 2 − 2·cos."""
    dot = tl.zeros((BLOCK_DK,), dtype=tl.float64)
    sq = tl.zeros((BLOCK_DK,), dtype=tl.float64)
    for d0 in range(0, D, BLOCK_DK):
        dd = d0 + tl.arange(0, BLOCK_DK)
        a = tl.load(x_ptr + i * stride_x + dd, mask=dd < D, other=0.0).to(tl.float64)
        b = tl.load(x_ptr + j * stride_x + dd, mask=dd < D, other=0.0).to(tl.float64)
        dot += a * b
        sq += (a - b) * (a - b)
    return tl.sum(dot, axis=0), tl.sum(sq, axis=0)


@triton.jit
def _refine_near_pairs(dots, sq_dist, near, x_ptr, stride_x, rows, cols, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr):
    """The flagged entries of the (BLOCK_M, BLOCK_N) float64 dot and squared-distance tiles, redone exactly.

    Near pairs are rare (duplicates and near-duplicates), so each is redone on its own from its two rows.
    """
    remaining = tl.sum(tl.sum(near.to(tl.int32), axis=1), axis=0)
    while remaining > 0:
        r, s, this = first_flagged(near, BLOCK_M, BLOCK_N)
        i = tl.sum(tl.where(tl.arange(0, BLOCK_M) == r, rows, 0), axis=0)
        j = tl.sum(tl.where(tl.arange(0, BLOCK_N) == s, cols, 0), axis=0)
        dot, sq = _exact_pair(x_ptr, stride_x, i, j, D, BLOCK_DK)
        dots = tl.where(this, dot, dots)
        sq_dist = tl.where(this, sq, sq_dist)
        near = near & ~this
        remaining -= 1
    return dots, sq_dist


@triton.jit
def _add_by_class(out_ptr, C, values, idx, idx_ok, other_labels, other_ok, big_label, AXIS: tl.constexpr):
    """For each class run c of the other side's rows: out[idx, c] += the sum of `values` over that run.

    AXIS = 1: idx are the tile's rows and the runs are along its columns; AXIS = 0: the other way round.
    """
    c = tl.min(tl.where(other_ok, other_labels, big_label), axis=0)
    c_last = tl.max(tl.where(other_ok, other_labels, -1), axis=0)
    while c <= c_last:
        in_class = other_ok & (other_labels == c)
        if AXIS == 1:
            total = tl.sum(tl.where(in_class[None, :], values, 0), axis=1)
        else:
            total = tl.sum(tl.where(in_class[:, None], values, 0), axis=0)
        tl.atomic_add(out_ptr + idx * C + c, total, mask=idx_ok, sem="relaxed")
        c = tl.min(tl.where(other_ok & (other_labels > c), other_labels, c_last + 1), axis=0)


@triton.jit
def _add_both_sides(out_ptr, C, values, rows, row_ok, row_labels, cols, col_ok, col_labels, big_label):
    """values (BLOCK_M, BLOCK_N) of pairs (rows[r], cols[s]) -> out[row, class of col] and out[col, class of row]."""
    _add_by_class(out_ptr, C, values, rows, row_ok, col_labels, col_ok, big_label, 1)
    _add_by_class(out_ptr, C, values, cols, col_ok, row_labels, row_ok, big_label, 0)


# The outputs accumulate across launches: autotuning's trial runs must not leave their sums in them.
@triton.autotune(configs=settings.all_pairs_configs(), key=["D", "EUCLIDEAN", "COSINE", "POWER"],
                 restore_value=["out_e_ptr", "out_c_ptr", "pairs_c_ptr"])
@triton.jit
def _all_pairs_kernel(x_ptr, stride_x, sq_ptr, labels_ptr, out_e_ptr, out_c_ptr, pairs_c_ptr,
                      params_ptr, i0, i1, j0, j1, C, D,
                      EUCLIDEAN: tl.constexpr, COSINE: tl.constexpr, POWER: tl.constexpr, IS_FP64: tl.constexpr,
                      PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr):
    # p, zero_eps and the near-pair threshold as float64 (a Python float argument would arrive as float32)
    p = tl.load(params_ptr)
    zero_eps = tl.load(params_ptr + 1)
    near_dot = tl.load(params_ptr + 2)
    row_lo = i0 + tl.program_id(0) * BLOCK_M
    col_lo = j0 + tl.program_id(1) * BLOCK_N
    # On a diagonal tile pair only i < j counts: a block with no such pair has nothing to do.
    if (i0 != j0) | (row_lo < col_lo + BLOCK_N - 1):
        rows = row_lo.to(tl.int64) + tl.arange(0, BLOCK_M)
        cols = col_lo.to(tl.int64) + tl.arange(0, BLOCK_N)
        row_ok = rows < i1
        col_ok = cols < j1
        cdtype = tl.float64 if IS_FP64 else tl.float32
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=cdtype)
        for d0 in range(0, D, BLOCK_DK):
            dd = d0 + tl.arange(0, BLOCK_DK)
            d_ok = dd < D
            xi = tl.load(x_ptr + rows[:, None] * stride_x + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                         other=0.0)
            xj = tl.load(x_ptr + cols[:, None] * stride_x + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                         other=0.0)
            dots = tl.dot(xi, tl.trans(xj), dots, input_precision=PREC)
        dots = dots.to(tl.float64)
        pair = row_ok[:, None] & col_ok[None, :]
        if i0 == j0:
            pair = pair & (rows[:, None] < cols[None, :])
        sq_i = tl.load(sq_ptr + rows, mask=row_ok, other=0.0)
        sq_j = tl.load(sq_ptr + cols, mask=col_ok, other=0.0)
        sq_dist = sq_i[:, None] + sq_j[None, :] - 2.0 * dots
        dots, sq_dist = _refine_near_pairs(dots, sq_dist, pair & (dots > near_dot), x_ptr, stride_x, rows, cols, D,
                                           BLOCK_M, BLOCK_N, BLOCK_DK)
        lab_i = tl.load(labels_ptr + rows, mask=row_ok, other=0)
        lab_j = tl.load(labels_ptr + cols, mask=col_ok, other=0)
        if EUCLIDEAN:
            dist = tl.where(pair, tl.sqrt(tl.maximum(sq_dist, 0.0)), 0.0)
            _add_both_sides(out_e_ptr, C, dist, rows, row_ok, lab_i, cols, col_ok, lab_j, C)
        if COSINE:
            cos = tl.maximum(1.0 - dots, 0.0)
            keep = pair & (cos > zero_eps)
            if POWER == 1:
                term = cos
            elif POWER == 0:
                term = tl.log(tl.maximum(cos, 2.2250738585072014e-308))
            else:
                term = tl.exp(p * tl.log(tl.maximum(cos, 2.2250738585072014e-308)))
            _add_both_sides(out_c_ptr, C, tl.where(keep, term, 0.0), rows, row_ok, lab_i, cols, col_ok, lab_j, C)
            _add_both_sides(pairs_c_ptr, C, keep.to(tl.int32), rows, row_ok, lab_i, cols, col_ok, lab_j, C)


def all_pairs_class_sums(rows, labels, num_classes: int, *, euclidean: bool = True, cosine_p: float | None = None,
                         zero_eps: float = 0.0, tile: int = ALL_PAIRS_TILE, progress=None, pairs=None) -> AllPairsSums:
    """The contract of `kernels.reference.all_pairs_class_sums`, on the rows' GPU (or the interpreter's CPU).

    rows: (n, D) float16/bfloat16/float32/float64; labels: (n,) int64 in [0, C). The tile pairs (`pairs`)
    are those of the rows stably sorted by label (the rows of a label-sorted set as given), as numba's.
    """
    if cosine_p is not None:
        check_pairwise_args("cosine", cosine_p)
    device = kernel_device(rows)
    x = kernel_rows(rows, device)
    labels = torch.as_tensor(labels, device=device).long()
    n, c = x.shape[0], num_classes
    check_labels(labels, n, c)
    do_c = cosine_p is not None
    zeros = lambda dtype: torch.zeros(n, c, dtype=dtype, device=device)  # noqa: E731
    out_e = zeros(torch.float64) if euclidean else None
    out_c, pairs_c = (zeros(torch.float64), zeros(torch.int32)) if do_c else (None, None)
    todo = tile_pairs(n, tile) if pairs is None else checked_tile_pairs(pairs, n, tile)
    if n and c and todo:
        sorted_labels, order = label_order(labels)
        xs, sq, _ = normalise_rows(x)
        xs, sq = xs[order].contiguous(), sq[order].contiguous()
        p = 1.0 if cosine_p is None else float(cosine_p)
        power = 1 if p == 1.0 else 0 if p == 0.0 else 2
        params = torch.tensor([p, float(zero_eps), near_dot(zero_eps)], dtype=torch.float64, device=device)
        placeholder = torch.zeros(1, dtype=torch.float64, device=device)
        consts = dict(EUCLIDEAN=bool(euclidean), COSINE=do_c, POWER=power, IS_FP64=xs.dtype == torch.float64,
                      PREC=settings.dot_precision(xs.dtype))
        for done, (i0, j0) in enumerate(todo, 1):
            i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
            grid = lambda meta: (triton.cdiv(i1 - i0, meta["BLOCK_M"]), triton.cdiv(j1 - j0, meta["BLOCK_N"]))  # noqa: E731,B023
            _all_pairs_kernel[grid](xs, xs.stride(0), sq, sorted_labels,
                                    out_e if euclidean else placeholder, out_c if do_c else placeholder,
                                    pairs_c if do_c else placeholder, params, i0, i1, j0, j1, c, xs.shape[1],
                                    **consts)
            if progress:
                progress(done, len(todo))
        back = torch.empty_like(order)
        back[order] = torch.arange(n, device=device)
        out_e = out_e[back] if euclidean else None
        if do_c:
            out_c, pairs_c = out_c[back], pairs_c[back]
    return AllPairsSums(out_e, out_c, None if pairs_c is None else pairs_c.long())


def compile_variants(dtypes: Sequence[str], quick: bool) -> Iterator[CompileVariant]:
    """The variants `all_pairs_class_sums` launches for each row dtype (rows reach the kernel as float32
    unit rows, float64 for float64 input): Euclidean and cosine together, and each power of the cosine."""
    for dt in dict.fromkeys("fp64" if dt == "fp64" else "fp32" for dt in dtypes):
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "sq_ptr": "*fp64", "labels_ptr": "*i32", "out_e_ptr": "*fp64",
               "out_c_ptr": "*fp64", "pairs_c_ptr": "*i32", "params_ptr": "*fp64", "i0": "i32", "i1": "i32", "j0": "i32",
               "j1": "i32", "C": "i32", "D": "i32"}
        for power in (1,) if quick else (0, 1, 2):
            consts = {"EUCLIDEAN": True, "COSINE": True, "POWER": power, "IS_FP64": dt == "fp64",
                      "PREC": "ieee" if dt == "fp64" else "tf32x3"}
            yield CompileVariant(_all_pairs_kernel.fn, sig, consts, settings.all_pairs_configs()[0])
