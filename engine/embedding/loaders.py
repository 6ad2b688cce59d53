"""Load an embedding set from disk: an `.npz`, a folder of `.npy` arrays (or the store's shards), or a
clip-retrieval output folder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ...errors import InputError
from .clip_retrieval import is_clip_retrieval_folder, load_clip_retrieval
from .data import load_classnames
from .embedding_set import EmbeddingSet, labels_int64, names_by_index


def load_embeddings(path: str | os.PathLike, mmap: bool = True, class_texts=None, label_column: str | None = None,
                    classnames=None) -> EmbeddingSet:
    """Load an embedding set from a `.npz` file or a folder.

    A folder holds `image.npy` `(N, D)`, `label.npy` `(N,)`, `text.npy` `(C, D)` and
    optionally `classnames.json`; or, as the embedding store writes it, shards
    `image-*.npy` / `label-*.npy` read in name order; or it is the output of
    `clip-retrieval inference` (`img_emb/`, `metadata/`; see `iimm.engine.embedding.clip_retrieval`),
    where `class_texts` (names -> (C, D) array), `label_column` and `classnames` (a JSON file, list or
    mapping, instead of the folder's classnames.json) apply. `.npy` files are memory-mapped.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"embeddings not found: {path}; pass an existing .npz file or folder to --embeddings")
    try:
        if path.is_dir() and is_clip_retrieval_folder(path):
            return load_clip_retrieval(path, mmap, class_texts, label_column, classnames)
        if class_texts is not None or label_column is not None or classnames is not None:
            raise InputError(f"{path} is not a clip-retrieval folder (no img_emb/); --model, --label-column and "
                             f"--classnames apply to those only, this input carries its own texts and names")
        if path.is_dir():
            return _load_folder(path, mmap)
        return _load_npz(path)
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        raise InputError(f"cannot read embeddings from {path}: {exc}; check that the file is a complete "
                         f".npz or a folder of .npy arrays") from exc


def _load_npz(path: Path) -> EmbeddingSet:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("image", "label", "text") if k not in npz.files]
        if missing:
            raise InputError(f"{path} lacks the array(s) {', '.join(missing)}; an .npz needs 'image' (N×D), "
                             f"'label' (N) and 'text' (C×D), found {', '.join(npz.files) or 'none'}")
        classnames = [str(s) for s in npz["classnames"]] if "classnames" in npz.files else None
        return EmbeddingSet([npz["image"]], labels_int64(npz["label"], path), npz["text"], classnames, str(path))


def _load_folder(path: Path, mmap: bool) -> EmbeddingSet:
    mode = "r" if mmap else None
    if (path / "image.npy").exists():
        image_files, label_files = [path / "image.npy"], [path / "label.npy"]
    else:
        image_files = sorted(path.glob("image-*.npy"))
        label_files = sorted(path.glob("label-*.npy"))
        if not image_files:
            raise InputError(f"{path} holds no image.npy (nor image-*.npy shards); a folder of embeddings needs "
                             f"image.npy (N×D), label.npy (N) and text.npy (C×D)")
        if [f.name[6:] for f in image_files] != [f.name[6:] for f in label_files]:
            raise InputError(f"{path}: image-*.npy and label-*.npy shards do not match one to one")
    for f in label_files + [path / "text.npy"]:
        if not f.exists():
            raise InputError(f"{path} lacks {f.name}; a folder of embeddings needs image.npy (N×D), "
                             f"label.npy (N) and text.npy (C×D)")
    blocks = [np.load(f, mmap_mode=mode, allow_pickle=False) for f in image_files]
    label = np.concatenate([np.load(f, allow_pickle=False) for f in label_files])
    text = np.load(path / "text.npy", allow_pickle=False)
    classnames = None
    if (path / "classnames.json").exists():
        classnames = names_by_index(load_classnames(path / "classnames.json"))
    meta = {}
    if (path / "meta.json").exists():
        meta = json.loads((path / "meta.json").read_text())
    return EmbeddingSet(blocks, labels_int64(label, path), text, classnames, str(path), meta)
