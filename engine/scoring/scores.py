"""`score()`: the requested scores of an embedding set, from the registry, in one read of the rows per pass.

The registry (`engine.scoring.registry`) says what each key reads and how it is finalised; the
pass driver (`engine.scoring.passes`) streams the rows once per pass for every statistic, the
embedding scores' and the baselines' alike; the all-pairs scores run in tiles on a seeded sample
when N exceeds the quadratic limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from ... import __version__
from ...errors import InputError
from ...kernels import Backend, get_backend
from ..embedding.embedding_set import EmbeddingSet
from .options import DEFAULT_QUADRATIC_LIMIT, ScoreOptions, check_label_sets, default_chunk_rows  # noqa: F401
from .pairwise import AllPairsEstimate
from .chunk import Chunk
from .passes import ScorePlan, run_pass, run_plan
from .registry import (BASELINE, METRIC_GROUPS, REGISTRY, SCORES, STATISTICS, ScoreSpec,  # noqa: F401
                       resolve_keys)
from .stats import ClassStats


@dataclass
class ScoreReport:
    """The result of `score`: `.scores` maps output key to float."""

    scores: dict[str, float]
    n: int
    d: int
    c: int
    backend: str
    device: str
    seconds: float
    input: str = "<memory>"
    notes: list[str] = field(default_factory=list)
    sample_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"input": self.input, "n": self.n, "d": self.d, "c": self.c, "backend": self.backend,
               "device": self.device, "seconds": round(self.seconds, 6), "version": __version__,
               "scores": dict(self.scores)}
        if self.notes:
            out["notes"] = list(self.notes)
        if self.sample_rows:
            out["sample_rows"] = dict(self.sample_rows)
        return out


def score(embeddings: EmbeddingSet, keys: Iterable[str] | str | None = None, backend: str | Backend = "auto",
          chunk_rows: int | None = None, *, device: str | None = None, gensil_p: float = 1.0,
          sample: int | None = None, seed: int = 0, quadratic_limit: int | None = None,
          logit_scale: float | None = None, baseline_sample: int | None = None, label_embeddings=None,
          progress: Callable[[str, int, int], None] | None = None,
          on_estimate: Callable[[AllPairsEstimate], None] | None = None) -> ScoreReport:
    """Compute the requested scores of an embedding set, reading its rows once per pass for all of them.

    embeddings: an `EmbeddingSet` (image rows (N, D), labels (N,), texts (C, D)).
    keys: output keys, groups ("all": the embedding scores `SCORES`, the default; "baselines":
        `TRANSFER_SCORES`; "everything") and aliases ("ncti", "gbc"); see `registry.resolve_keys`.
    sample: row count for the all-pairs scores (scikit-learn's `sample_size`); when None
        they use all rows up to `quadratic_limit` and a seeded sample of that size beyond
        (None: the device's default, `registry.DEFAULT_QUADRATIC_LIMIT`).
    logit_scale, baseline_sample, label_embeddings: options of the transferability baselines
        (logit_scale defaults to the model's, else 100; label_embeddings: extra (C, D) per encoder for EMMS).
    progress: called as progress(stage, rows_done, rows_total).
    on_estimate: told the expected time of the all-pairs scores before they start (`AllPairsEstimate`).
    """
    started = time.perf_counter()
    es = embeddings
    keys = resolve_keys(keys)
    options = score_options(es, keys, gensil_p=gensil_p, sample=sample, seed=seed, quadratic_limit=quadratic_limit,
                            logit_scale=logit_scale, baseline_sample=baseline_sample,
                            label_embeddings=label_embeddings)
    be = backend if isinstance(backend, Backend) else get_backend(backend, device)
    chunk_rows = chunk_rows or default_chunk_rows(es.d, es.image_dtype.itemsize)
    report = ScoreReport({}, es.n, es.d, es.c, be.name, str(be.device), 0.0, es.source)
    values, notes, sample_rows = evaluate(es, keys, options, be, chunk_rows, progress, on_estimate)
    report.scores, report.notes, report.sample_rows = values, notes, sample_rows
    report.seconds = time.perf_counter() - started
    return report


def score_options(es: EmbeddingSet, keys: list[str], *, gensil_p: float = 1.0, sample: int | None = None,
                  seed: int = 0, quadratic_limit: int | None = None, logit_scale: float | None = None,
                  baseline_sample: int | None = None, label_embeddings=None) -> ScoreOptions:
    """`score()`'s keyword options as `ScoreOptions` for `es` (logit_scale: the model's by default, else 100)."""
    return ScoreOptions(gensil_p=gensil_p, sample=sample, seed=seed, quadratic_limit=quadratic_limit,
                        logit_scale=float(logit_scale or es.meta.get("logit_scale") or ScoreOptions.logit_scale),
                        baseline_sample=baseline_sample or ScoreOptions.baseline_sample,
                        label_sets=check_label_sets(label_embeddings, es.c, es.d)
                        if any(k in REGISTRY and REGISTRY[k].family == BASELINE for k in keys) else ())


def evaluate(es: EmbeddingSet, keys: list[str], options: ScoreOptions, be: Backend, chunk_rows: int,
             progress=None, on_estimate=None) -> tuple[dict[str, float], list[str], dict[str, int]]:
    """Resolved `keys` of `es`: checks, one `ScorePlan` run in this process -> (values, notes, sample rows)."""
    check_keys(es, keys, options)
    plan = ScorePlan(es, keys, options, be.device, chunk_rows)
    plan.on_estimate = on_estimate
    values = run_plan(plan, es, be, chunk_rows, progress)
    check_finite(values)
    return values, plan.notes, plan.sample_rows


def check_finite(values: dict[str, float]) -> None:
    """InputError naming the first score that came out NaN or infinite."""
    for k, v in values.items():
        if not math.isfinite(v):
            what = "baseline" if REGISTRY[k].family == BASELINE else "score"
            fix = f" — leave {k} out of --metrics" if what == "baseline" else ""
            raise InputError(f"{what} {k} came out {v}; the embeddings are degenerate for it (check for "
                             f"constant or duplicated rows){fix}")


def check_keys(es: EmbeddingSet, keys: list[str], options: ScoreOptions) -> None:
    """The class requirements of every key (registry `min_classes`, `clustering`) and the baselines' options."""
    counts = np.bincount(es.label, minlength=es.c)
    nonempty = int(np.count_nonzero(counts))
    for k in keys:
        spec = REGISTRY[k]
        if spec.family == BASELINE:
            continue
        have = nonempty if spec.clustering else es.c
        if have < spec.min_classes:
            what = "classes with rows" if spec.clustering else "classes"
            raise InputError(f"{k} needs at least {spec.min_classes} {what}, the embeddings have {have}; "
                             f"add classes or leave {k} out of --metrics")
        if spec.clustering:
            check_clustering(k, nonempty, es.n, "leave it out of --metrics")
    baselines = [k for k in keys if REGISTRY[k].family == BASELINE]
    if baselines:
        options.check_baselines()
        if nonempty < 2:
            raise InputError(f"the transferability baselines need at least 2 classes with rows, the embeddings have "
                             f"{nonempty}; add classes or leave {', '.join(baselines)} out of --metrics")


def check_clustering(key: str, classes: int, rows: int, fix: str) -> None:
    """A silhouette needs 2 ≤ classes with rows ≤ rows − 1 (scikit-learn's rule)."""
    if not 2 <= classes <= rows - 1:
        raise InputError(f"{key} needs 2 ≤ classes ≤ rows − 1, got {classes} classes with rows over {rows} "
                         f"rows; {fix}")


# ---- the two passes of the embedding scores, one call each (kept for scripts written against them) ----

PASS2_STATISTICS = ("zeroshot", "silhouette_class", "modality")


def run_pass1(es: EmbeddingSet, be: Backend, chunk_rows: int, progress=None) -> ClassStats:
    """Pass 1 (`ClassStats`) of `es` alone; merge the shards' results with `.merge`."""
    plan = ScorePlan(es, ["iimm_intra_image"], device=be.device, chunk_rows=chunk_rows)
    return run_pass(plan, 0, es, be, chunk_rows, progress=progress)["class"]


def run_pass2(es: EmbeddingSet, be: Backend, chunk_rows: int, passes: set[str], class_stats: ClassStats,
              text: torch.Tensor, progress=None) -> dict:
    """One read of the rows feeding the pass-2 statistics named in `passes` ("zeroshot", "silhouette_class",
    "modality"), measured against `class_stats`, the merged pass 1 of the whole set."""
    plan = _linear_plan(class_stats, text, be.device)
    accs = {name: STATISTICS[name].build(plan, 0) for name in PASS2_STATISTICS if name in passes}
    for start, rows, labels in es.iter_chunks(chunk_rows):
        chunk = Chunk(None, labels, start, rows=rows, backend=be)
        for acc in accs.values():
            acc.update(chunk)
        if progress:
            progress("pass 2", start + len(rows), es.n)
    return accs


def finalize_linear(stats: ClassStats, text: torch.Tensor, pass2: dict) -> dict[str, float]:
    """Every streamed embedding score that `stats` (merged pass 1) and the merged `pass2` accumulators give."""
    plan = _linear_plan(stats, text, stats.sums.device)
    plan._stats.update(pass2)
    have = {"class", *pass2}
    keys = [k for k, spec in SCORES.items() if spec.passes_for(plan) and set(spec.passes_for(plan)) <= have
            and plan.c >= spec.min_classes]
    return {k: float(SCORES[k].finalise(plan)) for k in keys}


def _linear_plan(class_stats: ClassStats, text, device) -> ScorePlan:
    """A plan of the streamed embedding scores whose pass 1 is `class_stats` (already merged)."""
    plan = ScorePlan.from_shape(class_stats.counts.cpu().numpy(), torch.as_tensor(text).double().cpu().numpy(),
                                [], device=device)
    plan._stats["class"] = class_stats
    return plan
