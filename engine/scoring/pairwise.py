"""The all-pairs scores (silhouette_class_euclidean, gensil): one row sample, one pass over its tile pairs.

Both scores need, for every row, its summed distance to the rows of each class. The backend's
`all_pairs_class_sums` computes each unordered tile pair once (one float32 matrix product) and
adds it to both sides; when both scores are asked for, the same product feeds both. The sample's
rows go in stably sorted by label, so that every backend's tile pairs cover the same rows and a
sharded sweep (`sharded_pairs`, one unit per group of tile pairs) sums the very same contributions.
Before the pass starts, its time is estimated from the tile count and one timed tile (`AllPairsEstimate`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from ...kernels import Backend
from ...kernels.reference import ALL_PAIRS_TILE, tile_pairs
from ..embedding.embedding_set import EmbeddingSet
from .registry import DEFAULT_QUADRATIC_LIMIT
from .stats import silhouette_values

GENSIL_ZERO_EPS = 1e-6
ALL_PAIRS_KEYS = ("silhouette_class_euclidean", "gensil")
ESTIMATE_AFTER_ROWS = 2 * ALL_PAIRS_TILE  # below this the pass is too short to be worth timing first


def default_quadratic_limit(device: torch.device | str) -> int:
    return DEFAULT_QUADRATIC_LIMIT.get(torch.device(device).type, DEFAULT_QUADRATIC_LIMIT["cpu"])


@dataclass(frozen=True)
class AllPairsEstimate:
    """How long the all-pairs pass is expected to take, told before it starts.

    rows: rows in the pass; total_rows: rows of the set; seconds: the estimate;
    over_limit: True when an explicit sample asks for more rows than the quadratic limit.
    """

    keys: tuple[str, ...]
    rows: int
    total_rows: int
    seconds: float
    quadratic_limit: int
    over_limit: bool = False

    def message(self) -> str:
        head = (f"--sample {self.rows} is above --quadratic-limit {self.quadratic_limit}: " if self.over_limit
                else "")
        return (f"{head}all-pairs scores on {self.rows:,} rows: about {_duration(self.seconds)}; "
                f"--quadratic-limit or --metrics to change")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def sample_rows(n: int, sample: int | None, quadratic_limit: int) -> int:
    """Rows the all-pairs scores use: `sample` when given, else all rows up to the limit."""
    return min(sample, n) if sample is not None else min(n, quadratic_limit)


def all_pairs_scores(es: EmbeddingSet, be: Backend, keys: list[str], *, gensil_p: float = 1.0,
                     sample: int | None = None, seed: int = 0, quadratic_limit: int | None = None,
                     on_estimate: Callable[[AllPairsEstimate], None] | None = None,
                     progress: Callable[[str, int, int], None] | None = None,
                     sums: Callable | None = None) -> tuple[dict[str, float], int, list[str]]:
    """The all-pairs scores `keys` of `es` on one seeded row sample -> (values by key, rows used, notes).

    quadratic_limit: above this many rows (and without `sample`) a seeded sample of this size is used;
    None picks the backend device's default. on_estimate: told the expected time before the pass.
    sums: what computes the per-row per-class sums, with `be.all_pairs_class_sums`'s arguments (None: that
    op, here; `sharded_pairs.ShardedAllPairs`: one unit per group of tile pairs on an executor).
    """
    from .scores import check_clustering

    limit = quadratic_limit or default_quadratic_limit(be.device)
    rows = sample_rows(es.n, sample, limit)
    notes = []
    if sample is None and rows < es.n:
        notes = [f"{key}: all-pairs score on a seeded sample of {rows} of {es.n} rows (seed {seed}; raise "
                 f"--quadratic-limit or pass --sample for more)" for key in keys]
    sub = es.sample(rows, seed)
    counts = np.bincount(sub.label, minlength=sub.c)
    for key in keys:
        check_clustering(key, int(np.count_nonzero(counts)), sub.n, "pass a larger --sample")
    by_label = np.argsort(sub.label, kind="stable")
    x = be.tensor(np.concatenate(sub.image_blocks)[by_label] if len(sub.image_blocks) > 1 else
                  sub.image_blocks[0][by_label])
    labels = be.tensor(sub.label[by_label])
    euclidean = "silhouette_class_euclidean" in keys
    cosine_p = float(gensil_p) if "gensil" in keys else None
    local = lambda rows_, labels_, tick=None, op=be.all_pairs_class_sums: op(  # noqa: E731
        rows_, labels_, sub.c, euclidean=euclidean, cosine_p=cosine_p, zero_eps=GENSIL_ZERO_EPS, progress=tick)
    if on_estimate and (rows >= ESTIMATE_AFTER_ROWS or rows > limit):
        seconds = estimate_seconds(local, x, labels, rows)
        on_estimate(AllPairsEstimate(tuple(keys), rows, es.n, seconds, limit, over_limit=rows > limit))
    # tile pairs done, told as the share of the sample's rows
    tick = (lambda done, total: progress("all-pairs scores", rows * done // total, rows)) if progress else None
    sums = local(x, labels, tick, op=sums or be.all_pairs_class_sums)
    label_t = torch.as_tensor(sub.label[by_label], device=sums[0].device if sums[0] is not None else sums[1].device)
    counts_t = torch.as_tensor(counts, device=label_t.device)
    values = {}
    if euclidean:
        values["silhouette_class_euclidean"] = mean_silhouette_of_sums(sums.euclidean, label_t, counts_t)
    if cosine_p is not None:
        values["gensil"] = mean_silhouette_of_power_sums(sums.cosine, sums.cosine_pairs, label_t, counts_t,
                                                         cosine_p)
    return values, rows, notes


def estimate_seconds(run: Callable, x: torch.Tensor, labels: torch.Tensor, rows: int) -> float:
    """Seconds for the pass over `rows` rows: one tile of the real rows timed, times the tile-pair count.

    A diagonal tile costs one full matrix product, as every other tile pair does. A tiny call comes
    first, so that compilation (numba, Triton) is not counted.
    """
    run(x[:64], labels[:64])
    m = min(rows, ALL_PAIRS_TILE)
    started = time.perf_counter()
    run(x[:m], labels[:m])
    _synchronize(x.device)
    return (time.perf_counter() - started) * tile_pair_count(rows)


def tile_pair_count(rows: int, tile: int | None = None) -> int:
    return len(tile_pairs(rows, tile or ALL_PAIRS_TILE))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean_silhouette_of_sums(sums: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> float:
    """Mean silhouette from summed distances: sums (n, C) Σ_j d_ij per class, labels (n,), counts (C,)."""
    counts = counts.to(sums.device)
    own = counts[labels].double()
    mean = sums / counts.clamp_min(1).double().unsqueeze(0)
    a = sums.gather(1, labels.unsqueeze(1)).squeeze(1) / (own - 1.0).clamp_min(1.0)
    return _mean_silhouette(mean, a, labels, counts, own)


def mean_silhouette_of_power_sums(sums: torch.Tensor, pairs: torch.Tensor, labels: torch.Tensor,
                                  counts: torch.Tensor, p: float) -> float:
    """Mean generalised silhouette: sums (n, C) Σ d^p (Σ log d for p = 0), pairs (n, C) how many summed."""
    counts = counts.to(sums.device)
    mean = power_mean(sums, pairs.to(sums.device), p)
    a = mean.gather(1, labels.unsqueeze(1)).squeeze(1)
    return _mean_silhouette(mean, a, labels, counts, counts[labels].double())


def _mean_silhouette(mean: torch.Tensor, a: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor,
                     own: torch.Tensor) -> float:
    other = torch.ones_like(mean, dtype=torch.bool)
    other.scatter_(1, labels.unsqueeze(1), False)
    other &= (counts > 0).unsqueeze(0)
    b = mean.masked_fill(~other, math.inf).amin(1)
    return float(silhouette_values(a, b, own).sum()) / max(1, labels.shape[0])


def power_mean(sums: torch.Tensor, pairs: torch.Tensor, p: float) -> torch.Tensor:
    """M_p = (Σ d^p / k)^(1/p) (exp of the mean log for p = 0), 0 where k = 0. sums, pairs: (m, C)."""
    k = pairs.double()
    mean = sums / k.clamp_min(1.0)
    value = torch.exp(mean) if p == 0.0 else mean.clamp_min(0.0).pow(1.0 / p)
    return torch.where(k > 0, value, torch.zeros_like(value))


def pairwise_silhouette(be: Backend, rows, labels, num_classes: int, metric: str = "euclidean", p: float = 1.0,
                        progress: Callable[[int, int], None] | None = None) -> float:
    """Mean silhouette of the label clustering of `rows` (n, D) over all pairs: metric "euclidean" (p = 1,
    scikit-learn's) or "cosine" (gensil, power mean p, duplicates left out)."""
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")
    labels = be.tensor(labels).long()
    euclidean = metric == "euclidean"
    sums = be.all_pairs_class_sums(be.tensor(rows), labels, num_classes, euclidean=euclidean,
                                   cosine_p=None if euclidean else float(p), zero_eps=GENSIL_ZERO_EPS,
                                   progress=progress)
    labels = labels.to(sums[0].device if euclidean else sums[1].device)
    counts = torch.bincount(labels, minlength=num_classes)
    if euclidean:
        return mean_silhouette_of_sums(sums.euclidean, labels, counts)
    return mean_silhouette_of_power_sums(sums.cosine, sums.cosine_pairs, labels, counts, float(p))
