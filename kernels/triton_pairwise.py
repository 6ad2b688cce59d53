"""All-pairs distances reduced to per-query, per-key-class sums, as tiled Triton kernels; never an m×n buffer.

The exact Euclidean silhouette (and the generalised one) needs Σ_j d_ij^p over the keys of each
class for every query. A program owns a block of queries and streams a slice of the keys in
label order: each tile of pairs is one `tl.dot` of the rows as stored (fp16/bf16 exactly, fp32
by the three-pass TF32 split, fp64 in fp64), scaled by the precomputed inverse row norms, turned
into distances and powers in registers, and added into one fp64 accumulator per query for the
class being streamed. Because the keys are sorted by label, a class ends once per slice: the
accumulator is then stored to its (query, class) cell, and every class the slice does not hold
is stored as zero, so each output cell is written exactly once.

With few query blocks the keys are cut into slices run by separate programs (enough to fill the
GPU); their partial (m, C) sums are added by torch. Euclidean pairs closer than 0.01 (near-duplicates,
where 2 − 2·cos loses the distance to rounding) are recomputed from their two rows in the tile epilogue.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import triton
import triton.language as tl

from ..errors import InputError
from . import triton_settings as settings
from .reference import PairwiseSums, as_tensor, check_pairwise_args
from .triton_common import (CompileVariant, check_labels, divide, first_flagged, kernel_device, kernel_rows,
                            label_order, norm_denominator)


@triton.jit
def _row_norms_kernel(x_ptr, stride_x, denom_ptr, sq_ptr, n, D,
                      IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DK: tl.constexpr):
    """Per row: max(‖x‖, tiny) and ‖x̂‖² (0 for a zero row)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n
    cdtype = tl.float64 if IS_FP64 else tl.float32
    sq_sum = tl.zeros((BLOCK_R,), dtype=cdtype)
    for d0 in range(0, D, BLOCK_DK):
        dd = d0 + tl.arange(0, BLOCK_DK)
        x = tl.load(x_ptr + rows[:, None] * stride_x + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :],
                    other=0.0).to(cdtype)
        sq_sum += tl.sum(x * x, axis=1)
    norm, denom = norm_denominator(sq_sum, IS_FP64)
    tl.store(denom_ptr + rows, denom, mask=row_ok)
    tl.store(sq_ptr + rows, divide(divide(sq_sum, denom, IS_FP64), denom, IS_FP64), mask=row_ok)


@triton.jit
def _exact_sq_distance(q_ptr, stride_q, q_row, q_denom, k_ptr, stride_k, k_row, k_denom, D,
                       IS_FP64: tl.constexpr, BLOCK_DK: tl.constexpr):
    """‖x̂_q − x̂_k‖² from the two rows themselves, without the cancellation of 2 − 2·cos."""
    cdtype = tl.float64 if IS_FP64 else tl.float32
    acc = tl.zeros((BLOCK_DK,), dtype=cdtype)
    for d0 in range(0, D, BLOCK_DK):
        dd = d0 + tl.arange(0, BLOCK_DK)
        a = tl.load(q_ptr + q_row * stride_q + dd, mask=dd < D, other=0.0).to(cdtype)
        b = tl.load(k_ptr + k_row * stride_k + dd, mask=dd < D, other=0.0).to(cdtype)
        diff = divide(a, q_denom, IS_FP64) - divide(b, k_denom, IS_FP64)
        acc += diff * diff
    return tl.sum(acc, axis=0)


