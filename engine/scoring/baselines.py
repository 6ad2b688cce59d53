"""Transferability baselines: the model-selection scores IIMM is compared against.

`compute_transfer(es, keys)` computes any of `TRANSFER_SCORES` on an `EmbeddingSet`,
sharing streamed passes over the rows between the requested keys:

- pass 1 (unless only NCTI is asked for): `GramStats` (class sums, counts, per-class variances,
  and the D×D global scatter only for the keys that need it) and the zero-shot joint of
  LEEP/NCE; LogME (N ≥ D), H-Score, GBC, NCE and EMMS finish here;
- pass 2: LEEP's log-likelihood, SFDA's ConfMix statistics, the first group of TransRate's
  per-class Gram matrices; pass 3: SFDA's refit probabilities, the next TransRate group; one
  more pass per further group (groups hold as many D×D class Grams as `gram_budget_bytes` allows).
- in memory on a seeded row sample of at most `baseline_sample` rows: NCTI (it needs rows),
  and LogME when N < D (the N×N Gram FFᵀ).

Rows are L2-normalised in float64 first; only classes that have rows take part (K ≥ 2).
No score writes to the caller's arrays. The formulas and the reference code each follows
are in `transfer_formulas`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from ..embedding.embedding_set import EmbeddingSet
from ...errors import InputError
from .registry import DEFAULT_BASELINE_SAMPLE, TRANSFER_ALIASES, TRANSFER_SCORES, TransferScore  # noqa: F401
from .baseline_formulas import (emms, gbc, hscore, leep_conditional, logme_rows, logme_streamed,
                                ncti_parts, nce, sfda_classifier, sfda_other_means, transrate)
from .baseline_stats import (Chunk, ClassScatterStats, GramStats, LeepSum, ZeroShotJointStats, normalise_rows,
                             softmax, stream_rows)

DEFAULT_LOGIT_SCALE = 100.0
DEFAULT_CHUNK_ROWS = 16_384
DEFAULT_GRAM_BUDGET_BYTES = 1 << 30


NCTI_PARTS = TRANSFER_ALIASES["ncti"]
SCATTER_KEYS = {"hscore", "sfda", "transrate", "emms"}          # need the D×D scatter of pass 1
PASS1_KEYS = {"leep", "nce", "gbc_spherical", "gbc_diagonal"}    # need pass 1 without the scatter


class TransferResult(NamedTuple):
    """scores: output key -> float; notes: one line each on samples and conventions used."""

    scores: dict[str, float]
    notes: list[str]


def resolve_transfer_keys(keys: Iterable[str] | str | None) -> list[str]:
    """None or "all" -> every key; aliases ("ncti", "gbc") expand; unknown keys are an InputError."""
    if keys is None or keys == "all":
        return list(TRANSFER_SCORES)
    if isinstance(keys, str):
        keys = keys.split(",")
    wanted: set[str] = set()
    for key in (k.strip() for k in keys):
        if not key:
            continue
        if key not in TRANSFER_SCORES and key not in TRANSFER_ALIASES:
            valid = ", ".join([*TRANSFER_SCORES, *TRANSFER_ALIASES])
            raise InputError(f"unknown baseline {key!r}; valid keys: {valid}")
        wanted.update(TRANSFER_ALIASES.get(key, (key,)))
    if not wanted:
        raise InputError(f"no baseline requested; pass some of: {', '.join(TRANSFER_SCORES)}")
    return [k for k in TRANSFER_SCORES if k in wanted]


def compute_transfer(es: EmbeddingSet, keys: Iterable[str] | str | None = None, *,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, logit_scale: float = DEFAULT_LOGIT_SCALE,
                     baseline_sample: int = DEFAULT_BASELINE_SAMPLE, seed: int = 0,
                     text_encoders: Sequence[np.ndarray] | None = None,
                     gram_budget_bytes: int = DEFAULT_GRAM_BUDGET_BYTES,
                     progress: Callable[[str, int, int], None] | None = None) -> TransferResult:
    """Compute the requested baselines of an embedding set in shared streamed passes.

    es: image rows (N, D), labels (N,), class texts (C, D).
    logit_scale: temperature of the zero-shot source classifier of LEEP/NCE (the model's
        own; 100 for CLIP-style models when scoring bare embeddings).
    baseline_sample: row cap for the in-memory parts (NCTI; LogME when N < D), drawn with `seed`.
    text_encoders: extra label embeddings for EMMS, each (C, L) with L = D, one per encoder;
        the model's own class texts `es.text` are always the first.
    gram_budget_bytes: memory for TransRate's per-class D×D Grams; more classes cost more passes.
    progress: called as progress(stage, rows_done, rows_total).
    """
    keys = resolve_transfer_keys(keys)
    _check_options(es, logit_scale, baseline_sample, gram_budget_bytes)
    counts = np.bincount(es.label, minlength=es.c)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise InputError(f"the transferability baselines need at least 2 classes with rows, the embeddings have "
                         f"{len(present)}; add classes or leave {', '.join(keys)} out of --metrics")
    label_sets = [es.text] + _check_label_sets(text_encoders, es)
    wanted = set(keys)
    notes: list[str] = []
    if len(present) < es.c:
        notes.append(f"baselines: {es.c - len(present)} class(es) without rows are left out (K = {len(present)})")
    scores: dict[str, float] = {}

    streamed_logme = es.n >= es.d
    needs_scatter = bool(wanted & SCATTER_KEYS) or ("logme" in wanted and streamed_logme)
    needs_pass1 = needs_scatter or bool(wanted & PASS1_KEYS)
    gram = GramStats(es.c, es.d, with_scatter=needs_scatter)
    joint = ZeroShotJointStats(es.text, logit_scale)
    if needs_pass1:
        stream_rows(es, chunk_rows, [gram.update] + ([joint.update] if wanted & {"leep", "nce"} else []),
                    "baselines pass 1", progress)
    if "logme" in wanted and streamed_logme:
        scores["logme"] = logme_streamed(gram, present)
    if "hscore" in wanted:
        scores["hscore"] = hscore(gram, present)
    for kind in ("spherical", "diagonal"):
        if f"gbc_{kind}" in wanted:
            scores[f"gbc_{kind}"] = gbc(gram, present, kind)
    if "nce" in wanted:
        scores["nce"] = nce(joint)
    if "emms" in wanted:
        scores["emms"] = emms(gram, present, label_sets)
    if wanted & {"leep", "nce"}:
        notes.append(f"leep, nce: source classifier = zero-shot softmax(logit_scale · cos) over the {es.c} class "
                     f"prompts, logit_scale = {logit_scale:g}")

    later_passes = _plan_later_passes(es, gram, joint, present, wanted, gram_budget_bytes)
    for number, consumers in enumerate(later_passes.consumers, start=2):
        stream_rows(es, chunk_rows, consumers, f"baselines pass {number}", progress)
    scores.update(later_passes.finish())
    if later_passes.transrate_groups and len(later_passes.transrate_groups) > 1:
        notes.append(f"transrate: per-class Gram matrices in {len(later_passes.transrate_groups)} groups "
                     f"(one pass each) to stay within {gram_budget_bytes >> 20} MiB")

    if wanted & set(NCTI_PARTS) or ("logme" in wanted and not streamed_logme):
        scores.update(_in_memory_scores(es, wanted, baseline_sample, seed, streamed_logme, notes))

    out = {k: float(scores[k]) for k in keys}
    for key, value in out.items():
        if not math.isfinite(value):
            raise InputError(f"baseline {key} came out {value}; the embeddings are degenerate for it (check for "
                             f"constant or duplicated rows) — leave {key} out of --metrics")
    return TransferResult(out, notes)


def combine_ncti(parts_by_model: dict[str, dict[str, float]]) -> dict[str, float]:
    """NCTI of each model from its raw parts, min–max normalised across the models scored together.

    parts_by_model: model -> {"ncti_sc", "ncti_cls", "ncti_nc"} (as `compute_transfer` reports).
    NCTI = norm(sc) + norm(cls) − norm(nc), as BUserName/NCTI combines them. A part that is
    equal for every model carries no ranking information and normalises to 0 (the reference
    divides by zero there).
    """
    if len(parts_by_model) < 2:
        raise InputError(f"NCTI normalises its parts across models and needs at least 2, got "
                         f"{len(parts_by_model)}; score several models on the same task together")
    for model, parts in parts_by_model.items():
        missing = [p for p in NCTI_PARTS if p not in parts]
        if missing:
            raise InputError(f"model {model!r} lacks the NCTI part(s) {', '.join(missing)}; score it with "
                             f"--metrics ncti")
    normalised: dict[str, dict[str, float]] = {m: {} for m in parts_by_model}
    for part in NCTI_PARTS:
        values = np.array([float(parts_by_model[m][part]) for m in parts_by_model])
        if not np.all(np.isfinite(values)):
            raise InputError(f"NCTI part {part} is not finite for some model; re-score the models")
        span = values.max() - values.min()
        for m, v in zip(parts_by_model, values):
            normalised[m][part] = float((v - values.min()) / span) if span > 0 else 0.0
    return {m: p["ncti_sc"] + p["ncti_cls"] - p["ncti_nc"] for m, p in normalised.items()}


# --- passes 2+ ---------------------------------------------------------------------------------

class _LaterPasses:
    """The consumers of passes 2, 3, … and how their statistics become scores."""

    def __init__(self):
        self.consumers: list[list[Callable[[Chunk], None]]] = []
        self.transrate_groups: list[ClassScatterStats] = []
        self.finishers: list[Callable[[], dict[str, float]]] = []

    def add(self, pass_index: int, consumer: Callable[[Chunk], None]) -> None:
        while len(self.consumers) <= pass_index:
            self.consumers.append([])
        self.consumers[pass_index].append(consumer)

    def finish(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for finisher in self.finishers:
            out.update(finisher())
        return out


def _plan_later_passes(es: EmbeddingSet, gram: GramStats, joint: ZeroShotJointStats, present: np.ndarray,
                       wanted: set[str], gram_budget_bytes: int) -> _LaterPasses:
    plan = _LaterPasses()
    if "leep" in wanted:
        leep = LeepSum(joint, leep_conditional(joint))
        plan.add(0, leep.update)
        plan.finishers.append(lambda: {"leep": float(leep.log_sum / leep.rows)})
    if "sfda" in wanted:
        sfda = _SfdaPasses(gram, present)
        plan.add(0, sfda.update_mixed_stats)
        plan.add(1, sfda.update_probability)
        plan.finishers.append(lambda: {"sfda": sfda.score()})
    if "transrate" in wanted:
        per_group = max(1, gram_budget_bytes // (8 * es.d * es.d))
        center = gram.mean
        plan.transrate_groups = [ClassScatterStats(present[lo:lo + per_group], center)
                                 for lo in range(0, len(present), per_group)]
        for index, group in enumerate(plan.transrate_groups):
            plan.add(index, group.update)
        plan.finishers.append(lambda: {"transrate": transrate(gram, plan.transrate_groups)})
    return plan


class _SfdaPasses:
    """SFDA in two more passes: ConfMix statistics of the mixed rows, then the refit's probabilities.

    Pass 2 refits nothing: it maps each row x to x' = p·x + (1 − p)·m̄_y (p: the softened
    first-fit probability of the true class, m̄_y: mean of the other classes' means) and
    accumulates GramStats of x'. Pass 3 recomputes x' and sums the refit's true-class
    probability. The caller's rows are never written (the reference overwrites them).
    """

    def __init__(self, gram: GramStats, present: np.ndarray):
        self.present = present
        self.compact = np.full(gram.count.shape[0], -1, dtype=np.int64)
        self.compact[present] = np.arange(len(present))
        self.coef, self.intercept, self.shrinkage = sfda_classifier(gram, present)
        self.other_means = sfda_other_means(gram, present)
        self.mixed = GramStats(gram.count.shape[0], gram.class_sum.shape[1])
        self.refit: tuple[np.ndarray, np.ndarray] | None = None
        self.true_prob_sum, self.rows = 0.0, 0

    def _mixed_rows(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        y = self.compact[chunk.labels]
        prob = softmax(chunk.x @ self.coef.T + self.intercept)
        soft = softmax(prob)
        p = soft[np.arange(len(y)), y][:, None]
        return p * chunk.x + (1.0 - p) * self.other_means[y], y

    def update_mixed_stats(self, chunk: Chunk) -> None:
        mixed, _ = self._mixed_rows(chunk)
        self.mixed.update(Chunk(mixed, chunk.labels, chunk.start, chunk._onehot))  # same labels: same one-hot

    def update_probability(self, chunk: Chunk) -> None:
        if self.refit is None:
            coef, intercept, _ = sfda_classifier(self.mixed, self.present, self.shrinkage)
            self.refit = (coef, intercept)
        mixed, y = self._mixed_rows(chunk)
        prob = softmax(mixed @ self.refit[0].T + self.refit[1])
        self.true_prob_sum += float(prob[np.arange(len(y)), y].sum())
        self.rows += len(y)

    def score(self) -> float:
        return self.true_prob_sum / self.rows


# --- in-memory parts ---------------------------------------------------------------------------

def _in_memory_scores(es: EmbeddingSet, wanted: set[str], baseline_sample: int, seed: int, streamed_logme: bool,
                      notes: list[str]) -> dict[str, float]:
    sub = es.sample(baseline_sample, seed)
    names = sorted(k for k in wanted if k in NCTI_PARTS or (k == "logme" and not streamed_logme))
    if sub.n < es.n:
        notes.append(f"{', '.join(names)}: in memory on a seeded sample of {sub.n} of {es.n} rows (seed {seed}); "
                     f"raise --baseline-sample to use more")
    x = normalise_rows(np.concatenate(sub.image_blocks), 0) if len(sub.image_blocks) > 1 else \
        normalise_rows(sub.image_blocks[0], 0)
    present, labels = np.unique(sub.label, return_inverse=True)
    if len(present) < 2:
        raise InputError(f"the sample of {sub.n} rows has {len(present)} class; {', '.join(names)} need at least "
                         f"2: raise --baseline-sample")
    out: dict[str, float] = {}
    if "logme" in wanted and not streamed_logme:
        notes.append(f"logme: N = {es.n} < D = {es.d}, evidence from the N×N Gram FFᵀ of the rows")
        out["logme"] = logme_rows(x, labels, len(present))
    if wanted & set(NCTI_PARTS):
        notes.append("ncti_sc, ncti_cls, ncti_nc: raw NCTI parts; NCTI itself needs several models "
                     "(combine_ncti min–max normalises each part across them)")
        out.update({k: v for k, v in ncti_parts(x, labels, len(present)).items() if k in wanted})
    return out


def _check_options(es: EmbeddingSet, logit_scale: float, baseline_sample: int, gram_budget_bytes: int) -> None:
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise InputError(f"logit scale must be a positive number, got {logit_scale}; pass e.g. --logit-scale 100")
    if baseline_sample < 2:
        raise InputError(f"--baseline-sample must be at least 2 rows, got {baseline_sample}")
    if gram_budget_bytes < 1:
        raise InputError(f"the Gram memory budget must be positive, got {gram_budget_bytes} bytes")


def _check_label_sets(text_encoders: Sequence[np.ndarray] | None, es: EmbeddingSet) -> list[np.ndarray]:
    extra = []
    for i, emb in enumerate(text_encoders or []):
        arr = np.asarray(emb, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != es.c:
            raise InputError(f"EMMS label embeddings #{i + 1} have shape {arr.shape}; give one row per class, "
                             f"({es.c}, {es.d})")
        if arr.shape[1] != es.d:
            raise InputError(f"EMMS label embeddings #{i + 1} are {arr.shape[1]} wide but the model's text embeddings "
                             f"are {es.d}; EMMS stacks label embeddings of one width: project them to {es.d} first")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"EMMS label embeddings #{i + 1} have NaN or Inf values; recompute them")
        extra.append(arr)
    return extra
