"""Side-by-side timings of the compute backends on synthetic embeddings; rows of results, no printing.

Each op runs as one pass over the rows in chunks, exactly as the scores call it: class sums
(pass 1), the cross reduce against the C class texts (zero-shot pass), and the all-pairs
Euclidean pass on the first `pair_n` rows. Two peers compute the same numbers the slow way:
the naive O(N²) blocked all-pairs intra-modal similarity (vs class sums) and scikit-learn's
`silhouette_score` (vs the pairwise pass); each is skipped above its size limit, and the row
says so. Every timed row also carries the value it computed, so agreement is visible.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...kernels import BACKENDS, ROW_DTYPES, get_backend, resolve_device, triton_interpreted
from ...errors import IimmError, InputError
from .chunk import Chunk
from .pairwise import pairwise_silhouette
from .scores import finalize_linear
from .stats import ClassStats, ZeroShotStats

DTYPES = {name: getattr(torch, name) for name in ROW_DTYPES}
NAIVE_LIMIT = {"cpu": 20_000, "cuda": 200_000}
SKLEARN_LIMIT = 10_000
PAIR_N = {"cpu": 4_096, "cuda": 50_000}

Progress = Callable[[str, int, int], None]


@dataclass
class BenchRow:
    """One op on one implementation: median seconds per pass and the throughput it implies.

    `speedup` is the PyTorch path's time for the same quantity divided by this row's time
    (for the peers: the torch op that computes the same number). `value` is what the pass
    computed (intra similarity, top-1 accuracy or Euclidean silhouette). Skipped rows have
    `seconds` None and say why in `note`.
    """

    op: str
    impl: str
    rows: int
    seconds: float | None = None
    rows_per_s: float | None = None
    gb_per_s: float | None = None
    speedup: float | None = None
    value: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchData:
    """Synthetic task on the device: rows (N, D), labels (N,), unit class texts (C, D)."""

    rows: torch.Tensor
    labels: torch.Tensor
    text: torch.Tensor

    @property
    def row_bytes(self) -> int:
        return self.rows.shape[1] * self.rows.element_size()


def synthetic_task(n: int, d: int, c: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> BenchData:
    """Clustered rows: class centroid + noise, labels uniform; texts = centroids + noise, normalised."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    centroids = torch.randn(c, d, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    rows = torch.empty(n, d, dtype=dtype)
    for lo in range(0, n, 1 << 18):
        hi = min(n, lo + (1 << 18))
        rows[lo:hi] = (centroids[labels[lo:hi]] + 2.0 * torch.randn(hi - lo, d, generator=g)).to(dtype)
    text = centroids + torch.randn(c, d, generator=g)
    text = (text / text.norm(dim=1, keepdim=True)).double()
    return BenchData(rows.to(device), labels.to(device), text.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], float], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, value) of `fn()` over `repeats` timed calls after `warmup` untimed ones."""
    value = None
    for _ in range(warmup):
        value = fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        started = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def _chunks(n: int, chunk_rows: int):
    for lo in range(0, n, chunk_rows):
        yield lo, min(n, lo + chunk_rows)


def intra_from_class_sums(backend, data: BenchData, chunk_rows: int) -> float:
    """Mean x̂_i·x̂_j over pairs i<j from one class-sums pass, exactly as `score` computes it."""
    stats = ClassStats(data.text.shape[0], data.rows.shape[1], backend.device)
    for lo, hi in _chunks(data.rows.shape[0], chunk_rows):
        stats.update(Chunk(None, data.labels[lo:hi], lo, rows=data.rows[lo:hi], backend=backend))
    return finalize_linear(stats, data.text, {})["iimm_intra_image"]


def zero_shot_top1(backend, data: BenchData, chunk_rows: int) -> float:
    """Share of rows whose own class text is the most similar, from one cross-reduce pass."""
    stats = ZeroShotStats(data.text, backend.device)
    for lo, hi in _chunks(data.rows.shape[0], chunk_rows):
        stats.update(Chunk(None, data.labels[lo:hi], lo, rows=data.rows[lo:hi], backend=backend))
    return float(stats.top1.sum()) / data.rows.shape[0]


def euclidean_silhouette(backend, rows: torch.Tensor, labels: torch.Tensor, c: int) -> float:
    """Exact Euclidean silhouette of `rows` by label from tiled all-pairs class sums (scikit-learn conventions)."""
    return pairwise_silhouette(backend, rows, labels, c, "euclidean")


def naive_intra(rows: torch.Tensor, block: int = 2048) -> float:
    """The O(N²·D) definition: every pair i<j, block by block, summed in float64."""
    x = rows.float()
    x = x / x.norm(dim=1, keepdim=True)
    n, total = x.shape[0], 0.0
    for i in range(0, n, block):
        for j in range(i, n, block):
            g = (x[i:i + block] @ x[j:j + block].T).double()
            total += float(torch.triu(g, diagonal=1).sum() if i == j else g.sum())
    return total / (n * (n - 1) / 2)


def sklearn_silhouette(rows: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import silhouette_score

    x = rows.double().cpu().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(silhouette_score(x, labels.cpu().numpy(), metric="euclidean"))


def _skip_reason(name: str, device: torch.device) -> str | None:
    """Why a backend that can run is not timed (one that cannot run is skipped with get_backend's reason)."""
    if name == "triton" and device.type != "cuda" and triton_interpreted():
        return "skipped: TRITON_INTERPRET runs the kernels in Python, for tests; its timings mean nothing"
    return None


def run_bench(n: int = 200_000, d: int = 512, c: int = 100, backends: Sequence[str] = BACKENDS,
              device: str | torch.device | None = None, dtype: str = "float16", repeats: int = 3,
              chunk_rows: int = 1 << 18, pair_n: int | None = None, naive_limit: int | None = None,
              sklearn_limit: int = SKLEARN_LIMIT, seed: int = 0, progress: Progress | None = None) -> list[BenchRow]:
    """Time each op on each backend (and the O(N²) peers) on one synthetic task; return the rows."""
    if n < 2 or d < 1 or c < 2:
        raise InputError(f"bench needs N ≥ 2, D ≥ 1 and C ≥ 2, got N={n} D={d} C={c}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    dev = resolve_device(device)
    pair_n = min(n, pair_n or PAIR_N.get(dev.type, PAIR_N["cpu"]))
    naive_limit = naive_limit or NAIVE_LIMIT.get(dev.type, NAIVE_LIMIT["cpu"])
    data = synthetic_task(n, d, c, DTYPES[dtype], dev, seed)
    pair_rows, pair_labels = data.rows[:pair_n], data.labels[:pair_n]
    ops = {
        "class_sums": (n, lambda be: intra_from_class_sums(be, data, chunk_rows)),
        "cross_reduce": (n, lambda be: zero_shot_top1(be, data, chunk_rows)),
        "pairwise_euclidean": (pair_n, lambda be: euclidean_silhouette(be, pair_rows, pair_labels, c)),
    }
    steps = len(backends) * len(ops) + 2
    rows: list[BenchRow] = []
    torch_seconds: dict[str, float] = {}
    done = 0
    for name in backends:
        skip = _skip_reason(name, dev)
        backend = None
        if skip is None:
            try:
                backend = get_backend(name, dev)
            except IimmError as exc:  # get_backend speaks of --backend; iimm bench takes --backends
                skip = f"skipped: {exc}".replace("--backend ", "--backends ")
        for op, (op_rows, fn) in ops.items():
            if backend is None:
                rows.append(BenchRow(op, name, op_rows, note=skip))
            else:
                seconds, value = time_median(lambda: fn(backend), dev, repeats)
                note = f"{op_rows}² pairs, {op_rows ** 2 / seconds:.3g} pairs/s" if op == "pairwise_euclidean" else ""
                gb = None if op == "pairwise_euclidean" else op_rows * data.row_bytes / seconds / 1e9
                rows.append(BenchRow(op, name, op_rows, seconds, op_rows / seconds, gb, value=value, note=note))
                if name == "torch":
                    torch_seconds[op] = seconds
            done += 1
            if progress:
                progress("bench", done, steps)
    rows.append(_peer_row("class_sums", "naive O(N²) intra", n, naive_limit, dev,
                          lambda: naive_intra(data.rows), data.row_bytes))
    if progress:
        progress("bench", done + 1, steps)
    rows.append(_peer_row("pairwise_euclidean", "scikit-learn silhouette", pair_n, sklearn_limit, dev,
                          lambda: sklearn_silhouette(pair_rows, pair_labels), None))
    if progress:
        progress("bench", steps, steps)
    for r in rows:
        if r.seconds and r.op in torch_seconds:
            r.speedup = torch_seconds[r.op] / r.seconds
    return rows


def _peer_row(op: str, impl: str, n: int, limit: int, device: torch.device, fn: Callable[[], float],
              row_bytes: int | None) -> BenchRow:
    if n > limit:
        return BenchRow(op, impl, n, note=f"skipped: O(N²) at N={n} is above its limit of {limit} rows")
    seconds, value = time_median(fn, device, repeats=1, warmup=0)
    return BenchRow(op, impl, n, seconds, n / seconds, None if row_bytes is None else n * row_bytes / seconds / 1e9,
                    value=value)
