"""From images to embeddings: the batched encoding loop, resumable into the embedded store.

`embed_dataset(model, data)` returns the task's `EmbeddingSet` (raw image embeddings,
labels, the class prompt-ensemble text embeddings) and an `EmbedInfo`. With the store,
rows are written in shards of `shard_rows` dataset items; a run that is interrupted
resumes from its finished shards, and a second run over the same inputs encodes
nothing. Order is the dataset's order whatever the number of workers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .data import ImageDataset, collate_skipping, load_image_dataset
from .prompts import resolve_templates
from .embedding_set import EmbeddingSet
from .loaders import load_embeddings
from ...errors import InputError
from .models import (LoadedModel, ModelPool, ModelSpec, class_text_embeddings, encode_dtype, encode_images,
                     load_model, resolve_device, resolve_model)
from ..files import write_json_atomic, write_npy_atomic
from ..distributed import LOCAL, all_or_raise, as_executor
from ..hashing import hash_json
from .store import DEFAULT_SHARD_ROWS, ID_CHARS, SHARD_KINDS, Store, open_store, shard_name, write_shard

STORE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
STAGE = "encoding images"
Progress = Callable[[str, int, int], None]


def default_workers() -> int:
    """DataLoader workers: one core left to the model, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class EmbedInfo:
    """What an embedding run did.

    Attributes:
        images: rows in the embedding set (readable images).
        skipped: paths of the images that could not be decoded.
        cached: True when no image was encoded by this run.
        location: the embeddings folder in the store, or None without the store.
        encoded: images encoded by this run (0 on a cache hit).
        data: the data as given; data_path: the same as an absolute path when it is on disk.
    """

    model: str
    pretrained: str | None
    data: str
    images: int
    skipped: list[str]
    cached: bool
    location: str | None
    encoded: int = 0
    set_id: str | None = None
    seconds: float = 0.0
    meta: dict = field(default_factory=dict, repr=False)
    data_path: str | None = None


def embed_dataset(model: str | ModelSpec, data, *, pretrained: str | None = None, templates=None, template_file=None,
                  template_set: str | None = None, classnames=None, split: str | None = None,
                  domain: str | None = None, label_key: str | None = None, batch_size: int = 64, workers: int | None = None,
                  device: str | torch.device = "auto", dtype: str = "fp16", store=None, use_cache: bool = True,
                  max_skip_frac: float = 0.05, shard_rows: int = DEFAULT_SHARD_ROWS,
                  progress: Progress | None = None,
                  models: ModelPool | None = None, executor=None) -> tuple[EmbeddingSet, EmbedInfo]:
    """Encode a labelled image dataset with a model; reuse the store's embeddings when they exist.

    model: a model name (see `resolve_model`), or the `ModelSpec` a caller already resolved (then
        `pretrained` is ignored).
    data: anything `load_image_dataset` reads (a class-per-folder tree, a .csv/.jsonl manifest, webdataset
        shards, NAME@ROOT, wilds:NAME@ROOT), or an `ImageDataset`. Without prompts given, the dataset's
        own templates (CLIP_benchmark, benchmarks by name) are used.
    store: None (the default store root), a path, or a `Store`; ignored when use_cache is False.
    dtype: "fp16" or "fp32", how image rows are kept.
    models: a `ModelPool` the model is taken from (and kept in) when images must be encoded, so that
        many datasets share one load; None loads it for this call only.
    executor: None or "local" encodes here in one loop; "ray" (or an `engine.distributed.Executor`)
        encodes one store shard per task on a Ray cluster (see `shard_units`); it needs the store.
    """
    t0 = time.perf_counter()
    _check_options(batch_size, workers, dtype, max_skip_frac, shard_rows)
    executor = as_executor(executor)
    workers = (0 if executor.is_ray else default_workers()) if workers is None else workers
    ds = data if isinstance(data, ImageDataset) else load_image_dataset(data, classnames, split, domain, label_key)
    prompts = ds.prompts(templates, template_file, template_set)
    if executor.is_ray and not use_cache:
        raise InputError("--executor ray writes shard files into the store; drop --no-cache")
    st = open_store(store) if use_cache else None
    spec = model if isinstance(model, ModelSpec) else resolve_model(model, pretrained,
                                                                    hash_memo=st.hash_memo() if st else None)
    run = _Run(spec, ds, prompts, dtype, batch_size, workers, device, max_skip_frac, progress, models)
    run.executor = executor
    if st is None:
        es, info = run.in_memory(shard_rows)
    else:
        es, info = run.into_store(st, shard_rows)
    info.seconds = time.perf_counter() - t0
    return es, info