@triton.jit
def _refine_near_pairs(sq_dist, near, q_ptr, stride_q, qi, q_denom, k_ptr, stride_k, kidx, k_denom, D,
                       IS_FP64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_DK: tl.constexpr):
    """Recompute the flagged (near-duplicate) entries of a (BLOCK_M, BLOCK_N) squared-distance tile exactly.

    From the tile's dot products, d² = ‖x̂_q‖² + ‖x̂_k‖² − 2·cos carries an absolute error of ~1e-7,
    which the square root turns into ~3e-4 for duplicates; such pairs are rare, so each is redone
    from its two rows.
    """
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    remaining = tl.sum(tl.sum(near.to(tl.int32), axis=1), axis=0)
    while remaining > 0:
        i, j, this = first_flagged(near, BLOCK_M, BLOCK_N)
        q_row = tl.sum(tl.where(rows == i, qi, 0), axis=0)
        k_row = tl.sum(tl.where(cols == j, kidx, 0), axis=0)
        qd = tl.sum(tl.where(rows == i, q_denom, 0.0), axis=0)
        kd = tl.sum(tl.where(cols == j, k_denom, 0.0), axis=0)
        exact = _exact_sq_distance(q_ptr, stride_q, q_row, qd, k_ptr, stride_k, k_row, kd, D, IS_FP64, BLOCK_DK)
        sq_dist = tl.where(this, exact, sq_dist)
        near = near & ~this
        remaining -= 1
    return sq_dist


@triton.jit
def _store_class(sums_ptr, counts_ptr, out_row, q_ok, c, acc_s, acc_c):
    tl.store(sums_ptr + out_row + c, acc_s, mask=q_ok)
    tl.store(counts_ptr + out_row + c, acc_c.to(tl.int64), mask=q_ok)


@triton.jit
def _store_empty_classes(sums_ptr, counts_ptr, out_row, q_ok, c_from, c_to, BLOCK_M: tl.constexpr):
    """Zero sums and counts for the classes c_from..c_to-1, which this slice of keys does not hold."""
    zero_s = tl.zeros((BLOCK_M,), dtype=tl.float64)
    zero_c = tl.zeros((BLOCK_M,), dtype=tl.int64)
    for c in range(c_from, c_to):
        tl.store(sums_ptr + out_row + c, zero_s, mask=q_ok)
        tl.store(counts_ptr + out_row + c, zero_c, mask=q_ok)


