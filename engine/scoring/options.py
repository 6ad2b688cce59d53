"""The options every score reads, with their defaults, in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError

# Default --quadratic-limit by device type: the all-pairs pass of the default `iimm score` takes
# seconds on a 2-core CPU (engine.scoring.pairwise) and on one GPU.
DEFAULT_QUADRATIC_LIMIT = {"cpu": 20_000, "cuda": 100_000}
DEFAULT_LOGIT_SCALE = 100.0
DEFAULT_BASELINE_SAMPLE = 50_000
DEFAULT_CHUNK_ROWS = 16_384
DEFAULT_GRAM_BUDGET_BYTES = 1 << 30
TARGET_CHUNK_BYTES = 128 << 20


@dataclass(frozen=True)
class ScoreOptions:
    """gensil_p: exponent of gensil's power mean; sample / quadratic_limit (None: the device's default) /
    seed: the all-pairs row sample;
    logit_scale: temperature of LEEP/NCE's zero-shot source classifier; baseline_sample: row cap of the
    in-memory baselines (NCTI; LogME when N < D), drawn with `seed`; label_sets: extra (C, D) label
    embeddings for EMMS; gram_budget_bytes: memory for TransRate's per-class D×D Grams."""

    gensil_p: float = 1.0
    sample: int | None = None
    seed: int = 0
    quadratic_limit: int | None = None
    logit_scale: float = DEFAULT_LOGIT_SCALE
    baseline_sample: int = DEFAULT_BASELINE_SAMPLE
    label_sets: tuple[np.ndarray, ...] = field(default=(), repr=False)
    gram_budget_bytes: int = DEFAULT_GRAM_BUDGET_BYTES

    def check_baselines(self) -> None:
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise InputError(f"logit scale must be a positive number, got {self.logit_scale}; pass e.g. "
                             f"--logit-scale 100")
        if self.baseline_sample < 2:
            raise InputError(f"--baseline-sample must be at least 2 rows, got {self.baseline_sample}")
        if self.gram_budget_bytes < 1:
            raise InputError(f"the Gram memory budget must be positive, got {self.gram_budget_bytes} bytes")


def default_chunk_rows(d: int, itemsize: int) -> int:
    return max(1024, TARGET_CHUNK_BYTES // max(1, d * itemsize))


def check_label_sets(text_encoders, c: int, d: int) -> tuple[np.ndarray, ...]:
    """EMMS's extra label embeddings, each (C, D) finite float64."""
    extra = []
    for i, emb in enumerate(text_encoders or []):
        arr = np.asarray(emb, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != c:
            raise InputError(f"EMMS label embeddings #{i + 1} have shape {arr.shape}; give one row per class, "
                             f"({c}, {d})")
        if arr.shape[1] != d:
            raise InputError(f"EMMS label embeddings #{i + 1} are {arr.shape[1]} wide but the model's text embeddings "
                             f"are {d}; EMMS stacks label embeddings of one width: project them to {d} first")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"EMMS label embeddings #{i + 1} have NaN or Inf values; recompute them")
        extra.append(arr)
    return tuple(extra)
