"""Pass 1 on the CPU: normalise every row and accumulate per-class sums in one read.

Each thread reads a row once from memory to get its norm and a second time, now from
L1, to add x/‖x‖ into its own (C, D) float64 partial sums; blocks of rows go to
whichever thread is free, thread 0 adds straight into the output and the other
partials are added in at the end. Tiny chunks use fewer threads, so that zeroing and
adding partials never costs more than the rows. When the class sums themselves
outgrow a last-level cache (C·D·8 > 32 MiB), rows are instead visited grouped by
class (a counting sort of the labels) and each block of that order writes whole
classes straight into the output.
"""

from __future__ import annotations

import threading
import time

import numba
import numpy as np
import torch

from .numba_rows import within_torch_threads
from .numba_rows import (BLOCK_ROWS, HALF_TABLE, REASSOC, first_bad, inverse_norm, kernel_labels, kernel_rows,
                         num_blocks, row_sq_sum, value)
from .reference import ClassSums

# Partials: their zeroing and summing may cost at most this fraction of the chunk's row bytes,
# and all of them together at most PARTIALS_MAX_BYTES.
PARTIALS_MAX_FRACTION = 0.25
PARTIALS_MAX_BYTES = 64 << 20
CLASS_GROUPED_MIN_BYTES = 32 << 20  # C·D·8 above this: the class-grouped kernel
CLASS_BLOCK_ROWS = 2048  # rows per unit of the class-grouped kernel (two (D,) edge buffers each)
PARALLEL_ADD_MIN_VALUES = 1 << 22  # extra partials larger than this are added in parallel


@within_torch_threads
def class_sums(rows, labels, num_classes: int) -> ClassSums:
    """rows: (n, D) float16/bf16/float32/float64; labels: (n,) int64 in [0, C) -> ClassSums.

    The contract of `kernels.reference.class_sums`: sums (C, D) float64 of the normalised rows,
    counts (C,) int64, sq_norm_sum () float64, first_bad (first zero-norm/non-finite row, or -1).
    """
    arr = kernel_rows(rows)
    n, d = arr.shape
    lab = kernel_labels(labels, n, num_classes)
    if n == 0:
        sums, counts, sq, bad = np.zeros((num_classes, d)), np.zeros(num_classes, np.int64), 0.0, -1
    elif num_classes * d * 8 > CLASS_GROUPED_MIN_BYTES:
        sums, counts, sq, bad = sums_by_class(arr, lab, num_classes)
    else:
        parts = partial_count(numba.get_num_threads(), n, d, num_classes, arr.itemsize)
        parts = THREAD_CHOICE.pick(parts, arr.nbytes)
        started = time.perf_counter()
        sums, counts, sq, bad = sums_by_partials(arr, lab, num_classes, parts)
        THREAD_CHOICE.record(parts, arr.nbytes, time.perf_counter() - started)
    return ClassSums(torch.from_numpy(sums), torch.from_numpy(counts), torch.tensor(sq, dtype=torch.float64), bad)


class ThreadChoice:
    """Whether large chunks run on their partials' threads or on one: whichever read recent chunks faster.

    When another process keeps a core busy, one thread can beat two (the second thread's partial and the
    end-of-chunk barrier wait on the busy core). Chunks of at least `min_bytes` are timed; every
    `probe_every`-th one runs on the other choice, so the choice follows the machine's load. Either
    choice sums in float64; only how rows are split among partials differs.
    """

    def __init__(self, min_bytes: int = 16 << 20, probe_every: int = 16):
        self.min_bytes, self.probe_every = min_bytes, probe_every
        self.seconds_per_byte: dict[bool, float] = {}  # {one thread?: recent seconds per row byte}
        self.calls = self.timed = 0

    def pick(self, parts: int, nbytes: int) -> int:
        if parts == 1 or nbytes < self.min_bytes:
            return parts
        self.calls += 1
        rate = self.seconds_per_byte
        if len(rate) < 2:
            return 1 if False in rate else parts
        one = rate[True] < rate[False]
        if self.calls % self.probe_every == 0:
            one = not one
        return 1 if one else parts

    def record(self, parts: int, nbytes: int, seconds: float) -> None:
        self.timed += nbytes >= self.min_bytes
        if nbytes >= self.min_bytes and self.timed > 1:  # the first one may include loading the compiled kernel
            self.seconds_per_byte[parts == 1] = seconds / nbytes


THREAD_CHOICE = ThreadChoice()