def stored_embeddings(model: ModelSpec, data, *, templates=None, template_file=None, template_set: str | None = None,
                      classnames=None, split: str | None = None, domain: str | None = None, dtype: str = "fp16",
                      device: str | torch.device = "auto", store=None) -> tuple[int, bool]:
    """(items in the dataset, whether `embed_dataset` with these arguments would find its set complete in the
    store and encode nothing): how a scheduler sizes a cell and tells encoding work from scoring work."""
    ds = data if isinstance(data, ImageDataset) else load_image_dataset(data, classnames, split, domain)
    run = _Run(model, ds, ds.prompts(templates, template_file, template_set), dtype, 1, 0, device, 1.0, None, None)
    row = open_store(store).get_set(run.keys()[2])
    return len(ds), row is not None and row["status"] == "complete"


class ClassTextEncoder:
    """names (C,) -> (C, D) float64 unit prompt-ensemble class texts of a model, for image embeddings made
    elsewhere (say by clip-retrieval) with the same model. The model loads on the first call; `meta` then
    holds its name, prompts, logit_scale and logit_bias (LEEP and NCE use the scale)."""

    def __init__(self, spec: ModelSpec, templates: list[str], device: str | torch.device = "auto"):
        self.spec, self.templates, self.device = spec, templates, device
        self.meta: dict = {}

    def __call__(self, classnames: list[str]) -> np.ndarray:
        lm = load_model(self.spec.name, device=self.device, spec=self.spec)
        self.meta = {"model": self.spec.name, "pretrained": self.spec.pretrained, "templates": self.templates,
                     "logit_scale": lm.logit_scale, "logit_bias": lm.logit_bias}
        return class_text_embeddings(lm, list(classnames), self.templates).double().cpu().numpy()


def class_text_encoder(model: str, *, pretrained: str | None = None, templates=None, template_file=None,
                       template_set: str | None = None, device: str | torch.device = "auto",
                       store=None) -> ClassTextEncoder:
    """The `ClassTextEncoder` of `model` with these prompts.

    store: where weight hashes are memoised (None: the default store; False: hash afresh).
    """
    prompts = resolve_templates(templates, template_file, template_set)
    spec = resolve_model(model, pretrained, hash_memo=None if store is False else open_store(store).hash_memo())
    return ClassTextEncoder(spec, prompts, device)


