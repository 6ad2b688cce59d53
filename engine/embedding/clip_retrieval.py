"""clip-retrieval output folders (`clip-retrieval inference`) as embedding sets.

Layout read (one partition k per file pair, partitions in numeric order):

    FOLDER/img_emb/img_emb_<k>.npy          (N_k, D) image embeddings, memory-mapped
    FOLDER/metadata/metadata_<k>.parquet    N_k rows: `image_path`, and any metadata columns
    FOLDER/text.npy                         optional (C, D) class text embeddings
    FOLDER/classnames.json                  optional class order / display names
    FOLDER/label.npy                        optional (N,) class indices (then no metadata is read)

A row's class is its metadata `label` column (or `label_column`) when there is one, else the
name of the folder holding its image (class-per-folder trees). String classes are ordered as
iimm orders class folders (natural sort) unless `classnames.json` is a list, which then gives the
order; integer labels are class indices. Class texts come from `text.npy` or from `class_texts`,
a callable that encodes the class names with the model that made the image embeddings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from .data import natural_key, apply_classnames, load_classnames
from .embedding_set import EmbeddingSet, labels_int64, names_by_index
from ...errors import InputError

ClassTexts = Callable[[list[str]], np.ndarray]


def is_clip_retrieval_folder(path: Path) -> bool:
    return (Path(path) / "img_emb").is_dir()


def load_clip_retrieval(path: str | Path, mmap: bool = True, class_texts: ClassTexts | None = None,
                        label_column: str | None = None, classnames=None) -> EmbeddingSet:
    """An `EmbeddingSet` of a clip-retrieval output folder (see the module docstring for the layout).

    class_texts: names (C,) -> (C, D) class text embeddings; used instead of `text.npy`. Its `meta`
        attribute, if any (the model's logit_scale, ...), joins the set's meta after the call.
    label_column: the metadata column holding each row's class (default `label`, else the image's folder).
    classnames: a JSON file, list or mapping used instead of the folder's `classnames.json`.
    """
    path = Path(path)
    parts = _partitions(path / "img_emb", "img_emb_", ".npy")
    if not parts:
        raise InputError(f"{path / 'img_emb'} holds no img_emb_<k>.npy files; point --embeddings at the output "
                         f"folder of `clip-retrieval inference`")
    blocks = [np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False) for f in parts.values()]
    if classnames is None and (path / "classnames.json").exists():
        classnames = path / "classnames.json"
    listed = load_classnames(classnames)
    meta: dict = {"format": "clip-retrieval"}
    if (path / "label.npy").exists():
        if label_column is not None:
            raise InputError(f"{path} has label.npy, which gives every row's class; drop --label-column or "
                             f"remove label.npy to read the classes from the metadata")
        label = labels_int64(np.load(path / "label.npy", allow_pickle=False), path / "label.npy")
        keys = None
    else:
        label, keys = _labels_from_metadata(path, list(parts), [len(b) for b in blocks], label_column, listed)
    names = _display_names(keys, listed)
    if class_texts is not None:
        if names is None:
            raise InputError(f"{path}: integer labels without class names; add classnames.json (a JSON list, "
                             f"one name per class index) so the class texts can be encoded")
        text = np.asarray(class_texts(names), dtype=np.float64)
        meta.update(getattr(class_texts, "meta", {}))
    elif (path / "text.npy").exists():
        text = np.load(path / "text.npy", allow_pickle=False)
    else:
        raise InputError(f"{path} has no class text embeddings; pass --model M (the model that made the image "
                         f"embeddings) to encode the class names, or add text.npy (C×D)")
    if names is not None and len(names) != len(text):
        raise InputError(f"{path}: {len(names)} classes but text.npy has {len(text)} rows; give one text row per "
                         f"class, in class order")
    return EmbeddingSet(blocks, label, text, names, str(path), meta)


def _partitions(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """{k: file} of `<prefix><k><suffix>` files, in numeric order of k."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    found = {int(m.group(1)): f for f in folder.iterdir() if (m := pattern.match(f.name))} if folder.is_dir() else {}
    return dict(sorted(found.items()))


def _labels_from_metadata(path: Path, parts: list[int], rows: list[int], label_column: str | None,
                          listed: list[str] | dict | None) -> tuple[np.ndarray, list[str] | None]:
    """(N,) labels and the class keys in class order (None for integer labels)."""
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError("reading clip-retrieval metadata needs pyarrow; pip install 'iimm[clip-retrieval]', or put "
                         "label.npy (one class index per row) in the folder") from exc
    files = _partitions(path / "metadata", "metadata_", ".parquet")
    if list(files) != parts:
        raise InputError(f"{path}: img_emb partitions {parts} but metadata partitions {list(files)}; each "
                         f"img_emb_<k>.npy needs its metadata_<k>.parquet (or add label.npy)")
    first = pq.read_schema(next(iter(files.values()))).names
    column = label_column or ("label" if "label" in first else "image_path")
    from_folders = label_column is None and column == "image_path"
    values, start = [], 0
    for (k, f), n in zip(files.items(), rows):
        names = pq.read_schema(f).names
        if column not in names:
            raise InputError(f"{f} has no column {column!r} (columns: {', '.join(names)}); pass --label-column "
                             f"with the column that holds each image's class")
        col = pq.read_table(f, columns=[column]).column(0)
        if len(col) != n:
            raise InputError(f"{f} has {len(col)} rows but img_emb_{k}.npy has {n}; the partition is incomplete, "
                             f"rerun clip-retrieval inference for it")
        if col.null_count:
            row = start + int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{path}: row {row} has no class in the metadata column {column!r}; give every "
                             f"image a class")
        if n:  # empty partitions carry no type worth agreeing on
            values.append(col.to_numpy(zero_copy_only=False))
        start += n
    kinds = {"number" if v.dtype.kind in "iuf" else "text" for v in values}
    if len(kinds) > 1:
        raise InputError(f"{path}: the metadata column {column!r} holds numbers in some partitions and text in "
                         f"others; give every image its class the same way")
    if kinds == {"number"}:  # class indices (whole floats included; labels_int64 refuses fractions)
        return labels_int64(np.concatenate(values), f"{path}: metadata column {column!r}"), None
    col = np.concatenate(values) if values else np.array([], dtype=object)
    if from_folders:
        col = np.array([Path(str(p)).parent.name for p in col], dtype=object)
    keys = sorted({str(v) for v in col}, key=natural_key)
    if from_folders and ("" in keys or len(keys) < 2):
        raise InputError(f"{path}: the image paths in the metadata give {len(keys)} class folder(s) "
                         f"({', '.join(repr(k) for k in keys[:3])}); pass --label-column with the column that holds "
                         f"each image's class, or add label.npy")
    if isinstance(listed, list):
        missing = [k for k in keys if k not in listed]
        if missing:
            raise InputError(f"{path}: class {missing[0]!r} is not in classnames.json; a classnames list must name "
                             f"every class, in class order")
        keys = [str(k) for k in listed]
    index = {k: i for i, k in enumerate(keys)}
    return np.fromiter((index[str(v)] for v in col), dtype=np.int64, count=len(col)), keys


def _display_names(keys: list[str] | None, listed: list[str] | dict | None) -> list[str] | None:
    """Prompt names: classnames.json's (a list, or a mapping from key or index), else the keys themselves."""
    if keys is None:
        return names_by_index(listed)
    display = [k.replace("_", " ").strip() or k for k in keys]
    return apply_classnames(keys, display, listed) if isinstance(listed, dict) else display