def partial_count(threads: int, n: int, d: int, num_classes: int, itemsize: int) -> int:
    """How many threads get a (C, D) partial: all of them, unless the chunk is too small to pay for them."""
    one = num_classes * d * 8
    affordable = 1 + int(PARTIALS_MAX_FRACTION * n * d * itemsize // one)
    return max(1, min(threads, affordable, PARTIALS_MAX_BYTES // one))


def sums_by_partials(arr, lab, num_classes: int, threads: int):
    """One (C, D) partial per thread, on `threads` threads -> (sums (C, D), counts (C,), Σ‖x̂‖², first bad row).

    Thread 0 accumulates straight into the (fresh) output; threads 1.. into a scratch buffer that is
    reused across calls from the same Python thread, so that its pages are not faulted in per chunk.
    """
    d = arr.shape[1]
    out = np.empty((num_classes, d))
    extra = _scratch((threads - 1, num_classes, d))
    started = np.zeros(threads, dtype=np.bool_)
    counts = np.zeros((threads, num_classes), dtype=np.int64)
    sq = np.zeros(threads)
    bad = np.full(threads, -1, dtype=np.int64)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)  # numba.get_thread_id() is then in [0, threads): one partial each
    try:
        with numba.parallel_chunksize(1):  # blocks go to whichever thread is free: robust to busy cores
            _accumulate_partials(arr, lab, HALF_TABLE, out, extra, started, counts, sq, bad, BLOCK_ROWS)
    finally:
        numba.set_num_threads(saved)
    if not started[0]:
        out[:] = 0.0
    if extra.size > PARALLEL_ADD_MIN_VALUES:
        _add_partials(out, extra, started)
    else:  # a few MiB: one core adds it in well under a millisecond, no thread hand-off needed
        for t in np.flatnonzero(started[1:]):
            out += extra[t]
    return out, counts.sum(0), float(sq.sum()), first_bad(bad)


_scratch_by_thread = threading.local()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 buffer of `shape`, kept for the next calls (a call on fewer threads reuses
    the first partials of a larger one, so switching thread counts does not fault in fresh pages)."""
    buf = getattr(_scratch_by_thread, "partials", None)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = np.empty(shape)
        _scratch_by_thread.partials = buf
    return buf[:shape[0]]


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=REASSOC)
def _accumulate_partials(rows, labels, table, out, extra, started, counts, sq_by_thread, bad_by_thread, block_rows):
    """Thread t adds into `out` (t = 0) or `extra[t - 1]`, zeroing it before its first block."""
    n, d = rows.shape
    for b in numba.prange((n + block_rows - 1) // block_rows):
        t = numba.get_thread_id()
        sums = out if t == 0 else extra[t - 1]
        if not started[t]:
            sums[:] = 0.0
            started[t] = True
        first = -1
        sq = 0.0
        for i in range(b * block_rows, min(n, (b + 1) * block_rows)):
            inv, sq_hat, bad = inverse_norm(row_sq_sum(rows, i, table))
            if bad and first < 0:
                first = i
            sq += sq_hat
            c = labels[i]
            counts[t, c] += 1
            for j in range(d):
                sums[c, j] += value(rows, i, j, table) * inv
        sq_by_thread[t] += sq
        if first >= 0 and (bad_by_thread[t] < 0 or first < bad_by_thread[t]):
            bad_by_thread[t] = first


@numba.njit(parallel=True, nogil=True, cache=True)
def _add_partials(out, extra, started):
    """out += Σ extra[t - 1] over the threads t ≥ 1 that started, in order, in parallel over classes."""
    c, d = out.shape
    for k in numba.prange(c):
        for t in range(1, started.shape[0]):
            if started[t]:
                for j in range(d):
                    out[k, j] += extra[t - 1, k, j]


def sums_by_class(arr, lab, num_classes: int):
    """Rows grouped by class -> (sums (C, D), counts (C,), Σ‖x̂‖², first bad row)."""
    n, d = arr.shape
    counts = np.bincount(lab, minlength=num_classes).astype(np.int64)
    order = _order_by_class(lab, counts)
    blocks = num_blocks(n, CLASS_BLOCK_ROWS)
    sums = np.zeros((num_classes, d))
    edge_sums = np.zeros((blocks, 2, d))
    edge_class = np.empty((blocks, 2), dtype=np.int64)
    sq = np.zeros(blocks)
    bad = np.full(blocks, -1, dtype=np.int64)
    with numba.parallel_chunksize(1):
        _accumulate_by_class(arr, lab, order, HALF_TABLE, sums, edge_sums, edge_class, sq, bad, CLASS_BLOCK_ROWS)
    _add_edges(sums, edge_sums, edge_class)
    return sums, counts, float(sq.sum()), first_bad(bad)


@numba.njit(cache=True)
def _order_by_class(labels, counts):
    """A stable counting sort: row indices grouped by class, in row order within a class."""
    start = np.zeros(counts.shape[0], dtype=np.int64)
    for c in range(1, counts.shape[0]):
        start[c] = start[c - 1] + counts[c - 1]
    order = np.empty(labels.shape[0], dtype=np.int64)
    for i in range(labels.shape[0]):
        c = labels[i]
        order[start[c]] = i
        start[c] += 1
    return order


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=REASSOC)
def _accumulate_by_class(rows, labels, order, table, sums, edge_sums, edge_class, sq_by_block, bad_by_block,
                         block_rows):
    """Block b covers `order[b·block_rows : (b+1)·block_rows]`. A class lying wholly inside one block is
    written straight to `sums`; the block's first and last class, which neighbouring blocks may share,
    go to the block's two `edge_sums` rows, added in afterwards (an unused one stays 0)."""
    n, d = rows.shape
    for b in numba.prange(edge_sums.shape[0]):
        lo, hi = b * block_rows, min(n, (b + 1) * block_rows)
        c_first, c_last = labels[order[lo]], labels[order[hi - 1]]
        edge_class[b, 0], edge_class[b, 1] = c_first, c_last
        first = -1
        sq = 0.0
        for r in range(lo, hi):
            i = order[r]
            inv, sq_hat, bad = inverse_norm(row_sq_sum(rows, i, table))
            if bad and (first < 0 or i < first):
                first = i
            sq += sq_hat
            c = labels[i]
            target = edge_sums[b, 0] if c == c_first else (edge_sums[b, 1] if c == c_last else sums[c])
            for j in range(d):
                target[j] += value(rows, i, j, table) * inv
        sq_by_block[b] = sq
        bad_by_block[b] = first


@numba.njit(cache=True)
def _add_edges(sums, edge_sums, edge_class):
    for b in range(edge_sums.shape[0]):
        for e in range(2):
            sums[edge_class[b, e]] += edge_sums[b, e]
