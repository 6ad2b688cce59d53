"""Shared pieces of the numba CPU backend: input preparation, reading rows, normalising rows.

Kernels read rows exactly as stored, with no converted copy of the chunk:
float32/float64 directly, float16 as its raw uint16 bits (numba has no CPU float16
type) converted per element by the CPU's half-precision instruction (F16C on x86,
native on ARM64), or through a 65 536-entry table where that instruction is not
known to be available. Row norms are computed in float64.
"""

from __future__ import annotations

import functools
import math
import platform

import llvmlite.binding
import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ..errors import InputError

# Reassociation lets LLVM vectorise the reductions (Σx², dot products); no 'nnan'/'ninf',
# so NaN and inf still propagate and bad rows are still detected.
REASSOC = {"reassoc", "contract"}
TINY = np.finfo(np.float64).tiny
HALF_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
HALF_TABLE.flags.writeable = False
BLOCK_ROWS = 256  # rows per scheduling unit of the row-parallel kernels


def within_torch_threads(entry_point):
    """Decorate a numba entry point: it runs on at most torch's intra-op thread count (which follows the user's
    OMP_NUM_THREADS or torch.set_num_threads) and leaves torch's and numba's thread counts as it found them.

    numba's OpenMP layer sets the process-wide OpenMP thread count when it launches, which torch shares: without
    this, torch trains on every core after one numba call, whatever the user's limit (and a resumed run that
    skips that call trains on other thread counts, so not bit-identically).
    """
    @functools.wraps(entry_point)
    def run(*args, **kwargs):
        torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
        numba.set_num_threads(max(1, min(numba_threads, torch_threads)))
        try:
            return entry_point(*args, **kwargs)
        finally:
            numba.set_num_threads(numba_threads)
            torch.set_num_threads(torch_threads)

    return run


def _half_instruction_available() -> bool:
    """True when LLVM will lower a half -> float conversion to one instruction (no libcall)."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:  # a user-chosen (portable) target
        return False
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    return machine in ("x86_64", "amd64") and bool(llvmlite.binding.get_host_cpu_features().get("f16c"))


HALF_BY_INSTRUCTION = _half_instruction_available()


def kernel_rows(rows) -> np.ndarray:
    """rows: (n, D) NumPy array / memmap / CPU tensor -> read-only C-contiguous float32, float64
    or uint16 (float16 bits) array; zero-copy unless the input is non-contiguous or bfloat16."""
    if isinstance(rows, torch.Tensor):
        if rows.device.type != "cpu":
            raise InputError(f"the numba backend reads CPU rows, got a tensor on {rows.device}; "
                             f"move it with .cpu() or use --backend torch/triton")
        rows = rows.detach()
        rows = (rows.float() if rows.dtype == torch.bfloat16 else rows).numpy()
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise InputError(f"rows must be a 2-D (n, D) array, got shape {arr.shape}; pass one row per embedding")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise InputError(f"rows must be float16/bfloat16/float32/float64, got {arr.dtype}; "
                         f"convert the embeddings to a float type")
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.float16:
        arr = arr.view(np.uint16)
    return readonly(arr)


def compute_dtype(arr: np.ndarray) -> np.dtype:
    """The dtype rows are normalised in, as in `kernels.reference`: float64 for float64, else float32."""
    return np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)


def kernel_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """labels: (n,) integers in [0, num_classes) -> read-only C-contiguous int64 array."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lab = np.ascontiguousarray(np.asarray(labels), dtype=np.int64)
    if lab.shape != (n,):
        raise InputError(f"labels have shape {lab.shape} but there are {n} rows; pass one label per row")
    if n and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}), found {int(lab.min())}..{int(lab.max())}; "
                         f"relabel the classes as 0..C-1")
    return readonly(lab)


def readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view, so that each kernel compiles once per dtype whatever the caller's flags."""
    view = arr.view()
    view.flags.writeable = False
    return view


def num_blocks(n: int, block_rows: int) -> int:
    return (n + block_rows - 1) // block_rows


