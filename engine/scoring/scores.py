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
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ... import __version__
from ...errors import BadRowError, InputError
from ...kernels import Backend, get_backend
from ..embedding.embedding_set import EmbeddingSet
from .options import ScoreOptions, check_label_sets, default_chunk_rows
from .pairwise import AllPairsEstimate
from .passes import PassResult, ScorePlan, feed, run_pass, run_plan
from .registry import BASELINE, REGISTRY, SCORES, STATISTICS, resolve_keys
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


def score(embeddings, *positional, keys: Iterable[str] | str | None = None, backend: str | Backend = "auto",
          chunk_rows: int | None = None, device: str | None = None, gensil_p: float = 1.0,
          sample: int | None = None, seed: int = 0, quadratic_limit: int | None = None,
          logit_scale: float | None = None, baseline_sample: int | None = None, label_embeddings=None,
          progress: Callable[[str, int, int], None] | None = None,
          on_estimate: Callable[[AllPairsEstimate], None] | None = None) -> ScoreReport:
    """Compute the requested scores of an embedding set, reading its rows once per pass for all of them.

    Called as `score(es, keys, backend, chunk_rows)` with an `EmbeddingSet` (image rows (N, D),
    labels (N,), texts (C, D)), or as `score(image, label, text, keys=...)` with arrays or tensors:
    image (N, D) float, label (N,) int class indices, text (C, D) float.
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
    if isinstance(embeddings, EmbeddingSet):
        if len(positional) > 3:
            raise TypeError("score(es, keys, backend, chunk_rows) takes at most 4 positional arguments")
        keys, backend, chunk_rows = (*positional, *(keys, backend, chunk_rows)[len(positional):])
    elif len(positional) == 2:
        embeddings = EmbeddingSet.from_arrays(embeddings, *positional)
    else:
        raise InputError(f"score() got {1 + len(positional)} positional arrays; pass score(image (N, D), label (N,), "
                         f"text (C, D), keys=...) or an EmbeddingSet")
    es = embeddings
    keys = resolve_keys(keys)
    options = score_options(es, keys, gensil_p=gensil_p, sample=sample, seed=seed, quadratic_limit=quadratic_limit,
                            logit_scale=logit_scale, baseline_sample=baseline_sample,
                            label_embeddings=label_embeddings)
    be = backend if isinstance(backend, Backend) else get_backend(backend, device)
    chunk_rows = chunk_rows or default_chunk_rows(es.d, es.image_dtype.itemsize)
    report = ScoreReport({}, es.n, es.d, es.c, be.name, str(be.device), 0.0, es.source)
    try:
        values, notes, sample_rows = evaluate(es, keys, options, be, chunk_rows, progress, on_estimate)
    except BadRowError as exc:  # rows are checked as they stream by: say which file they came from
        if not es.source or es.source.startswith("<"):
            raise
        raise BadRowError(f"{es.source}: {exc}") from exc
    said = any(REGISTRY[k].family == BASELINE for k in keys)  # the baselines note their empty classes
    report.scores, report.notes, report.sample_rows = values, class_notes(es, keys, said) + notes, sample_rows
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
    check_classes([k for k in keys if REGISTRY[k].family != BASELINE], counts, es.classnames)
    baselines = [k for k in keys if REGISTRY[k].family == BASELINE]
    if baselines:
        options.check_baselines()
        if nonempty < 2:
            raise InputError(f"the transferability baselines need at least 2 classes with rows, the embeddings have "
                             f"{nonempty}; add classes or leave {', '.join(baselines)} out of --metrics")


ONE_CLASS_SCORES = tuple(k for k, s in SCORES.items() if s.min_classes <= 1 and not s.clustering)
"""The embedding scores that are defined on a task with a single class."""


def check_classes(keys: Iterable[str], counts, classnames: Sequence[str] | None = None) -> None:
    """Refuse embedding-score keys the classes cannot support, before any pass (and, from the CLI, before any
    image is encoded). counts: (C,) rows (images) per class. A clustering score needs its `min_classes`
    classes with rows, the others that many classes; the message names the scores that work with one class."""
    counts = np.asarray(counts)
    c, nonempty, n = len(counts), int(np.count_nonzero(counts)), int(counts.sum())
    short = [k for k in keys if k in SCORES and (nonempty if SCORES[k].clustering else c) < SCORES[k].min_classes]
    if short:
        first, others = short[0], short[1:]
        also = f" (as do {', '.join(others)})" if others else ""
        names = f" ({', '.join(str(x) for x in classnames[:3])})" if classnames and c <= 3 else ""
        has = f"{c} class{'es' if c != 1 else ''}{names}" + (f", {nonempty} with rows" if nonempty != c else "")
        what = "classes with rows" if SCORES[first].clustering else "classes"
        raise InputError(f"{first} needs at least {SCORES[first].min_classes} {what}{also}; the data has "
                         f"{has}; add classes, or ask only for the scores that work with one class: "
                         f"{', '.join(ONE_CLASS_SCORES)}")
    for k in keys:
        if k in SCORES and SCORES[k].clustering:
            check_clustering(k, nonempty, n, "leave it out of --metrics")


TOP_K = 5  # zeroshot_top5


def class_notes(es: EmbeddingSet, keys: list[str], empty_said: bool = False) -> list[str]:
    """What the numbers do not show: classes without rows (unless `empty_said`: the baselines say it), and a
    top-5 accuracy that cannot miss."""
    notes = []
    empty = np.flatnonzero(np.bincount(es.label, minlength=es.c) == 0)
    if len(empty) and not empty_said:
        names = [es.classnames[i] if es.classnames else str(i) for i in empty[:5]]
        notes.append(f"{len(empty)} of {es.c} classes have no images ({', '.join(names)}"
                     f"{', …' if len(empty) > 5 else ''}): they count as classes (their texts are wrong-class texts "
                     f"for every image) but add no rows")
    if "zeroshot_top5" in keys and es.c <= TOP_K:
        notes.append(f"zeroshot_top5 is 1 by construction with {es.c} ≤ {TOP_K} classes (every class is in the "
                     f"top 5)")
    return notes


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
    accs = PassResult({name: STATISTICS[name].build(plan, 0) for name in PASS2_STATISTICS if name in passes})
    return feed(accs, es, be, chunk_rows, progress=progress, stage="pass 2")


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
