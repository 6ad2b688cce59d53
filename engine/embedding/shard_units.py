"""Embedding one store shard per unit of work, for `embed_dataset(..., executor=ray)`.

A worker encodes the items of its shard with the ordinary encoding loop, writes the shard's
`image-NNNNN.npy` / `label-NNNNN.npy` atomically, and then, last, a done-marker
`done-NNNNN.json` (rows, skipped paths, the set's image fingerprint, each file's size and sha256). Workers never touch
the SQLite registry: the driver records each finished shard from its marker (SQLite locks do
not work across hosts or on network filesystems). A shard whose marker is there is not
encoded again, so a rerun resumes; names are deterministic and writes idempotent, so a
retried or duplicated shard is harmless. Each worker process loads the model once and keeps
it for every shard it is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..distributed import Executor, UnitFailure, map_units, model_task_resources, ray_get, ray_put
from ..files import write_json_atomic
from .models import ModelPool, ModelSpec
from .store import shard_name, write_shard

_WORKER_MODELS = ModelPool()  # per worker process: the model loads once for all the shards it encodes


def marker_name(idx: int) -> str:
    return f"done-{idx:05d}.json"


def read_marker(folder: Path, idx: int, fingerprint: str) -> dict | None:
    """A shard's done-marker when it and the shard's files are there and it is of this image fingerprint."""
    path = folder / marker_name(idx)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != fingerprint:
        return None
    if not ((folder / shard_name("image", idx)).exists() and (folder / shard_name("label", idx)).exists()):
        return None
    return marker


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to encode shards of one embedding set (shipped once, not per shard).

    dataset: the `ImageDataset`, or a Ray reference to it (put in the object store once).
    """

    spec: ModelSpec
    dataset: Any
    templates: tuple[str, ...]
    dtype: str
    batch_size: int
    workers: int
    device: str
    max_skip_frac: float
    shard_rows: int
    dim: int
    folder: str
    fingerprint: str

    def __call__(self, idx: int) -> dict:
        """Encode shard `idx` unless its marker exists; returns the marker plus {"encoded": bool}."""
        folder = Path(self.folder)
        marker = read_marker(folder, idx, self.fingerprint)
        if marker is not None:
            return {**marker, "encoded": False}
        from .extract import _Run

        ds = ray_get(self.dataset)
        run = _Run(self.spec, ds, list(self.templates), self.dtype, self.batch_size, self.workers, self.device,
                   self.max_skip_frac, None, _WORKER_MODELS)
        written: list[dict] = []

        def write(shard, rows, labels, skipped):
            files = write_shard(folder, shard, rows, labels)  # sizes and sha256s, for the driver to record
            marker = {"shard": shard, "rows": len(rows), "skipped": list(skipped), "fingerprint": self.fingerprint,
                      "files": files}
            write_json_atomic(folder / marker_name(shard), marker)  # last: the shard is done
            written.append(marker)

        run.encode([idx], self.shard_rows, self.dim, write, [])
        return {**written[0], "encoded": True}


def encode_shards(job: ShardJob, shards: list[int], executor: Executor,
                  record: Callable[[dict], None]) -> list[UnitFailure]:
    """Run `job` on every shard; `record(marker)` on the driver as each one finishes. Returns the failures."""
    if executor.is_ray:
        job = _with_dataset_ref(job, executor)
    resources = model_task_resources(executor, job.device, max(1, job.workers)) if executor.is_ray else None
    results = map_units(job, shards, executor, resources=resources,
                        on_result=lambda i, marker: record(marker))
    return [r for r in results if isinstance(r, UnitFailure)]


def _with_dataset_ref(job: ShardJob, executor: Executor) -> ShardJob:
    from dataclasses import replace
    return replace(job, dataset=ray_put(job.dataset, executor))
