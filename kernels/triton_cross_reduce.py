"""Pass 2 as one Triton kernel: similarities of normalised rows to a small (K, D) matrix, reduced per row.

A program takes a block of rows and multiplies them by tiles of the matrix on the tensor cores
(`tl.dot`), summing the rows' squares from the same loaded chunks, and reduces each tile at once
in the epilogue: the own-class similarity, the sum over the other classes, the rank of the own class,
and the best scaled other class. Nothing of size n×K is ever stored.

Accuracy at fp32 level on the matrix units: the dot multiplies the rows *as stored* and divides
by the row norm afterwards, so fp16/bf16 rows enter the tensor cores exactly; the fp32 matrix is
split into two fp16 parts (each class row scaled by a power of two first, so class sums of any
size keep their precision) or three bf16 parts, whose products add up in the fp32 accumulator.
fp32 rows use the three-pass TF32 split; fp64 rows stay in fp64.

Ranks compare similarities computed by the same tile code, so a class whose text equals the
own class's text (ImageNet's two "crane"s) ties exactly, as in the reference. With more classes
than one tile holds, the rows are visited in label order so that finding each row's own
similarity (a first pass over the tiles holding the block's labels) usually costs one tile.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import triton
import triton.language as tl

from ..errors import InputError
from . import triton_settings as settings
from .reference import CrossReduce, as_tensor
from .triton_common import (CompileVariant, check_labels, divide, is_bad_norm, kernel_device, kernel_rows,
                            label_order, norm_denominator)


@triton.jit
def _similarity_tile(x_ptr, stride_x, idx, row_ok, parts_ptr, unscale_ptr, k0, K, D,
                     P: tl.constexpr, HAS_UNSCALE: tl.constexpr, IS_FP64: tl.constexpr, UPCAST: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DK: tl.constexpr):
    """Similarities of the rows `idx` to matrix rows k0..k0+BLOCK_K, from one read of the rows.

    Returns (x̂_i · m_k as a (BLOCK_N, BLOCK_K) tile, ‖x_i‖ (BLOCK_N,), bad-row flags (BLOCK_N,)): the row
    norms come from the same chunks the dot multiplies, so a pass over one tile reads each row once.
    """
    cdtype = tl.float64 if IS_FP64 else tl.float32
    cols = k0 + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=cdtype)
    sq_sum = tl.zeros((BLOCK_N,), dtype=cdtype)
    for d0 in range(0, D, BLOCK_DK):
        dd = d0 + tl.arange(0, BLOCK_DK)
        d_ok = dd < D
        xb = tl.load(x_ptr + idx[:, None] * stride_x + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        xc = xb.to(cdtype)
        sq_sum += tl.sum(xc * xc, axis=1)
        if UPCAST:
            xb = xc
        for p in tl.static_range(P):
            mb = tl.load(parts_ptr + p * K * D + cols[:, None] * D + dd[None, :],
                         mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                mb = mb.to(tl.float32)
            acc = tl.dot(xb, tl.trans(mb), acc, input_precision=PREC)
    if HAS_UNSCALE:
        acc = acc * tl.load(unscale_ptr + cols, mask=col_ok, other=1.0)[None, :]
    return acc, sq_sum


@triton.autotune(configs=settings.cross_reduce_configs(), key=["D", "BLOCK_K", "ONE_TILE"])
@triton.jit
def _cross_reduce_kernel(x_ptr, stride_x, order_ptr, labels_ptr, parts_ptr, unscale_ptr, scale_ptr, valid_ptr,
                         correct_ptr, other_ptr, rank_ptr, best_ptr, sq_norm_ptr, bad_ptr, n, K, D,
                         P: tl.constexpr, GATHER: tl.constexpr, HAS_UNSCALE: tl.constexpr,
                         HAS_SCALE: tl.constexpr, HAS_VALID: tl.constexpr, ONE_TILE: tl.constexpr,
                         IS_FP64: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr):
    pos = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = pos < n
    if GATHER:
        idx = tl.load(order_ptr + pos, mask=row_ok, other=0)
    else:
        idx = pos
    lab = tl.load(labels_ptr + idx, mask=row_ok, other=0)
    cdtype = tl.float64 if IS_FP64 else tl.float32

    if ONE_TILE:
        raw, sq_sum = _similarity_tile(x_ptr, stride_x, idx, row_ok, parts_ptr, unscale_ptr, 0, K, D,
                                       P, HAS_UNSCALE, IS_FP64, UPCAST, PREC, BLOCK_N, BLOCK_K, BLOCK_DK)
        norm, denom = norm_denominator(sq_sum, IS_FP64)
        s = divide(raw, denom[:, None], IS_FP64)
        cols = tl.arange(0, BLOCK_K)
        correct = tl.sum(tl.where(cols[None, :] == lab[:, None], s, 0.0), axis=1)
    else:
        # Pass 1 over the tiles holding this block's labels (rows come in label order: usually one tile).
        lab_lo = tl.min(tl.where(row_ok, lab, K), axis=0)
        lab_hi = tl.max(tl.where(row_ok, lab, 0), axis=0)
        correct = tl.zeros((BLOCK_N,), dtype=cdtype)
        sq_sum = tl.zeros((BLOCK_N,), dtype=cdtype)
        for t0 in range((lab_lo // BLOCK_K) * BLOCK_K, lab_hi + 1, BLOCK_K):
            raw, sq_sum = _similarity_tile(x_ptr, stride_x, idx, row_ok, parts_ptr, unscale_ptr, t0, K, D,
                                           P, HAS_UNSCALE, IS_FP64, UPCAST, PREC, BLOCK_N, BLOCK_K, BLOCK_DK)
            norm, denom = norm_denominator(sq_sum, IS_FP64)
            cols = t0 + tl.arange(0, BLOCK_K)
            correct += tl.sum(tl.where(cols[None, :] == lab[:, None], divide(raw, denom[:, None], IS_FP64), 0.0),
                              axis=1)
        norm, denom = norm_denominator(sq_sum, IS_FP64)

    other_sum = tl.zeros((BLOCK_N,), dtype=tl.float64)
    rank = tl.zeros((BLOCK_N,), dtype=tl.int32)
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float64)
    for k0 in range(0, K, BLOCK_K):
        if not ONE_TILE:
            raw, sq_unused = _similarity_tile(x_ptr, stride_x, idx, row_ok, parts_ptr, unscale_ptr, k0, K, D,
                                              P, HAS_UNSCALE, IS_FP64, UPCAST, PREC, BLOCK_N, BLOCK_K, BLOCK_DK)
            s = divide(raw, denom[:, None], IS_FP64)
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        other = col_ok[None, :] & (cols[None, :] != lab[:, None])
        s64 = s.to(tl.float64)
        other_sum += tl.sum(tl.where(other, s64, 0.0), axis=1)
        rank += tl.sum((other & (s > correct[:, None])).to(tl.int32), axis=1)
        if HAS_SCALE:
            s64 = s64 * tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        candidate = other
        if HAS_VALID:
            candidate = candidate & (tl.load(valid_ptr + cols, mask=col_ok, other=0) != 0)[None, :]
        best = tl.maximum(best, tl.max(tl.where(candidate, s64, float("-inf")), axis=1))

    tl.store(correct_ptr + idx, correct.to(tl.float64), mask=row_ok)
    tl.store(other_ptr + idx, other_sum, mask=row_ok)
    tl.store(rank_ptr + idx, rank, mask=row_ok)
    tl.store(best_ptr + idx, best, mask=row_ok)
    tl.store(sq_norm_ptr + idx, divide(divide(sq_sum, denom, IS_FP64), denom, IS_FP64).to(tl.float64), mask=row_ok)
    tl.store(bad_ptr + idx, is_bad_norm(norm).to(tl.int8), mask=row_ok)


def matrix_parts(matrix: torch.Tensor, row_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """matrix: (K, D) -> (parts (P, K, D) in the rows' dtype that sum to fp32(matrix), per-row unscale (K,) or None).

    fp16: two parts of matrix·2^e_k (e_k puts each row's largest |value| in [128, 256)); the
    dot's column k is multiplied back by 2^-e_k (exact). bf16: three parts (24 bits). fp32,
    fp64: the matrix itself.
    """
    if row_dtype == torch.float64:
        return matrix.to(torch.float64).contiguous()[None], None
    m32 = matrix.to(torch.float32)
    if row_dtype == torch.float32:
        return m32.contiguous()[None], None
    if row_dtype == torch.bfloat16:
        hi = m32.to(torch.bfloat16)
        rest = m32 - hi.float()
        mid = rest.to(torch.bfloat16)
        lo = (rest - mid.float()).to(torch.bfloat16)
        return torch.stack([hi, mid, lo]).contiguous(), None
    exponent = torch.frexp(m32.abs().amax(1)).exponent.clamp(-100, 100).to(torch.float64)
    scaled = m32.to(torch.float64) * torch.exp2(8.0 - exponent)[:, None]
    hi = scaled.to(torch.float16)
    lo = (scaled - hi.to(torch.float64)).to(torch.float16)
    return torch.stack([hi, lo]).contiguous(), torch.exp2(exponent - 8.0).to(torch.float32)


def cross_reduce(rows, labels, matrix, col_scale=None, col_valid=None) -> CrossReduce:
    """rows: (n, D); labels: (n,) int64 in [0, K); matrix: (K, D); col_scale: (K,); col_valid: (K,) bool.

    Returns `CrossReduce`, as `reference.cross_reduce`.
    """
    device = kernel_device(rows)
    x = kernel_rows(rows, device)
    labels = as_tensor(labels, device).long()
    m = as_tensor(matrix, device)
    n, d = x.shape
    if m.ndim != 2 or m.shape[1] != d:
        raise InputError(f"the class matrix has shape {tuple(m.shape)} but rows have D={d}; it must be (K, {d})")
    k = m.shape[0]
    check_labels(labels, n, k)
    out_f64 = [settings.allocate_output((n,), torch.float64, device) for _ in range(4)]
    rank = settings.allocate_output((n,), torch.int32, device)
    bad = settings.allocate_output((n,), torch.int8, device)
    if n == 0:
        return CrossReduce(out_f64[0], out_f64[1], rank, out_f64[2], out_f64[3], -1)
    block_k = settings.cross_block_k(k)
    one_tile = k <= block_k
    order = None if one_tile else label_order(labels)[1]
    parts, unscale = matrix_parts(m, x.dtype)
    scale = None if col_scale is None else as_tensor(col_scale, device).to(torch.float64).contiguous()
    valid = None if col_valid is None else as_tensor(col_valid, device).to(torch.int8).contiguous()
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _cross_reduce_kernel[grid](
        x, x.stride(0), order, labels, parts, unscale, scale, valid,
        out_f64[0], out_f64[1], rank, out_f64[2], out_f64[3], bad, n, k, d,
        P=parts.shape[0], GATHER=order is not None, HAS_UNSCALE=unscale is not None,
        HAS_SCALE=scale is not None, HAS_VALID=valid is not None, ONE_TILE=one_tile,
        IS_FP64=x.dtype == torch.float64, UPCAST=settings.upcast_bf16_for_dot(x.dtype),
        PREC=settings.dot_precision(x.dtype), BLOCK_K=block_k)
    first_bad = int(torch.where(bad != 0, torch.arange(n, device=device), n).min())
    return CrossReduce(out_f64[0], out_f64[1], rank, out_f64[2], out_f64[3], first_bad if first_bad < n else -1)


def compile_variants(dtypes: Sequence[str], quick: bool) -> Iterator[CompileVariant]:
    """The variants `cross_reduce` launches, for rows of each Triton dtype ("fp16", "bf16", "fp32", "fp64")."""
    parts = {"fp16": 2, "bf16": 3, "fp32": 1, "fp64": 1}
    for dt in dtypes:
        fp64 = dt == "fp64"
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "order_ptr": "*i64", "labels_ptr": "*i64",
               "parts_ptr": f"*{dt}", "unscale_ptr": "*fp32", "scale_ptr": "*fp64", "valid_ptr": "*i8",
               "correct_ptr": "*fp64", "other_ptr": "*fp64", "rank_ptr": "*i32", "best_ptr": "*fp64",
               "sq_norm_ptr": "*fp64", "bad_ptr": "*i8", "n": "i32", "K": "i32", "D": "i32"}
        for one_tile in (True,) if quick else (True, False):
            # one tile: the zero-shot call (rows in order, no column scale); several: the silhouette call
            absent = ("order_ptr", "scale_ptr", "valid_ptr") if one_tile else ()
            absent += ("unscale_ptr",) if dt != "fp16" else ()
            consts = {"P": parts[dt], "GATHER": not one_tile, "HAS_UNSCALE": dt == "fp16", "HAS_SCALE": not one_tile,
                      "HAS_VALID": not one_tile, "ONE_TILE": one_tile, "IS_FP64": fp64, "UPCAST": False,
                      "PREC": "ieee" if fp64 else "tf32x3",
                      "BLOCK_K": 16 if one_tile else settings.cross_max_block_k(), **{name: None for name in absent}}
            yield CompileVariant(_cross_reduce_kernel.fn, sig, consts, settings.cross_reduce_configs()[0])
