"""Transferability baselines: the model-selection scores IIMM is compared against.

`compute_transfer(es, keys)` computes any of `TRANSFER_SCORES` on an `EmbeddingSet` with the
same registry and pass driver as `score()` (which accepts these keys too), sharing streamed
passes between the requested keys:

- pass 1: `GramStats` (class sums, counts, per-class variances, and the D×D global scatter only
  for the keys that need it) and the zero-shot joint of LEEP/NCE; LogME (N ≥ D), H-Score, GBC,
  NCE and EMMS finish from it;
- pass 2: LEEP's log-likelihood, SFDA's ConfMix statistics, the first group of TransRate's
  per-class Gram matrices; pass 3: SFDA's refit probabilities, the next TransRate group; one
  more pass per further group (groups hold as many D×D class Grams as `gram_budget_bytes` allows).
- in memory on a seeded row sample of at most `baseline_sample` rows: NCTI (it needs rows),
  and LogME when N < D (the N×N Gram FFᵀ).

Rows are L2-normalised in float64 first; only classes that have rows take part (K ≥ 2).
No score writes to the caller's arrays. The formulas and the reference code each follows
are in `baseline_formulas`.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from ...kernels import get_backend
from ..embedding.embedding_set import EmbeddingSet
from .options import (DEFAULT_BASELINE_SAMPLE, DEFAULT_CHUNK_ROWS, DEFAULT_GRAM_BUDGET_BYTES, DEFAULT_LOGIT_SCALE,
                      ScoreOptions, check_label_sets)
from .registry import ALIASES, TRANSFER_SCORES, resolve_keys  # noqa: F401 - TRANSFER_SCORES is this module's too

NCTI_PARTS = ALIASES["ncti"]


class TransferResult(NamedTuple):
    """scores: output key -> float; notes: one line each on samples and conventions used."""

    scores: dict[str, float]
    notes: list[str]


def resolve_transfer_keys(keys: Iterable[str] | str | None) -> list[str]:
    """None or "all" -> every baseline; aliases ("ncti", "gbc") expand; unknown keys are an InputError."""
    return resolve_keys(keys, scope="baselines")


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
    from .scores import evaluate

    keys = resolve_transfer_keys(keys)
    options = ScoreOptions(seed=seed, logit_scale=float(logit_scale), baseline_sample=baseline_sample,
                           label_sets=check_label_sets(text_encoders, es.c, es.d),
                           gram_budget_bytes=gram_budget_bytes)
    values, notes, _ = evaluate(es, keys, options, get_backend("torch", "cpu"), chunk_rows, progress)
    return TransferResult(values, notes)


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
