"""The all-pairs sweep as units of work: one unit per group of unordered tile pairs (i0 ≤ j0) of the sample.

The driver puts the (label-sorted, at most --quadratic-limit rows) sample into the object store once;
each unit runs the backend's `all_pairs_class_sums` over its own tile pairs and returns the per-row,
per-class float64 sums of the rows those tiles touch; the driver adds them up as units finish. Every
pair's contribution is the one a local sweep computes (same tiles of the same rows), so the scores
finalised from the sums equal the local ones to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...kernels import get_backend
from ...kernels.reference import ALL_PAIRS_TILE, AllPairsSums, tile_pairs
from ..distributed import Executor, all_or_raise, as_executor, map_units, ray_get, ray_put

DEFAULT_PAIRS_PER_UNIT = 16  # tile pairs of 2048 × 2048 rows per unit: seconds on a CPU worker
FIELDS = AllPairsSums._fields


@dataclass(frozen=True)
class TilePairGroup:
    """One unit of the sweep: the tile pairs (i0, j0), i0 ≤ j0, numbered `index` among the units."""

    index: int
    pairs: tuple[tuple[int, int], ...]


def tile_pair_groups(n: int, tile: int = ALL_PAIRS_TILE, pairs_per_unit: int = DEFAULT_PAIRS_PER_UNIT
                     ) -> list[TilePairGroup]:
    """The tile pairs of an n-row sample cut into consecutive groups of at most `pairs_per_unit`."""
    if pairs_per_unit < 1:
        raise ValueError(f"tile pairs per unit must be at least 1, got {pairs_per_unit}")
    todo = tile_pairs(n, tile)
    return [TilePairGroup(i, tuple(todo[lo:lo + pairs_per_unit]))
            for i, lo in enumerate(range(0, len(todo), pairs_per_unit))]


def touched_rows(pairs, n: int, tile: int) -> np.ndarray:
    """(r,) int64: the sorted rows of the tiles that `pairs` cover."""
    starts = sorted({s for pair in pairs for s in pair})
    return np.concatenate([np.arange(s, min(n, s + tile)) for s in starts]).astype(np.int64)


@dataclass(frozen=True)
class AllPairsJob:
    """The sweep over one `TilePairGroup` of a sample (what every unit shares).

    sample: (rows (n, D), labels (n,) int64) sorted by label, or its object-store reference.
    """

    sample: object
    num_classes: int
    euclidean: bool
    cosine_p: float | None
    zero_eps: float
    backend: str
    device: str | None
    tile: int

    def __call__(self, unit: TilePairGroup) -> dict[str, np.ndarray]:
        """-> {"rows": (r,) the rows its tiles touch, then per asked-for field of `AllPairsSums` its (r, C) sums}."""
        rows, labels = ray_get(self.sample)
        be = get_backend(self.backend, self.device)
        sums = be.all_pairs_class_sums(be.tensor(rows), be.tensor(labels).long(), self.num_classes,
                                       euclidean=self.euclidean, cosine_p=self.cosine_p, zero_eps=self.zero_eps,
                                       tile=self.tile, pairs=unit.pairs)
        touched = touched_rows(unit.pairs, len(labels), self.tile)
        out = {"rows": touched}
        for field, value in zip(FIELDS, sums):
            if value is not None:
                out[field] = value.detach().cpu().numpy()[touched]
        return out


@dataclass
class ShardedAllPairs:
    """A stand-in for `be.all_pairs_class_sums` that runs the sweep as units on `executor` (see the module).

    backend / device: what each unit runs (the backend's name and device, as `get_backend` takes them).
    """

    executor: Executor
    backend: str
    device: str | None = None
    tile: int = ALL_PAIRS_TILE
    pairs_per_unit: int = DEFAULT_PAIRS_PER_UNIT

    def __call__(self, rows, labels, num_classes: int, *, euclidean: bool = True, cosine_p: float | None = None,
                 zero_eps: float = 0.0, progress: Callable[[int, int], None] | None = None) -> AllPairsSums:
        """rows: (n, D) sorted by label; labels: (n,) -> AllPairsSums (on the CPU), summed over every unit."""
        rows, labels = _numpy(rows), _numpy(labels).astype(np.int64)
        n, ex = len(labels), as_executor(self.executor)
        job = AllPairsJob(ray_put((rows, labels), ex), num_classes, euclidean, cosine_p, zero_eps, self.backend,
                          self.device, self.tile)
        groups = tile_pair_groups(n, self.tile, self.pairs_per_unit)
        total = {f: np.zeros((n, num_classes)) for f, asked in zip(FIELDS, (euclidean, cosine_p is not None,
                                                                              cosine_p is not None)) if asked}
        done = [0]

        def add(i: int, part: dict) -> None:
            for field, sums in total.items():
                sums[part["rows"]] += part[field]
            done[0] += len(groups[i].pairs)
            if progress:
                progress(done[0], sum(len(g.pairs) for g in groups))

        all_or_raise(map_units(job, groups, ex, on_result=add, keep=False))
        get = lambda f: torch.from_numpy(total[f]) if f in total else None  # noqa: E731
        pairs = get("cosine_pairs")
        return AllPairsSums(get("euclidean"), get("cosine"), None if pairs is None else pairs.round().long())


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
