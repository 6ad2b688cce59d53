"""The registry of scores by output key, and `score()`, which runs the passes they need.

Pass 1 (class sums) always runs; pass 2 streams the rows again against small matrices
only for the scores that need per-row non-linear reductions; the all-pairs scores run
in tiles (`engine.scoring.pairwise`), on a seeded sample when N exceeds the quadratic limit.
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from ... import __version__
from ...kernels import Backend, get_backend
from ..embedding.embedding_set import EmbeddingSet
from ...errors import InputError
from .registry import METRIC_GROUPS, SCORES, ScoreSpec  # noqa: F401
from .pairwise import AllPairsEstimate, all_pairs_scores
from .stats import ClassStats, SilhouetteClassStats, SilhouetteModalityStats, ZeroShotStats, silhouette_values

TARGET_CHUNK_BYTES = 128 << 20

# pass names: "class" (pass 1), "zeroshot", "silhouette_class", "modality" (pass 2), "euclidean", "gensil" (tiles)
CLUSTERING_PASSES = ("silhouette_class", "euclidean", "gensil")


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


def resolve_keys(keys: Iterable[str] | str | None) -> list[str]:
    """Validate metric keys, in registry order.

    None or "all": every embedding score of `SCORES`; "baselines": every transferability
    baseline (`engine.transfer`); "everything": both; aliases such as "ncti" expand to their parts.
    """
    from .baselines import TRANSFER_ALIASES, TRANSFER_SCORES

    if keys is None:
        keys = ["all"]
    elif isinstance(keys, str):
        keys = keys.split(",")
    keys = [k.strip() for k in keys if k.strip()]
    names = [*METRIC_GROUPS, *SCORES, *TRANSFER_SCORES, *TRANSFER_ALIASES]
    if not keys:
        raise InputError(f"no metric requested; pass --metrics all or some of: {', '.join(names)}")
    unknown = [k for k in keys if k not in names]
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hints = [f"{k!r} (did you mean {close[k][0]!r}?)" if close[k] else repr(k) for k in unknown]
        raise InputError(f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; valid keys: "
                         f"{', '.join(names)}")
    wanted: set[str] = set()
    for k in keys:
        if k in ("all", "everything"):
            wanted.update(SCORES)
        if k in ("baselines", "everything"):
            wanted.update(TRANSFER_SCORES)
        if k in SCORES or k in TRANSFER_SCORES:
            wanted.add(k)
        elif k in TRANSFER_ALIASES:
            wanted.update(TRANSFER_ALIASES[k])
    return [k for k in [*SCORES, *TRANSFER_SCORES] if k in wanted]


def default_chunk_rows(d: int, itemsize: int) -> int:
    return max(1024, TARGET_CHUNK_BYTES // max(1, d * itemsize))


def score(embeddings: EmbeddingSet, keys: Iterable[str] | str | None = None, backend: str | Backend = "auto",
          chunk_rows: int | None = None, *, device: str | None = None, gensil_p: float = 1.0,
          sample: int | None = None, seed: int = 0, quadratic_limit: int | None = None,
          logit_scale: float | None = None, baseline_sample: int | None = None, label_embeddings=None,
          progress: Callable[[str, int, int], None] | None = None,
          on_estimate: Callable[[AllPairsEstimate], None] | None = None) -> ScoreReport:
    """Compute the requested scores of an embedding set.

    embeddings: an `EmbeddingSet` (image rows (N, D), labels (N,), texts (C, D)).
    keys: output keys (see `SCORES`), None for all.
    sample: row count for the all-pairs scores (scikit-learn's `sample_size`); when None
        they use all rows up to `quadratic_limit` and a seeded sample of that size beyond
        (None: the device's default, `registry.DEFAULT_QUADRATIC_LIMIT`).
    logit_scale, baseline_sample, label_embeddings: options of the transferability baselines
        (`engine.transfer.compute_transfer`; logit_scale defaults to the model's, else 100).
    progress: called as progress(stage, rows_done, rows_total).
    on_estimate: told the expected time of the all-pairs scores before they start (`AllPairsEstimate`).
    """
    started = time.perf_counter()
    from .baselines import DEFAULT_BASELINE_SAMPLE, DEFAULT_LOGIT_SCALE, TRANSFER_SCORES, compute_transfer

    keys = resolve_keys(keys)
    transfer_keys = [k for k in keys if k in TRANSFER_SCORES]
    keys = [k for k in keys if k in SCORES]
    es = embeddings
    be = backend if isinstance(backend, Backend) else get_backend(backend, device)
    chunk_rows = chunk_rows or default_chunk_rows(es.d, es.image_dtype.itemsize)
    report = ScoreReport({}, es.n, es.d, es.c, be.name, str(be.device), 0.0, es.source)
    values: dict[str, float] = {}
    if keys:
        values.update(_embedding_scores(es, be, keys, chunk_rows, gensil_p, sample, seed, quadratic_limit, report,
                                        progress, on_estimate))
    if transfer_keys:
        scale = logit_scale or es.meta.get("logit_scale") or DEFAULT_LOGIT_SCALE
        transfer = compute_transfer(es, transfer_keys, chunk_rows=chunk_rows, logit_scale=float(scale),
                                    baseline_sample=baseline_sample or DEFAULT_BASELINE_SAMPLE, seed=seed,
                                    text_encoders=label_embeddings, progress=progress)
        values.update(transfer.scores)
        report.notes.extend(transfer.notes)
    report.scores = {k: float(values[k]) for k in [*keys, *transfer_keys]}
    for k, v in report.scores.items():
        if not math.isfinite(v):
            raise InputError(f"score {k} came out {v}; the embeddings are degenerate for it (check for "
                             f"constant or duplicated rows)")
    report.seconds = time.perf_counter() - started
    return report


def _embedding_scores(es: EmbeddingSet, be: Backend, keys: list[str], chunk_rows: int, gensil_p: float,
                      sample: int | None, seed: int, quadratic_limit: int | None, report: ScoreReport,
                      progress=None, on_estimate=None) -> dict[str, float]:
    _check_classes(es, keys)
    passes = {p for k in keys for p in SCORES[k].passes}
    text = torch.as_tensor(es.text, dtype=torch.float64, device=be.device)
    class_stats = run_pass1(es, be, chunk_rows, progress)
    pass2 = run_pass2(es, be, chunk_rows, passes, class_stats, text, progress)
    values = finalize_linear(class_stats, text, pass2)
    quadratic = [k for k in keys if SCORES[k].quadratic]
    if quadratic:
        pair_values, rows, notes = all_pairs_scores(es, be, quadratic, gensil_p=gensil_p, sample=sample, seed=seed,
                                                    quadratic_limit=quadratic_limit, on_estimate=on_estimate,
                                                    progress=progress)
        values.update(pair_values)
        report.notes += notes
        if rows < es.n:
            report.sample_rows.update({key: rows for key in quadratic})
    return values


def _check_classes(es: EmbeddingSet, keys: list[str]) -> None:
    nonempty = int(np.count_nonzero(np.bincount(es.label, minlength=es.c)))
    for k in keys:
        clustering = "class" in SCORES[k].passes and SCORES[k].passes[-1] in CLUSTERING_PASSES
        have = nonempty if clustering else es.c
        if have < SCORES[k].min_classes:
            what = "classes with rows" if clustering else "classes"
            raise InputError(f"{k} needs at least {SCORES[k].min_classes} {what}, the embeddings have {have}; "
                             f"add classes or leave {k} out of --metrics")
        if clustering:
            check_clustering(k, nonempty, es.n, "leave it out of --metrics")


def check_clustering(key: str, classes: int, rows: int, fix: str) -> None:
    """A silhouette needs 2 ≤ classes with rows ≤ rows − 1 (scikit-learn's rule)."""
    if not 2 <= classes <= rows - 1:
        raise InputError(f"{key} needs 2 ≤ classes ≤ rows − 1, got {classes} classes with rows over {rows} "
                         f"rows; {fix}")


def run_pass1(es: EmbeddingSet, be: Backend, chunk_rows: int, progress=None) -> ClassStats:
    stats = ClassStats(es.c, es.d, be.device)
    for start, rows, labels in es.iter_chunks(chunk_rows):
        stats.update(be, start, rows, labels)
        if progress:
            progress("pass 1", start + len(rows), es.n)
    return stats


def run_pass2(es: EmbeddingSet, be: Backend, chunk_rows: int, passes: set[str], class_stats: ClassStats,
              text: torch.Tensor, progress=None) -> dict:
    """One read of the rows feeding every pass-2 accumulator that `passes` names.

    class_stats: pass-1 statistics of the whole set (merged over shards when `es` is one shard).
    """
    acc: dict = {}
    if "zeroshot" in passes:
        acc["zeroshot"] = ZeroShotStats(es.c, be.device)
    if "silhouette_class" in passes:
        acc["silhouette_class"] = SilhouetteClassStats(be.device)
    if "modality" in passes:
        acc["modality"] = SilhouetteModalityStats(be.device)
    if not acc:
        return acc
    total, n_total = class_stats.sums.sum(0), class_stats.n  # of all rows, when `es` is one shard of many
    text_sum = text.sum(0)
    for start, rows, labels in es.iter_chunks(chunk_rows):
        rows, labels = be.tensor(rows), be.tensor(labels)  # one copy to the device for every statistic
        if "zeroshot" in acc:
            acc["zeroshot"].update(be, start, rows, labels, text)
        if "silhouette_class" in acc:
            acc["silhouette_class"].update(be, start, rows, labels, class_stats)
        if "modality" in acc:
            acc["modality"].update(be, start, rows, labels, total, text_sum, n_total, es.c)
        if progress:
            progress("pass 2", start + len(rows), es.n)
    return acc


def finalize_linear(stats: ClassStats, text: torch.Tensor, pass2: dict) -> dict[str, float]:
    """Every non-quadratic score from pass-1 sums (C, D) and the pass-2 accumulators, in float64."""
    sums = stats.sums.double().cpu()
    counts = stats.counts.cpu()
    t = text.double().cpu()
    n, c = int(counts.sum()), t.shape[0]
    total, text_sum = sums.sum(0), t.sum(0)
    correct = float((sums * t).sum())
    intra = (float(total @ total) - float(stats.sq_norm_sum)) / (n * (n - 1))
    out: dict[str, float] = {"iimm_intra_image": intra, "acs": correct / n,
                             "gap": float(torch.linalg.vector_norm(total / n - text_sum / c))}
    if c >= 2:
        inter = (float(total @ text_sum) - correct) / (n * (c - 1))
        out["iimm_inter_modal"] = inter
        out["iimm"] = 0.5 * (intra + inter)
        rest = n - counts.double()
        per_class = ((total.unsqueeze(0) - sums) * t).sum(1) / rest.clamp_min(1.0)
        out["uniformity_text"] = float(per_class[rest > 0].mean())
        out["inter_text"] = (float(text_sum @ text_sum) - float(t.square().sum())) / (c * (c - 1))
    if "zeroshot" in pass2:
        zs = pass2["zeroshot"]
        top1, top5 = zs.top1.cpu().double(), zs.top5.cpu().double()
        present = counts > 0
        out["zeroshot_top1"] = float(top1.sum()) / n
        out["zeroshot_top5"] = float(top5.sum()) / n
        out["zeroshot_balanced"] = float((top1[present] / counts[present].double()).mean())
    if "silhouette_class" in pass2:
        out["silhouette_class"] = float(pass2["silhouette_class"].s_sum) / n
    if "modality" in pass2:
        out["silhouette_modality"] = _silhouette_modality(pass2["modality"], t, total, n)
    return out


def _silhouette_modality(acc: SilhouetteModalityStats, t: torch.Tensor, total: torch.Tensor, n: int) -> float:
    c = t.shape[0]
    text_s = torch.zeros(c, dtype=torch.float64)
    if c > 1:
        own = t @ t.sum(0)
        a = ((c - 1.0) - (own - t.square().sum(1))) / (c - 1.0)
        b = 1.0 - (t @ total) / n
        text_s = silhouette_values(a, b, torch.full_like(a, float(c)))
    return (float(acc.s_sum) + float(text_s.sum())) / (n + c)