@triton.autotune(configs=settings.pairwise_configs(), key=["D", "EUCLIDEAN", "POWER"])
@triton.jit
def _pairwise_kernel(q_ptr, stride_q, k_ptr, stride_k, key_order_ptr, sorted_labels_ptr,
                     q_denom_ptr, q_sq_ptr, k_denom_ptr, k_sq_ptr, sums_ptr, counts_ptr,
                     m, n, C, D, keys_per_split, query_offset, key_offset, p, zero_eps,
                     EUCLIDEAN: tl.constexpr, POWER: tl.constexpr, IS_FP64: tl.constexpr, UPCAST: tl.constexpr,
                     PREC: tl.constexpr, NEAR_SQ_DIST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr):
    cdtype = tl.float64 if IS_FP64 else tl.float32
    tiny = 2.2250738585072014e-308 if IS_FP64 else 1.1754943508222875e-38
    qi = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = qi < m
    q_denom = tl.load(q_denom_ptr + qi, mask=q_ok, other=1.0)
    q_inv = divide(1.0, q_denom, IS_FP64)
    q_sq = tl.load(q_sq_ptr + qi, mask=q_ok, other=0.0)
    q_global = query_offset + qi
    split = tl.program_id(1).to(tl.int64)
    k_lo = split * keys_per_split
    k_hi = tl.minimum(k_lo + keys_per_split, n)
    out_row = (split * m + qi) * C

    acc_s = tl.zeros((BLOCK_M,), dtype=tl.float64)
    acc_c = tl.zeros((BLOCK_M,), dtype=tl.int32)
    cur = 0
    for k0 in range(k_lo, k_hi, BLOCK_N):
        pos = k0 + tl.arange(0, BLOCK_N)
        k_ok = pos < k_hi
        kidx = tl.load(key_order_ptr + pos, mask=k_ok, other=0)
        klab = tl.load(sorted_labels_ptr + pos, mask=k_ok, other=0)
        k_denom = tl.load(k_denom_ptr + kidx, mask=k_ok, other=1.0)
        k_inv = divide(1.0, k_denom, IS_FP64)
        k_sq = tl.load(k_sq_ptr + kidx, mask=k_ok, other=0.0)

        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=cdtype)
        for d0 in range(0, D, BLOCK_DK):
            dd = d0 + tl.arange(0, BLOCK_DK)
            d_ok = dd < D
            xq = tl.load(q_ptr + qi[:, None] * stride_q + dd[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
            xk = tl.load(k_ptr + kidx[:, None] * stride_k + dd[None, :], mask=k_ok[:, None] & d_ok[None, :],
                         other=0.0)
            if UPCAST:
                xq = xq.to(tl.float32)
                xk = xk.to(tl.float32)
            dots = tl.dot(xq, tl.trans(xk), dots, input_precision=PREC)
        cos = dots * q_inv[:, None] * k_inv[None, :]
        pair = q_ok[:, None] & k_ok[None, :] & (q_global[:, None] != (key_offset + kidx)[None, :])
        if EUCLIDEAN:
            sq_dist = tl.maximum(q_sq[:, None] + k_sq[None, :] - 2.0 * cos, 0.0)
            sq_dist = _refine_near_pairs(sq_dist, pair & (sq_dist < NEAR_SQ_DIST), q_ptr, stride_q, qi, q_denom,
                                         k_ptr, stride_k, kidx, k_denom, D, IS_FP64, BLOCK_M, BLOCK_N, BLOCK_DK)
            dist = tl.sqrt(sq_dist)
        else:
            dist = tl.maximum(1.0 - cos, 0.0)
        keep = pair & (dist > zero_eps)
        if POWER == 1:
            term = dist
        elif POWER == 0:
            term = tl.log(tl.maximum(dist, tiny))
        else:
            term = tl.exp2(p * tl.log2(tl.maximum(dist, tiny)))
        term = tl.where(keep, term, 0.0)

        c = tl.min(tl.where(k_ok, klab, C), axis=0)
        c_last = tl.max(tl.where(k_ok, klab, -1), axis=0)
        while c <= c_last:
            if c != cur:
                _store_class(sums_ptr, counts_ptr, out_row, q_ok, cur, acc_s, acc_c)
                _store_empty_classes(sums_ptr, counts_ptr, out_row, q_ok, cur + 1, c, BLOCK_M)
                acc_s = tl.zeros((BLOCK_M,), dtype=tl.float64)
                acc_c = tl.zeros((BLOCK_M,), dtype=tl.int32)
                cur = c
            in_class = keep & (klab[None, :] == c)
            acc_s += tl.sum(tl.where(in_class, term, 0.0), axis=1).to(tl.float64)
            acc_c += tl.sum(in_class.to(tl.int32), axis=1)
            c = tl.min(tl.where(k_ok & (klab > c), klab, c_last + 1), axis=0)
    _store_class(sums_ptr, counts_ptr, out_row, q_ok, cur, acc_s, acc_c)
    _store_empty_classes(sums_ptr, counts_ptr, out_row, q_ok, cur + 1, C, BLOCK_M)


def _row_norms(x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, D) -> (max(‖x‖, tiny), ‖x̂‖²), each (n,) in the compute dtype."""
    n, d = x.shape
    is_fp64 = x.dtype == torch.float64
    cdtype = torch.float64 if is_fp64 else torch.float32
    denom = settings.allocate_output((n,), cdtype, device)
    sq = settings.allocate_output((n,), cdtype, device)
    block_r, block_dk = settings.row_norms_block()
    _row_norms_kernel[(triton.cdiv(n, block_r),)](x, x.stride(0), denom, sq, n, d, IS_FP64=is_fp64,
                                                   BLOCK_R=block_r, BLOCK_DK=block_dk)
    return denom, sq


def pairwise_class_sums(queries, keys, key_labels, num_classes: int, *, metric: str = "euclidean", p: float = 1.0,
                        query_offset: int = 0, key_offset: int = 0, zero_eps: float = 0.0,
                        key_splits: int | None = None) -> PairwiseSums:
    """queries: (m, D), keys: (n, D), key_labels: (n,) int64 in [0, C) -> PairwiseSums (m, C).

    As `reference.pairwise_class_sums`; `key_splits` overrides how many key slices run in parallel.
    """
    check_pairwise_args(metric, p)
    device = kernel_device(queries)
    xq = kernel_rows(queries, device)
    xk = kernel_rows(keys, device)
    if xq.shape[1] != xk.shape[1]:
        raise InputError(f"queries have D={xq.shape[1]} but keys have D={xk.shape[1]}; both must be the same width")
    if xq.dtype != xk.dtype:
        common = torch.promote_types(xq.dtype, xk.dtype)
        common = torch.float32 if common in (torch.float16, torch.bfloat16) else common
        xq, xk = xq.to(common), xk.to(common)
    labels = as_tensor(key_labels, device).long()
    (m, d), n = xq.shape, xk.shape[0]
    check_labels(labels, n, num_classes, "key labels")
    if m == 0 or n == 0 or num_classes == 0:
        return PairwiseSums(torch.zeros(m, num_classes, dtype=torch.float64, device=device),
                            torch.zeros(m, num_classes, dtype=torch.int64, device=device))
    sorted_labels, key_order = label_order(labels)
    q_denom, q_sq = _row_norms(xq, device)
    k_denom, k_sq = _row_norms(xk, device)
    splits = max(1, min(n, key_splits or settings.pairwise_key_splits(m, n, num_classes, device)))
    keys_per_split = triton.cdiv(n, splits)
    splits = triton.cdiv(n, keys_per_split)
    sums = settings.allocate_output((splits, m, num_classes), torch.float64, device)
    counts = settings.allocate_output((splits, m, num_classes), torch.int64, device)
    power = 1 if p == 1.0 else 0 if p == 0.0 else 2
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), splits)  # noqa: E731
    _pairwise_kernel[grid](
        xq, xq.stride(0), xk, xk.stride(0), key_order, sorted_labels, q_denom, q_sq, k_denom, k_sq,
        sums, counts, m, n, num_classes, d, keys_per_split, int(query_offset), int(key_offset), float(p),
        float(zero_eps), EUCLIDEAN=metric == "euclidean", POWER=power, IS_FP64=xq.dtype == torch.float64,
        UPCAST=settings.upcast_bf16_for_dot(xq.dtype), PREC=settings.dot_precision(xq.dtype),
        NEAR_SQ_DIST=settings.NEAR_SQ_DIST)
    if splits == 1:
        return PairwiseSums(sums[0], counts[0])
    return PairwiseSums(sums.sum(0), counts.sum(0))


def compile_variants(dtypes: Sequence[str], quick: bool) -> Iterator[CompileVariant]:
    """The variants `pairwise_class_sums` launches, for rows of each Triton dtype ("fp16", "bf16", "fp32", "fp64")."""
    for dt in dtypes:
        fp64 = dt == "fp64"
        cdt = "fp64" if fp64 else "fp32"
        sig = {"q_ptr": f"*{dt}", "stride_q": "i32", "k_ptr": f"*{dt}", "stride_k": "i32",
               "key_order_ptr": "*i64", "sorted_labels_ptr": "*i32", "q_denom_ptr": f"*{cdt}",
               "q_sq_ptr": f"*{cdt}", "k_denom_ptr": f"*{cdt}", "k_sq_ptr": f"*{cdt}", "sums_ptr": "*fp64",
               "counts_ptr": "*i64",
               "m": "i32", "n": "i32", "C": "i32", "D": "i32", "keys_per_split": "i32", "query_offset": "i32",
               "key_offset": "i32", "p": "fp32", "zero_eps": "fp32"}
        for power in (1,) if quick else (0, 1, 2):
            consts = {"EUCLIDEAN": power != 0, "POWER": power, "IS_FP64": fp64, "UPCAST": False,
                      "PREC": "ieee" if fp64 else "tf32x3", "NEAR_SQ_DIST": settings.NEAR_SQ_DIST}
            yield CompileVariant(_pairwise_kernel.fn, sig, consts, settings.pairwise_configs()[0])
        block_r, block_dk = settings.row_norms_block()
        yield CompileVariant(_row_norms_kernel, {"x_ptr": f"*{dt}", "stride_x": "i32", "denom_ptr": f"*{cdt}",
                                                 "sq_ptr": f"*{cdt}", "n": "i32", "D": "i32"},
                             {"IS_FP64": fp64, "BLOCK_R": block_r, "BLOCK_DK": block_dk}, None)
