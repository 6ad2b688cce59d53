"""Shared pieces of the Triton backend: the device and row checks every launcher makes, the label sort,
and the `@triton.jit` helpers the kernels share (IEEE norms and divisions, the bad-row test).

Whether the kernels are interpreted is read by `kernels.triton_interpreted()` when asked. Triton
itself decides once per process (when `triton` is imported and each kernel decorated), so a
process that changes `TRITON_INTERPRET` afterwards gets a one-line error instead of kernels that
cannot run where the rows are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ..errors import BackendUnavailable, InputError
from . import triton_interpreted
from .reference import as_tensor


class CompileVariant(NamedTuple):
    """One kernel variant for `triton_ops.compile_for`: the argument types, the constexprs, the autotune config."""

    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    config: triton.Config | None


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


@triton.jit
def first_flagged(flags, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row, column, one-hot mask) of the first set entry, in row-major order, of a (BLOCK_M, BLOCK_N) mask.

    The loop over the rare flagged pairs of a tile (near-duplicates redone exactly) takes them one at a time.
    """
    flat = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    first = tl.min(tl.min(tl.where(flags, flat, BLOCK_M * BLOCK_N), axis=1), axis=0)
    return first // BLOCK_N, first % BLOCK_N, flat == first


def kernels_interpreted() -> bool:
    """Whether Triton built this process's kernels for its CPU interpreter (fixed when they were decorated)."""
    return isinstance(norm_denominator, InterpretedFunction)


def kernel_device(rows) -> torch.device:
    """Where the kernels run: the rows' GPU, or the CPU under the interpreter."""
    interpreted = triton_interpreted()
    if interpreted != kernels_interpreted():
        now, then = ("set", "unset") if interpreted else ("unset", "set")
        raise BackendUnavailable(f"TRITON_INTERPRET is {now} now but was {then} when triton was imported; "
                                 f"set it before the first import of triton, Triton cannot switch within a process")
    if isinstance(rows, torch.Tensor) and rows.device.type == "cuda":
        return rows.device
    if interpreted:
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
