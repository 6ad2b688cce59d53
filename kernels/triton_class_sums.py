"""Pass 1 as one Triton kernel: normalise rows, sum them per class, count bad rows.

The launcher sorts the labels (a stable sort of n integers, cheap next to reading n×D
values) and cuts each class's run of rows into work items of at most `ROWS_PER_ITEM` rows.
One program sums one item: it gathers its rows (each row is contiguous, so the gather reads
whole rows), normalises them in fp32, adds block sums in fp32 into an fp64 accumulator, and
stores one fp64 partial row; a second small kernel adds each class's partials in item order.

Why partials rather than fp64 atomics: every output element is written exactly once, so the
result is bitwise reproducible, nothing needs zeroing before a launch, and contention on the
hot rows of a few large classes cannot serialise the GPU.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailable
from . import triton_settings as settings
from .reference import ClassSums, as_tensor
from .triton_common import (CompileVariant, check_labels, divide, is_bad_norm, kernel_device, kernel_rows,
                            label_order, norm_denominator)


@triton.autotune(configs=settings.class_sums_configs(), key=["D", "BLOCK_D"],
                 prune_configs_by=settings.CLASS_SUMS_PRUNE)
@triton.jit
def _class_sums_kernel(x_ptr, stride_x, order_ptr, item_start_ptr, item_end_ptr,
                       part_sums_ptr, part_sq_ptr, part_bad_ptr, n, D,
                       IS_FP64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    item = tl.program_id(0)
    start = tl.load(item_start_ptr + item)
    end = tl.load(item_end_ptr + item)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    total = tl.zeros((BLOCK_D,), dtype=tl.float64)
    sq_total = tl.zeros((BLOCK_N,), dtype=tl.float64)
    first_bad = tl.full((BLOCK_N,), n, dtype=tl.int64)
    for lo in range(start, end, BLOCK_N):
        pos = lo + tl.arange(0, BLOCK_N)
        row_ok = pos < end
        idx = tl.load(order_ptr + pos, mask=row_ok, other=0)
        ptrs = x_ptr + idx[:, None] * stride_x + cols[None, :]
        x = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(acc_dtype)
        norm, denom = norm_denominator(tl.sum(x * x, axis=1), IS_FP64)
        # One IEEE reciprocal per row, then multiplies: within an ulp of the reference's division.
        xhat = x * divide(1.0, denom, IS_FP64)[:, None]
        xhat = tl.where(row_ok[:, None], xhat, 0.0)
        total += tl.sum(xhat, axis=0).to(tl.float64)
        sq_total += tl.sum(xhat * xhat, axis=1).to(tl.float64)
        first_bad = tl.minimum(first_bad, tl.where(row_ok & is_bad_norm(norm), idx, n))
    tl.store(part_sums_ptr + item.to(tl.int64) * D + cols, total, mask=col_ok)
    tl.store(part_sq_ptr + item, tl.sum(sq_total, axis=0))
    tl.store(part_bad_ptr + item, tl.min(first_bad, axis=0))


@triton.jit
def _merge_items_kernel(part_sums_ptr, first_item_ptr, item_count_ptr, sums_ptr, D, BLOCK: tl.constexpr):
    """sums[c, cols] = Σ of the partial rows of class c's work items, in item order (deterministic)."""
    c = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < D
    first = tl.load(first_item_ptr + c)
    total = tl.zeros((BLOCK,), dtype=tl.float64)
    for item in range(first, first + tl.load(item_count_ptr + c)):
        total += tl.load(part_sums_ptr + item * D + cols, mask=col_ok, other=0.0)
    tl.store(sums_ptr + c.to(tl.int64) * D + cols, total, mask=col_ok)


def _work_items(counts: torch.Tensor, rows_per_item: int):
    """counts: (C,) int64 -> per work item (start, end) in label-sorted row positions; per class (first item, items)."""
    device = counts.device
    items_per_class = (counts + rows_per_item - 1) // rows_per_item
    item_class = torch.repeat_interleave(torch.arange(len(counts), device=device), items_per_class)
    class_start = torch.cumsum(counts, 0) - counts
    first_item = torch.cumsum(items_per_class, 0) - items_per_class
    rank_in_class = torch.arange(len(item_class), device=device) - first_item[item_class]
    start = class_start[item_class] + rank_in_class * rows_per_item
    end = torch.minimum(start + rows_per_item, class_start[item_class] + counts[item_class])
    return start, end, first_item, items_per_class


def class_sums(rows, labels, num_classes: int, *, rows_per_item: int | None = None) -> ClassSums:
    """rows: (n, D) float; labels: (n,) int64 in [0, C) -> ClassSums, as `reference.class_sums`."""
    device = kernel_device(rows)
    x = kernel_rows(rows, device)
    labels = as_tensor(labels, device).long()
    n, d = x.shape
    check_labels(labels, n, num_classes)
    if d > settings.CLASS_SUMS_MAX_D:
        raise BackendUnavailable(f"the triton class sums hold whole rows in registers, up to D="
                                 f"{settings.CLASS_SUMS_MAX_D}, and these rows have D={d}; use --backend torch")
    counts = torch.bincount(labels, minlength=num_classes)
    if n == 0:
        return ClassSums(torch.zeros(num_classes, d, dtype=torch.float64, device=device), counts,
                         torch.zeros((), dtype=torch.float64, device=device), -1)
    order = label_order(labels)[1]
    start, end, first_item, items_per_class = _work_items(counts, rows_per_item or settings.rows_per_item(n, device))
    n_items = len(start)
    part_sums = settings.allocate_output((n_items, d), torch.float64, device)
    part_sq = settings.allocate_output((n_items,), torch.float64, device)
    part_bad = settings.allocate_output((n_items,), torch.int64, device)
    _class_sums_kernel[(n_items,)](
        x, x.stride(0), order, start, end, part_sums, part_sq, part_bad, n, d,
        IS_FP64=x.dtype == torch.float64, BLOCK_D=settings.block_d(d))
    sums = settings.allocate_output((num_classes, d), torch.float64, device)
    block = min(settings.block_d(d), 256)
    _merge_items_kernel[(num_classes, triton.cdiv(d, block))](part_sums, first_item, items_per_class, sums, d,
                                                              BLOCK=block)
    first_bad = int(part_bad.min())
    return ClassSums(sums, counts, part_sq.sum(), first_bad if first_bad < n else -1)


def compile_variants(dtypes: Sequence[str], quick: bool) -> Iterator[CompileVariant]:
    """The variants `class_sums` launches, for rows of each Triton dtype ("fp16", "bf16", "fp32", "fp64")."""
    for dt in dtypes:
        fp64 = dt == "fp64"
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "order_ptr": "*i64", "item_start_ptr": "*i64",
               "item_end_ptr": "*i64", "part_sums_ptr": "*fp64", "part_sq_ptr": "*fp64", "part_bad_ptr": "*i64",
               "n": "i32", "D": "i32"}
        fitting = [c for c in settings.class_sums_configs()
                   if c.kwargs["BLOCK_N"] * 1024 <= settings.CLASS_SUMS_TILE_ELEMENTS]
        for cfg in fitting[:1] if quick else fitting:
            yield CompileVariant(_class_sums_kernel.fn, sig, {"IS_FP64": fp64, "BLOCK_D": 1024}, cfg)
    yield CompileVariant(_merge_items_kernel, {"part_sums_ptr": "*fp64", "first_item_ptr": "*i64",
                                               "item_count_ptr": "*i64", "sums_ptr": "*fp64", "D": "i32"},
                         {"BLOCK": 256}, None)
