"""Scoring as units of work: one task per ~1 M rows of shard files per pass, on any executor.

The driver lays out a `ScorePlan`, then for each pass hands the plan (with the merged statistics of
the earlier passes: class sums, class texts; one object-store reference under Ray) and one row range
to each unit. A unit reads its own rows from the embedding files (memory-mapped), runs
`passes.run_pass` over them and returns its accumulators' `state_dict`s, which it also saves under
the run's partials folder; the driver merges them in unit order with the accumulators' own `merge`.
A rerun of the same scoring finds the partials and runs only the units that are missing. The
all-pairs scores (silhouettes on at most --quadratic-limit rows) are units too: one per group of tile
pairs of their sample (`sharded_pairs`), summed on the driver. NCTI and LogME with N < D are finalised
on the driver, as `score()` does. Row numbers in errors are global: a unit's chunks
carry their index in the whole set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ... import __version__
from ...errors import InputError
from ...kernels import get_backend
from ...kernels.reference import ALL_PAIRS_TILE
from ..distributed import Executor, all_or_raise, as_executor, map_units, ray_get, ray_put
from ..embedding.embedding_set import EmbeddingSet
from ..embedding.loaders import load_embeddings
from ..files import write_atomic
from ..hashing import hash_json
from .options import ScoreOptions, default_chunk_rows
from .passes import ScorePlan, run_pass
from .registry import resolve_keys
from .sharded_pairs import DEFAULT_PAIRS_PER_UNIT, ShardedAllPairs
from .scores import ScoreReport, check_finite, check_keys, score_options

DEFAULT_UNIT_ROWS = 1 << 20
PARTIALS = "partials"


@dataclass(frozen=True)
class RowRange:
    """One unit of a pass: the global rows [lo, hi) of the set, numbered `index` among the units."""

    index: int
    lo: int
    hi: int


def row_units(es: EmbeddingSet, unit_rows: int = DEFAULT_UNIT_ROWS) -> list[RowRange]:
    """Units of at most `unit_rows` rows that follow the shard files: a longer file is cut, consecutive shorter
    ones are grouped (a store of 8192-row shards makes ~1 M-row units, not one tiny task per file)."""
    if unit_rows < 1:
        raise InputError(f"rows per unit must be at least 1, got {unit_rows}")
    pieces, start = [], 0
    for block in es.image_blocks:
        pieces += [(lo, min(start + len(block), lo + unit_rows)) for lo in range(start, start + len(block), unit_rows)]
        start += len(block)
    spans: list[list[int]] = []
    for lo, hi in pieces:
        if spans and hi - spans[-1][0] <= unit_rows:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    return [RowRange(i, lo, hi) for i, (lo, hi) in enumerate(spans)]


_WORKER_SETS: dict = {}  # per worker process: the embedding set of a source, opened (memory-mapped) once


def _open(source: str, loader_options: dict) -> EmbeddingSet:
    key = (source, json.dumps(loader_options, sort_keys=True, default=str))
    if key not in _WORKER_SETS:
        _WORKER_SETS.clear()
        _WORKER_SETS[key] = load_embeddings(source, **loader_options)
    return _WORKER_SETS[key]


@dataclass(frozen=True)
class PassJob:
    """Pass `k` of `plan` over one `RowRange` of the set at `source` (what every unit of the pass shares).

    plan: the `ScorePlan`, or its object-store reference. partials: the run's partials folder, or None.
    """

    source: str
    loader_options: dict
    plan: object
    k: int
    backend: str
    device: str | None
    chunk_rows: int
    partials: str | None

    def __call__(self, unit: RowRange) -> dict[str, dict]:
        plan = ray_get(self.plan)
        saved = load_partial(self.partials, plan, self.k, unit.index) if self.partials else None
        if saved is not None:
            return saved
        es = _open(self.source, self.loader_options)
        be = get_backend(self.backend, self.device)
        result = run_pass(plan, self.k, es, be, self.chunk_rows, rows=(unit.lo, unit.hi))
        states = result.state_dicts()
        if self.partials:
            save_partial(self.partials, self.k, unit.index, result)
        return states


def partial_path(folder: str | os.PathLike, k: int, index: int) -> Path:
    return Path(folder) / f"pass{k}-unit{index:05d}.npz"


def save_partial(folder: str | os.PathLike, k: int, index: int, result) -> None:
    """The unit's statistics' fields as one .npz, written atomically (configurations are the plan's)."""
    arrays = {f"{name}/{field}": np.asarray(_numpy(getattr(acc, field)))
              for name, acc in result.items() for field in acc.field_names}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_atomic(partial_path(folder, k, index), buffer.getvalue())


def load_partial(folder: str | os.PathLike, plan: ScorePlan, k: int, index: int) -> dict[str, dict] | None:
    """The state_dicts a unit saved, or None when it has not finished (or its file is not whole)."""
    path = partial_path(folder, k, index)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except (OSError, ValueError):
        return None
    out = {}
    for name, acc in plan.new_accumulators(k).items():
        state = acc.state_dict()
        for field in acc.field_names:
            if f"{name}/{field}" not in arrays:
                return None
            state[field] = arrays[f"{name}/{field}"]
        out[name] = state
    return out


def _numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


# ---- the driver -----------------------------------------------------------------------------------------

def score_sharded(source: str | os.PathLike, keys: Iterable[str] | str | None = None, *,
                  executor: "Executor | str | None" = None, backend: str = "auto", device: str | None = None,
                  chunk_rows: int | None = None, unit_rows: int = DEFAULT_UNIT_ROWS,
                  partials: str | os.PathLike | None = None, gensil_p: float = 1.0, sample: int | None = None,
                  seed: int = 0, quadratic_limit: int | None = None, logit_scale: float | None = None,
                  baseline_sample: int | None = None, label_embeddings=None, class_texts=None,
                  label_column: str | None = None, classnames=None,
                  on_unit: Callable[[int, int, int], None] | None = None,
                  pairs_per_unit: int = DEFAULT_PAIRS_PER_UNIT, all_pairs_tile: int = ALL_PAIRS_TILE) -> ScoreReport:
    """`score()` of the embeddings at `source`, one unit per `unit_rows` rows of shard files (`row_units`) and pass.

    source: what `load_embeddings` reads (an embeddings folder of shards, .npy/.npz, a clip-retrieval folder
        with class_texts / label_column / classnames); every worker opens it, so on a cluster it must be on
        shared storage. The score options are `score()`'s.
    partials: the folder under which this run's per-unit statistics are kept (in a subfolder named by a hash
        of the input files, keys and options), so that a rerun after a crash computes only the missing units;
        None keeps none.
    on_unit(pass k, units done, units in the pass): called on the driver as units finish.
    pairs_per_unit / all_pairs_tile: the all-pairs sweep's units, groups of this many tile pairs of this many
        rows a side (`sharded_pairs`); they are not kept as partials (a rerun sweeps again).
    Equals `score()` to float64 rounding (merging partial statistics is exact up to rounding).
    """
    started = time.perf_counter()
    ex = as_executor(executor)
    source = str(Path(source).resolve())  # workers may start in another folder
    es = load_embeddings(source, class_texts=class_texts, label_column=label_column, classnames=classnames)
    loader_options = {"label_column": label_column, "classnames": classnames,
                      "class_texts": None if class_texts is None else FixedTexts(es.text)}
    keys = resolve_keys(keys)
    options = score_options(es, keys, gensil_p=gensil_p, sample=sample, seed=seed, quadratic_limit=quadratic_limit,
                            logit_scale=logit_scale, baseline_sample=baseline_sample,
                            label_embeddings=label_embeddings)
    check_keys(es, keys, options)
    be = get_backend(backend, device)
    chunk_rows = chunk_rows or default_chunk_rows(es.d, es.image_dtype.itemsize)
    plan = ScorePlan(es, keys, options, be.device, chunk_rows)
    units = row_units(es, unit_rows)
    folder = None
    if partials is not None:
        folder = str(Path(partials) / run_id(source, keys, options, units, chunk_rows, be.name))
    for k in range(plan.num_passes):
        job = PassJob(source, loader_options, ray_put(plan, ex), k, be.name, device, chunk_rows, folder)
        saved = {u.index: load_partial(folder, plan, k, u.index) for u in units} if folder else {}
        todo = [u for u in units if saved.get(u.index) is None]
        finished = [len(units) - len(todo)]

        def count(i, result, k=k):
            finished[0] += 1
            if on_unit:
                on_unit(k, finished[0], len(units))

        results = dict(zip((u.index for u in todo), all_or_raise(map_units(job, todo, ex, on_result=count))))
        plan.add_pass(k, [saved.get(u.index) or results[u.index] for u in units])  # merged in unit order
    plan.all_pairs_sums = ShardedAllPairs(ex, be.name, device, all_pairs_tile, pairs_per_unit)
    values = plan.finalise(es, be)
    check_finite(values)
    return ScoreReport(values, es.n, es.d, es.c, be.name, str(be.device), time.perf_counter() - started,
                       es.source, list(plan.notes), dict(plan.sample_rows))


@dataclass(frozen=True)
class FixedTexts:
    """The class texts the driver already has, for workers reading a clip-retrieval folder (no model there)."""

    text: np.ndarray

    def __call__(self, classnames) -> np.ndarray:
        return self.text


def run_id(source, keys: list[str], options: ScoreOptions, units: list[RowRange], chunk_rows: int,
           backend: str) -> str:
    """A name for the partials of one scoring: a hash of the input files (paths, sizes, mtimes), keys, options,
    units, chunk size, backend and version; any change starts afresh."""
    files = sorted(p for p in (Path(source).rglob("*") if Path(source).is_dir() else [Path(source)])
                   if p.is_file() and PARTIALS not in p.parts)
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    label_sets = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in options.label_sets]
    described = {k: v for k, v in vars(options).items() if k != "label_sets"}
    return hash_json({"format": 1, "files": stats, "keys": keys, "options": described, "label_sets": label_sets,
                      "units": [(u.lo, u.hi) for u in units], "chunk_rows": chunk_rows, "backend": backend,
                      "version": __version__})[:24]
