"""Block sizes, autotune configurations and output allocation for the Triton kernels, in one place.

Under `TRITON_INTERPRET=1` (the CPU interpreter the tests use) every kernel gets a single
small configuration, so nothing is benchmarked and the interpreted grids stay short; the
small class tile there also makes small test shapes exercise the multi-tile code paths.
Each choice asks `kernels.triton_interpreted()` when it is made: the launch sizes at each
call, the autotune configurations when a kernel is decorated (when Triton, too, decides).
"""

from __future__ import annotations

import functools

import torch
import triton

from . import triton_interpreted

# Class sums hold whole rows in registers: at most this many fp32 values per program.
CLASS_SUMS_TILE_ELEMENTS = 16384
CLASS_SUMS_MAX_D = CLASS_SUMS_TILE_ELEMENTS // 2
# Rows per class-sums work item (one program sums up to this many rows of one class), within these bounds.
ROWS_PER_ITEM = 4096
MIN_ROWS_PER_ITEM = 256
INTERPRETED_ROWS_PER_ITEM = 64
# Euclidean pairs closer than this (squared, d < 0.01) are recomputed from their rows: from dot
# products, d² has an absolute error near 1e-7, which the square root magnifies for near-duplicates.
NEAR_SQ_DIST = 1e-4
# Pairwise partial sums may use this much memory when keys are split across programs.
PAIRWISE_SPLIT_BYTES = 512 * 2**20


def allocate_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel writes is allocated here, uninitialised: each element must be stored.

    Tests replace this function with one that fills the buffer with NaN (or a sentinel integer),
    so an element a kernel forgets to write makes the result wrong instead of accidentally right.
    """
    return torch.empty(shape, dtype=dtype, device=device)


def block_d(d: int) -> int:
    """The power-of-two width that holds a whole row of `d` values (at least 16)."""
    return max(16, triton.next_power_of_2(d))


def cross_max_block_k() -> int:
    """Widest class tile of the cross reduce; more classes take several tiles (and a label sort)."""
    return 16 if triton_interpreted() else 128


def cross_block_k(k: int) -> int:
    """Class-tile width of the cross reduce for a (K, D) matrix."""
    return min(cross_max_block_k(), max(16, triton.next_power_of_2(k)))


def row_norms_block() -> tuple[int, int]:
    """Rows × columns per program of the row-norm sweep that precedes the pairwise kernel."""
    return (16, 16) if triton_interpreted() else (32, 128)


def _prune_row_tiles(configs, named_args, **kwargs):
    """Drop class-sums configs whose row tile (BLOCK_N × BLOCK_D) would spill registers."""
    bd = {**named_args, **kwargs}["BLOCK_D"]
    kept = [c for c in configs if c.kwargs["BLOCK_N"] * bd <= CLASS_SUMS_TILE_ELEMENTS]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"])]


def class_sums_configs() -> list[triton.Config]:
    if triton_interpreted():
        return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn, w, s in ((4, 4, 3), (8, 4, 3), (16, 8, 3), (32, 8, 2))]


CLASS_SUMS_PRUNE = {"early_config_prune": _prune_row_tiles}


def cross_reduce_configs() -> list[triton.Config]:
    if triton_interpreted():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_DK": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_DK": dk}, num_warps=w, num_stages=s)
            for bn, dk, w, s in ((64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 4))]


def pairwise_configs() -> list[triton.Config]:
    if triton_interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_DK": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_DK": dk}, num_warps=w, num_stages=s)
            for bm, bn, dk, w, s in ((128, 64, 64, 4, 3), (128, 128, 32, 8, 3), (64, 64, 64, 4, 3))]


def all_pairs_configs() -> list[triton.Config]:
    """Block shapes of the symmetric all-pairs kernel. Its epilogue holds float64 tiles, so blocks stay at 64 × 64
    per 8 warps (16 pairs a thread): `ptxas -v` for sm_90 shows no spills for float32 or float64 rows there
    (64 × 64 on 4 warps spills 340 bytes a thread, 128 × 128 on 8 warps over 2 KB)."""
    if triton_interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_DK": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_DK": dk}, num_warps=w, num_stages=s)
            for bm, bn, dk, w, s in ((64, 64, 64, 8, 3), (64, 64, 32, 8, 4), (128, 64, 32, 8, 3))]


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision that keeps fp32-level accuracy for rows stored in `dtype`.

    fp16/bf16 operands multiply exactly into the fp32 accumulator, so the mode is moot for
    them; fp32 operands need the three-pass TF32 split; fp64 stays IEEE.
    """
    if triton_interpreted() or dtype == torch.float64:
        return "ieee"
    return "tf32x3"


def upcast_bf16_for_dot(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 as raw uint16 bits, so interpreted bf16 dots go through fp32."""
    return triton_interpreted() and dtype == torch.bfloat16


@functools.lru_cache(maxsize=None)
def multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def rows_per_item(n: int, device: torch.device) -> int:
    """Class-sums work-item size: about 8 items per multiprocessor, so small chunks still fill the GPU."""
    if triton_interpreted():
        return INTERPRETED_ROWS_PER_ITEM
    if device.type != "cuda":
        return ROWS_PER_ITEM
    per_item = triton.next_power_of_2(max(1, n // (8 * multiprocessors(device))))
    return max(MIN_ROWS_PER_ITEM, min(ROWS_PER_ITEM, per_item))


def pairwise_key_splits(m: int, n: int, c: int, device: torch.device) -> int:
    """How many slices of the keys run in parallel per query block (enough programs to fill the GPU)."""
    if triton_interpreted() or device.type != "cuda" or n == 0:
        return 1
    sms = multiprocessors(device)
    query_blocks = triton.cdiv(m, 128)
    wanted = triton.cdiv(4 * sms, query_blocks)
    by_keys = max(1, n // 2048)
    by_memory = max(1, PAIRWISE_SPLIT_BYTES // max(1, m * c * 16))
    return max(1, min(wanted, by_keys, by_memory))