class _Run:
    """One embedding job: keys, model loading on demand, the encoding loop and its sinks."""

    def __init__(self, spec: ModelSpec, ds: ImageDataset, templates: list[str], dtype: str, batch_size: int,
                 workers: int, device, max_skip_frac: float, progress: Progress | None, models: ModelPool | None):
        self.spec, self.ds, self.templates, self.dtype = spec, ds, templates, dtype
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.max_skip_frac, self.progress = max_skip_frac, progress
        self.models = models or ModelPool()
        self.executor = LOCAL

    @property
    def lm(self) -> LoadedModel:
        return self.models.get(self.spec, self.device)

    def text(self) -> np.ndarray:
        """(C, D) float64 unit class text embeddings."""
        return class_text_embeddings(self.lm, self.ds.classnames, self.templates).double().cpu().numpy()

    def meta(self, images: int, skipped: list[str], fingerprint: str | None = None) -> dict:
        """Provenance; `fingerprint` (the model's) only where the store keys on it: without the store
        the weights are never hashed."""
        import open_clip

        from ... import __version__
        return {"model": self.spec.name, "pretrained": self.spec.pretrained, "architecture": self.spec.architecture,
                "model_fingerprint": fingerprint, "preprocess": self.spec.preprocess_cfg,
                "logit_scale": self.lm.logit_scale,
                "data": self.ds.root, "classnames": self.ds.classnames, "class_keys": self.ds.class_keys,
                "templates": self.templates, "dtype": self.dtype, "images": images, "skipped": skipped,
                "iimm_version": __version__, "open_clip_version": open_clip.__version__,
                "torch_version": torch.__version__}

    # ---- without the store ------------------------------------------------------------------------

    def in_memory(self, shard_rows: int) -> tuple[EmbeddingSet, EmbedInfo]:
        text = self.text()
        shards: dict[int, tuple] = {}

        def keep(idx, rows, labs, skipped_paths):
            shards[idx] = (rows, labs, skipped_paths)

        encoded = self.encode(list(range(_n_shards(len(self.ds), shard_rows))), shard_rows, text.shape[1], keep, [])
        blocks = [shards[i][0] for i in sorted(shards)]  # streamed shards may finish out of order
        labels = [shards[i][1] for i in sorted(shards)]
        skipped = [p for i in sorted(shards) for p in shards[i][2]]
        meta = self.meta(encoded, skipped)
        es = EmbeddingSet(blocks, np.concatenate(labels), text, self.ds.classnames, self.ds.root, meta)
        return es, self.info(es.n, skipped, encoded, None, None, meta)

    # ---- with the store ---------------------------------------------------------------------------

    def keys(self) -> tuple[str, str, str]:
        dataset_id = self.ds.fingerprint()
        image_key = hash_json({"format": 1, "model": self.spec.fingerprint, "architecture": self.spec.architecture,
                               "preprocess": self.spec.preprocess_cfg, "dataset": dataset_id, "dtype": self.dtype,
                               "compute": encode_dtype(resolve_device(self.device))})
        set_id = hash_json({"images": image_key, "classnames": self.ds.classnames,
                            "templates": self.templates})[:ID_CHARS]
        return dataset_id, image_key, set_id

    def into_store(self, st: Store, shard_rows: int) -> tuple[EmbeddingSet, EmbedInfo]:
        dataset_id, image_key, set_id = self.keys()
        hit = self._load_complete(st, set_id)
        if hit is not None:
            return hit
        with st.lock(set_id):
            hit = self._load_complete(st, set_id)
            if hit is not None:
                return hit
            return self._build(st, dataset_id, image_key, set_id, shard_rows)

    def _load_complete(self, st: Store, set_id: str):
        row = st.get_set(set_id)
        if row is None or row["status"] != "complete":
            return None
        if len(st.finished_shards(set_id)) != _n_shards(len(self.ds), int(row["shard_rows"])):
            return None  # a shard failed its size or checksum, or is gone: forgotten, and encoded again
        try:
            es = load_embeddings(st.set_dir(set_id))
        except InputError:
            st.forget_shards(set_id)  # files removed by hand: rebuild
            return None
        st.touch_set(set_id)
        skipped = list(es.meta.get("skipped", []))
        return es, self.info(es.n, skipped, 0, st.set_dir(set_id), set_id, es.meta)

    def _build(self, st: Store, dataset_id: str, image_key: str, set_id: str, shard_rows: int):
        folder = st.set_dir(set_id)
        donor = st.complete_set_with_images(image_key)
        if donor is not None and donor["id"] != set_id:
            shard_rows = int(donor["shard_rows"])
        st.record_dataset(dataset_id, self.ds.root, len(self.ds), self.ds.class_keys)
        fields = dict(model=self.spec.name, architecture=self.spec.architecture, pretrained=self.spec.pretrained,
                      model_fingerprint=self.spec.fingerprint, preprocess=hash_json(self.spec.preprocess_cfg),
                      classnames=_json(self.ds.classnames), templates=_json(self.templates), dtype=self.dtype,
                      shard_rows=shard_rows)
        row = st.open_set(set_id, image_key, dataset_id, fields)
        folder.mkdir(parents=True, exist_ok=True)  # after its registry row: a kill in between leaves no orphan
        shard_rows = int(row["shard_rows"])
        if donor is not None and donor["id"] != set_id:
            _link_shards(st, donor["id"], set_id)
        text = self.text()
        write_npy_atomic(folder / "text.npy", text)
        finished = st.finished_shards(set_id)
        todo = [i for i in range(_n_shards(len(self.ds), shard_rows)) if i not in finished]
        prior_skipped = [p for i in sorted(finished) for p in finished[i][1]]

        def write(idx, rows, labs, skipped_paths):
            st.record_shard(set_id, idx, len(rows), skipped_paths, write_shard(folder, idx, rows, labs))

        if self.executor.is_ray:
            encoded = self.encode_units(st, set_id, image_key, todo, shard_rows, text.shape[1])
        else:
            encoded = self.encode(todo, shard_rows, text.shape[1], write, prior_skipped)
        finished = st.finished_shards(set_id, verify=False)  # the earlier ones were verified above
        skipped = [p for i in sorted(finished) for p in finished[i][1]]
        images = sum(r for r, _ in finished.values())
        self._check_skips(len(skipped), skipped)
        write_json_atomic(folder / "classnames.json", self.ds.classnames)
        meta = self.meta(images, skipped, self.spec.fingerprint)
        write_json_atomic(folder / "meta.json", meta)
        es = load_embeddings(folder)
        st.mark_complete(set_id, es.n, len(skipped))
        return es, self.info(es.n, skipped, encoded, folder, set_id, meta)

    def encode_units(self, st: Store, set_id: str, image_key: str, todo: list[int], shard_rows: int,
                     d: int) -> int:
        """Encode the `todo` shards one unit each on `self.executor`; the driver (this process) records each
        finished shard in the registry from its done-marker. Returns the images encoded by this run."""
        from .shard_units import ShardJob, encode_shards, read_marker

        folder = st.set_dir(set_id)
        n = len(self.ds)
        done = [0, n - sum(len(_shard_items(s, shard_rows, n)) for s in todo), 0]  # encoded, items, skips

        def record(marker: dict) -> None:
            st.record_shard(set_id, marker["shard"], marker["rows"], marker["skipped"], marker.get("files"))
            done[0] += marker["rows"] if marker.get("encoded") else 0
            done[1] += marker["rows"] + len(marker["skipped"])
            done[2] += len(marker["skipped"])
            self._check_skips(done[2], marker["skipped"])
            self._report(done[1], n)

        remaining = []
        for s in todo:  # shards a previous run finished but whose driver died before recording them
            marker = read_marker(folder, s, image_key)
            if marker is None:
                remaining.append(s)
            else:
                record(marker)
        self._report(done[1], n)
        job = ShardJob(self.spec, self.ds, tuple(self.templates), self.dtype, self.batch_size, self.workers,
                       str(self.device), self.max_skip_frac, shard_rows, d, str(folder), image_key)
        all_or_raise(encode_shards(job, remaining, self.executor, record))
        return done[0]

    # ---- the encoding loop ------------------------------------------------------------------------

    def encode(self, shards: list[int], shard_rows: int, d: int, sink: Callable, prior_skipped: list[str]) -> int:
        """Encode the items of the given shards in order; call `sink(idx, rows, labels, skipped)` per shard.

        Returns the number of images encoded (unreadable ones not counted).
        """
        n = len(self.ds)
        batches = shard_batches(shards, shard_rows, n, self.batch_size)
        done = n - sum(len(b) for b in batches)
        self._report(done, n)
        if not batches:
            return 0
        lm = self.lm
        dataset = self.ds.encoding_dataset(lm.preprocess, [i for b in batches for i in b])
        if isinstance(dataset, torch.utils.data.IterableDataset):  # streamed tar shards: rows come as they come
            batching = dict(batch_size=self.batch_size)
        else:  # positions in the subset, batch by batch
            starts = np.cumsum([0] + [len(b) for b in batches])
            batching = dict(batch_sampler=[list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])])
        loader = torch.utils.data.DataLoader(
            dataset, num_workers=self.workers, collate_fn=collate_skipping, pin_memory=lm.device.type == "cuda",
            prefetch_factor=4 if self.workers else None, **batching)
        store_dtype = STORE_DTYPES[self.dtype]
        pending: dict[int, _ShardBuffer] = {}
        skipped_total = list(prior_skipped)
        encoded = 0
        with torch.no_grad():  # not inference_mode: a pooled model may be trained afterwards
            for images, labels, idx, skipped in loader:
                if images is not None:
                    emb = encode_images(lm, images).cpu().numpy()
                    rows = self._to_store_dtype(emb, idx.numpy(), store_dtype)
                    encoded += len(rows)
                    for pos, item in enumerate(idx.tolist()):
                        _buffer(pending, item // shard_rows).add(rows[pos], int(labels[pos]), item)
                for item in skipped:
                    _buffer(pending, item // shard_rows).skip(self.ds.items[item].path, item)
                    skipped_total.append(self.ds.items[item].path)
                self._check_skips(len(skipped_total), skipped_total)
                done += 0 if images is None else len(idx)
                done += len(skipped)
                for s in sorted(pending):
                    if pending[s].count == len(_shard_items(s, shard_rows, n)):
                        buf = pending.pop(s)
                        sink(s, buf.rows(d, store_dtype), buf.labels(), buf.skipped)
                self._report(done, n)
        return encoded

    def _to_store_dtype(self, emb: np.ndarray, items: np.ndarray, store_dtype) -> np.ndarray:
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            path = self.ds.items[int(items[np.argmax(bad)])].path
            raise InputError(f"model {self.spec.name} produced NaN/Inf embeddings (first for {path}); check the "
                             f"weights, or use --device cpu / fp32 precision")
        rows = emb.astype(store_dtype)
        if not np.isfinite(rows).all():
            raise InputError(f"image embeddings of {self.spec.name} exceed the float16 range; pass --dtype fp32")
        return rows

    def _check_skips(self, count: int, skipped: list[str]) -> None:
        n = len(self.ds)
        if count > self.max_skip_frac * n:
            listed = ", ".join(skipped[:3]) + (", …" if len(skipped) > 3 else "")
            raise InputError(f"{count} of {n} images could not be read ({100 * count / n:.1f}% > --max-skip-frac "
                             f"{self.max_skip_frac:g}): {listed}; fix or remove them, or raise --max-skip-frac")

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(STAGE, done, total)

    def info(self, images, skipped, encoded, location, set_id, meta) -> EmbedInfo:
        return EmbedInfo(model=self.spec.name, pretrained=self.spec.pretrained, data=self.ds.root,
                         data_path=self.ds.root_path, images=images,
                         skipped=list(skipped), cached=encoded == 0, location=str(location) if location else None,
                         encoded=encoded, set_id=set_id, meta=meta)


class _ShardBuffer:
    """One store shard's rows as they arrive; handed out in dataset order (streamed items may arrive out of it)."""

    def __init__(self):
        self._rows, self._labels, self._items, self._skipped = [], [], [], []

    @property
    def count(self) -> int:
        return len(self._rows) + len(self._skipped)

    def add(self, row: np.ndarray, label: int, item: int) -> None:
        self._rows.append(row)
        self._labels.append(label)
        self._items.append(item)

    def skip(self, path: str, item: int) -> None:
        self._skipped.append((item, path))

    @property
    def skipped(self) -> list[str]:
        return [p for _, p in sorted(self._skipped)]

    def _order(self) -> np.ndarray:
        return np.argsort(np.asarray(self._items, dtype=np.int64), kind="stable")

    def rows(self, d: int, dtype) -> np.ndarray:
        if not self._rows:
            return np.zeros((0, d), dtype=dtype)
        return np.stack(self._rows).astype(dtype, copy=False)[self._order()]

    def labels(self) -> np.ndarray:
        return np.asarray(self._labels, dtype=np.int64)[self._order()]


def _buffer(pending: dict, shard: int) -> _ShardBuffer:
    if shard not in pending:
        pending[shard] = _ShardBuffer()
    return pending[shard]


def shard_batches(shards: list[int], shard_rows: int, n: int, batch_size: int) -> list[list[int]]:
    """The batches (lists of item indices) that encode the given shards of n items.

    Batches start at each shard's first item and never cross into the next shard, so a shard is encoded
    in the same batches, hence to the same bits, whether a run starts afresh, resumes or encodes it alone.
    """
    batches = []
    for s in shards:
        items = _shard_items(s, shard_rows, n)
        batches += [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    return batches


def _n_shards(n: int, shard_rows: int) -> int:
    return (n + shard_rows - 1) // shard_rows


def _shard_items(s: int, shard_rows: int, n: int) -> range:
    """The dataset items of shard s (the last shard may be short)."""
    return range(s * shard_rows, min(n, (s + 1) * shard_rows))


def _link_shards(st: Store, donor_id: str, set_id: str) -> None:
    """Share a finished set's image shards with a set that differs only in class names / templates."""
    src, dst = st.set_dir(donor_id), st.set_dir(set_id)
    recorded = {r["idx"]: r for r in st.shard_records(donor_id)}
    for idx, (rows, skipped) in sorted(st.finished_shards(donor_id).items()):
        for kind in SHARD_KINDS:
            tmp = dst / f".{shard_name(kind, idx)}.{os.getpid()}.link"
            try:
                os.link(src / shard_name(kind, idx), tmp)
            except OSError:
                import shutil
                shutil.copyfile(src / shard_name(kind, idx), tmp)
            os.replace(tmp, dst / shard_name(kind, idx))
        files = {kind: (recorded[idx][f"{kind}_bytes"], recorded[idx][f"{kind}_sha256"]) for kind in SHARD_KINDS}
        st.record_shard(set_id, idx, rows, skipped, None if None in files["image"] + files["label"] else files)


def _check_options(batch_size, workers, dtype, max_skip_frac, shard_rows) -> None:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}; pass a positive --batch-size")
    if workers is not None and workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}; pass --workers 0 to decode in the main process")
    if dtype not in STORE_DTYPES:
        raise InputError(f"unknown embedding dtype {dtype!r}; pass --dtype fp16 or fp32")
    if not 0 <= max_skip_frac <= 1:
        raise InputError(f"--max-skip-frac must be between 0 and 1, got {max_skip_frac}")
    if shard_rows < 1:
        raise InputError(f"shard size must be at least 1 row, got {shard_rows}")


def _json(value) -> str:
    import json
    return json.dumps(value, ensure_ascii=False)