def first_bad(bad_by_block: np.ndarray) -> int:
    """Per-block (or per-thread) first bad rows (-1 for none) -> the first bad row overall, or -1."""
    hits = bad_by_block[bad_by_block >= 0]
    return int(hits.min()) if hits.size else -1


@intrinsic
def half_bits_to_float(typingctx, bits):
    """uint16 IEEE half bits -> float32, one hardware conversion (only where HALF_BY_INSTRUCTION)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


def value(rows, i, j, table):
    """rows[i, j] as float64 (float16 bits decoded); callable from numba-compiled code only."""
    raise TypeError("value() is only callable from numba-compiled code")


@overload(value)
def _value_overload(rows, i, j, table):
    if rows.dtype != types.uint16:
        return lambda rows, i, j, table: np.float64(rows[i, j])
    if HALF_BY_INSTRUCTION:
        return lambda rows, i, j, table: np.float64(half_bits_to_float(rows[i, j]))
    return lambda rows, i, j, table: np.float64(table[rows[i, j]])


@numba.njit(cache=True, fastmath=REASSOC)
def row_sq_sum(rows, i, table):
    """Σ_j rows[i, j]² in float64."""
    ss = 0.0
    for j in range(rows.shape[1]):
        v = value(rows, i, j, table)
        ss += v * v
    return ss


@numba.njit(cache=True, fastmath=REASSOC)
def load_row(rows, i, table, buf):
    """Copy row i into the float64 buffer buf (D,) and return Σ buf²."""
    ss = 0.0
    for j in range(rows.shape[1]):
        v = value(rows, i, j, table)
        buf[j] = v
        ss += v * v
    return ss


@numba.njit(cache=True)
def inverse_norm(ss):
    """Σx² -> (1/‖x‖ clamped like the reference, ‖x/‖x‖‖², True when the row is zero-norm or non-finite).

    A zero row gives ‖x̂‖² = 0 and NaN/inf rows give NaN, as in the reference. The zero case is an
    explicit branch because callers compile with reassociation, which numba extends to the
    functions they call, and ss·(inv·inv) would be 0·inf.
    """
    norm = math.sqrt(ss)
    inv = 1.0 / max(norm, TINY)
    sq_hat = 0.0 if norm == 0.0 else (ss * inv) * inv
    return inv, sq_hat, not (norm > 0.0 and norm < math.inf)


@numba.njit(cache=True, fastmath=REASSOC)
def dot(a, b):
    """a: (D,) float64, b: (D,) float -> Σ a_j b_j in float64."""
    acc = 0.0
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=REASSOC)
def _normalise_into(rows, table, out, sq_norm, bad_by_block, block_rows):
    n, d = rows.shape
    for b in numba.prange(bad_by_block.shape[0]):
        first = -1
        for i in range(b * block_rows, min(n, (b + 1) * block_rows)):
            inv, _, bad = inverse_norm(row_sq_sum(rows, i, table))
            if bad and first < 0:
                first = i
            sq = 0.0
            for j in range(d):
                out[i, j] = value(rows, i, j, table) * inv
                v = np.float64(out[i, j])  # the stored, rounded value, as the reference squares it
                sq += v * v
            sq_norm[i] = sq
        bad_by_block[b] = first


def normalise_rows(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """arr from `kernel_rows`: (n, D) -> (x̂ (n, D) float32/float64, ‖x̂‖² (n,) float64, first bad row or -1).

    x̂ is rounded to the compute dtype, as `reference.normalise_rows` rounds it.
    """
    n = arr.shape[0]
    out = np.empty(arr.shape, dtype=compute_dtype(arr))
    sq_norm = np.empty(n, dtype=np.float64)
    bad_by_block = np.full(num_blocks(n, BLOCK_ROWS), -1, dtype=np.int64)
    if n:
        with numba.parallel_chunksize(1):  # blocks go to whichever thread is free
            _normalise_into(arr, HALF_TABLE, out, sq_norm, bad_by_block, BLOCK_ROWS)
    return out, sq_norm, first_bad(bad_by_block)
