"""Scores of an embedding set kept in the store, so that `calibrate`, `finetune` and `screen` compute them once.

The key names the embedding set and the iimm version, not the backend or device: every backend
computes the same scores (to float rounding). Keys with non-default options are not kept.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ... import __version__
from .registry import resolve_keys
from .scores import score

RESULT_KIND = "zeroshot_scores"


def stored_key(set_id: str) -> dict:
    return {"format": 2, "embedding_set": set_id, "iimm_version": __version__}


def stored_scores(es, set_id: str | None, store, keys: Iterable[str] | str | None = None, *, backend: str = "auto",
                  device=None, recompute: bool = False, keep: bool = True,
                  progress: Callable[[str, int, int], None] | None = None) -> tuple[dict[str, float], bool]:
    """(scores of `keys`, whether all came from the store) for the embedding set `es` with store id `set_id`.

    Keys the store already holds for this set and version are read, the others computed (all of them when
    `recompute`) with `score()` and added to what the store keeps (unless not `keep`). Without a store or set
    id, computes.
    """
    wanted = resolve_keys(keys)
    key = stored_key(set_id) if store is not None and set_id else None
    kept = (store.get_result(RESULT_KIND, key) or {}) if key and not recompute else {}
    missing = [k for k in wanted if k not in kept]
    if not missing:
        return {k: float(kept[k]) for k in wanted}, True
    fresh = score(es, missing, backend=backend, device=device, progress=progress).scores
    if key and keep:
        store.put_result(RESULT_KIND, key, {**kept, **fresh})
    return {k: float(kept[k]) if k in kept else fresh[k] for k in wanted}, False
