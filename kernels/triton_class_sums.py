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

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailable, InputError
from . import triton_settings as settings
from .reference import ClassSums, as_tensor


@triton.jit
def norm_denominator(sq_sum, IS_FP64: tl.constexpr):
    """(rows,) Σx² -> (‖x‖, max(‖x‖, tiny)) as the reference computes them (IEEE sqrt)."""
    if IS_FP64:
        norm = tl.sqrt(sq_sum)
        denom = tl.maximum(norm, 2.2250738585072014e-308)
    else:
        norm = tl.sqrt_rn(sq_sum)
        denom = tl.maximum(norm, 1.1754943508222875e-38)
    return norm, denom


@triton.jit
def divide(x, y, IS_FP64: tl.constexpr):
    """IEEE division (the default fp32 `/` on a GPU is approximate)."""
    if IS_FP64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def is_bad_norm(norm):
    """A zero-norm or non-finite row: norm is 0, NaN or inf."""
    return (norm == 0) | (norm != norm) | (norm == float("inf"))


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


def kernel_device(rows) -> torch.device:
    """Where the kernels run: the rows' GPU, or the CPU under the interpreter."""
    if isinstance(rows, torch.Tensor) and rows.device.type == "cuda":
        return rows.device
    if settings.INTERPRETED:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable("the triton kernels need a CUDA GPU and none is visible; use --backend torch")
    return torch.device("cuda")


def kernel_rows(rows, device: torch.device) -> torch.Tensor:
    """rows: (n, D) float16/bfloat16/float32/float64 on `device` with unit column stride."""
    x = as_tensor(rows, device)
    if x.ndim != 2:
        raise InputError(f"rows must be a 2-D (n, D) array, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise InputError(f"rows have dtype {x.dtype}; the triton kernels read float16, bfloat16, float32 or float64")
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    return x


def check_labels(labels: torch.Tensor, n: int, num_classes: int, what: str = "labels") -> None:
    """Labels index class columns inside the kernels: out-of-range values are rejected before launch."""
    if labels.shape != (n,):
        raise InputError(f"{what} must have shape ({n},), one per row, got {tuple(labels.shape)}")
    if n:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise InputError(f"{what} range over [{lo}, {hi}] but there are {num_classes} classes; "
                             f"labels must be class indices 0..{num_classes - 1}")


def label_order(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels: (n,) int64 -> (labels in ascending order as int32, the stable permutation that sorts them).

    Labels already in order (a dataset stored class by class) skip the sort; int32 keys halve its work.
    """
    keys = labels.to(torch.int32)
    if keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return keys, torch.arange(keys.numel(), device=keys.device)
    return torch.sort(keys, stable=True)


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
