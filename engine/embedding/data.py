"""Image datasets (class-per-folder trees, CSV/JSONL manifests, and the sources of `sources/`), class names
and prompt templates.

`load_image_dataset` is the one entry point: webdataset shards, benchmarks by name and WILDS are
recognised by `sources.open_source`; anything else is a class-per-folder tree or a manifest.
A class-per-folder tree `ROOT/<class>/**/<image>` names its classes after the folders
(natural order, `_` read as a space); an empty class folder is still a class. A
manifest (`.csv` with a header, or `.jsonl`) lists `path,label` with optional `split`
and `domain` columns; relative paths are relative to the manifest. Images that cannot
be decoded are not an error here: the torch dataset yields None for them and
`collate_skipping` drops them, reporting their indices.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from ...errors import InputError
from .prompts import resolve_templates

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".jfif"})
MANIFEST_EXTENSIONS = (".csv", ".jsonl")


class ImageItem(NamedTuple):
    """One image: absolute path (or, for a source with a reader, a name that says where the image is), class
    index, optional split / domain tags, and `ref`, where the dataset's reader finds it (None for files)."""

    path: str
    label: int
    split: str | None = None
    domain: str | None = None
    ref: object = None


class ItemReader(Protocol):
    """How a source that is not one file per image hands out its images (tar shards, arrays in binary files).

    `files` are what the dataset's fingerprint stats (path, size, mtime); `load(item)` decodes one image
    (raising UnreadableImage); a reader with `stream(items, indices, transform)` is read in order, as an
    iterable torch dataset, when the images are encoded."""

    def files(self) -> list[str]: ...

    def load(self, item: ImageItem): ...


@dataclass
class ImageDataset:
    """A labelled image dataset.

    Attributes:
        root: the folder (class tree) or manifest file it came from.
        items: the images in a fixed, deterministic order.
        classnames: C display names (used in prompts), index = label.
        class_keys: C names as found in the data (folder names or manifest labels).
    """

    root: str
    items: list[ImageItem]
    classnames: list[str]
    class_keys: list[str]
    reader: ItemReader | None = field(default=None, compare=False)
    templates: list[str] | None = None  # the source's own prompt ensemble, used unless prompts are given
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class index of every item."""
        return np.fromiter((it.label for it in self.items), dtype=np.int64, count=len(self.items))

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    def class_counts(self) -> np.ndarray:
        """(C,) images per class (a class folder without images counts 0)."""
        return np.bincount(self.labels, minlength=len(self.classnames))

    @property
    def root_path(self) -> str:
        """`root` as an absolute path when it is a file or folder on disk (records keep both), else `root`."""
        return os.path.abspath(self.root) if os.path.exists(self.root) else self.root

    def select(self, split: str | None = None, domain: str | None = None) -> "ImageDataset":
        """The items of one split and/or domain (classes unchanged)."""
        if split is None and domain is None:
            return self
        items = [it for it in self.items
                 if (split is None or it.split == split) and (domain is None or it.domain == domain)]
        if not items:
            wanted = " and ".join(f"{k} {v!r}" for k, v in (("split", split), ("domain", domain)) if v is not None)
            splits = sorted({it.split for it in self.items if it.split is not None})
            domains = sorted({it.domain for it in self.items if it.domain is not None})
            has = "; ".join(f"its {k}s are {', '.join(v)}" if v else f"it has no {k} column"
                            for k, v, asked in (("split", splits, split), ("domain", domains, domain)) if asked)
            raise InputError(f"{self.root}: no images with {wanted}; {has} (a .csv/.jsonl manifest gives them)")
        return replace(self, items=items)

    def prompts(self, templates=None, template_file=None, template_set=None) -> list[str]:
        """The prompt ensemble: the given templates, else the source's own, else "a photo of a {}."."""
        if templates or template_file or template_set or not self.templates:
            return resolve_templates(templates, template_file, template_set)
        return list(self.templates)

    def fingerprint(self) -> str:
        """sha256 over every item's path, size, mtime, label, split and domain, and the class keys.

        Computed (one stat per image) on the first call; `select`/`replace` make new datasets that compute
        their own."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        root = str(Path(self.root).resolve()) if os.path.exists(self.root) else self.root  # NAME@ROOT stays
        h.update(json.dumps({"root": root,
                             "classes": self.class_keys}).encode())
        if self.reader is not None:
            for path in self.reader.files():
                st = os.stat(path)
                h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            for it in self.items:
                h.update(f"\0{it.path}\0{it.label}\0{it.split}\0{it.domain}".encode())
            return "sha256:" + h.hexdigest()
        for it in self.items:
            try:
                st = os.stat(it.path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            h.update(f"\0{it.path}\0{size}\0{mtime}\0{it.label}\0{it.split}\0{it.domain}".encode())
        return "sha256:" + h.hexdigest()

    def torch_dataset(self, transform: Callable) -> "ImageTorchDataset":
        """A map-style torch dataset yielding `(image (3, H, W) | None, label, index)`."""
        if self.reader is not None:
            return ImageTorchDataset(self.items, [it.label for it in self.items], transform, self.reader.load)
        return ImageTorchDataset([it.path for it in self.items], [it.label for it in self.items], transform)

    def encoding_dataset(self, transform: Callable, indices: Sequence[int]) -> torch.utils.data.Dataset:
        """The items at `indices` (ascending) as a torch dataset yielding `(image | None, label, index)`:
        streamed in order when the reader streams (tar shards), else a subset of `torch_dataset`."""
        stream = getattr(self.reader, "stream", None)
        if stream is not None:
            return stream(self.items, list(indices), transform)
        return torch.utils.data.Subset(self.torch_dataset(transform), list(indices))


class ImageTorchDataset(torch.utils.data.Dataset):
    """Decodes and transforms one image per index; an unreadable image yields None instead of raising.

    sources: image paths (read with `read_rgb`), or items that `load` decodes."""

    def __init__(self, sources: Sequence, labels: Sequence[int], transform: Callable, load: Callable = None):
        self.paths = list(sources)
        self.labels = list(labels)
        self.transform = transform
        self.load = load or read_rgb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = self.load(self.paths[index])
        except UnreadableImage:
            return None, self.labels[index], index
        return self.transform(image), self.labels[index], index


class UnreadableImage(Exception):
    """An image file that is missing, truncated or not an image."""


_DECODE_ERRORS: tuple = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError)


def read_rgb(path, name: str | None = None):
    """Decode an image file (a path or a binary file object) fully into an RGB PIL image; raise
    UnreadableImage (naming `name`, else the path) if it cannot be."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{name or path}: {exc}") from exc


def collate_skipping(batch: list) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[int]]:
    """Collate `(image | None, label, index)` samples, dropping unreadable ones.

    Returns images (B, 3, H, W) or None when none was readable, labels (B,) int64,
    indices (B,) int64 of the kept samples, and the indices of the dropped ones.
    """
    kept = [s for s in batch if s[0] is not None]
    skipped = [int(s[2]) for s in batch if s[0] is None]
    labels = torch.tensor([int(s[1]) for s in kept], dtype=torch.int64)
    indices = torch.tensor([int(s[2]) for s in kept], dtype=torch.int64)
    images = torch.stack([s[0] for s in kept]) if kept else None
    return images, labels, indices, skipped


def load_image_dataset(path: str | os.PathLike, classnames=None, split: str | None = None,
                       domain: str | None = None, label_key: str | None = None) -> ImageDataset:
    """Read a class-per-folder tree, a `.csv` / `.jsonl` manifest, or a source of `sources/` (webdataset
    shards, NAME@ROOT, wilds:NAME@ROOT).

    classnames: None, a JSON file path, a list (names in class order) or a mapping
    (class key or index -> display name) that renames classes.
    label_key: for webdataset shards, the field of each sample's json member holding the label
    (default: the cls member).
    """
    from .sources import open_source

    listed = load_classnames(classnames)
    ds = open_source(str(path), listed, label_key)
    if ds is not None:
        return ds.select(split, domain)
    root = Path(path)
    if not root.exists():
        raise InputError(f"data not found: {root}; pass --data a class-per-folder image tree, a .csv/.jsonl manifest, "
                         f"webdataset shards or NAME@ROOT (see `iimm catalog list`)")
    if root.is_dir():
        keys, display, items = _scan_class_folders(root)
    elif root.suffix.lower() in MANIFEST_EXTENSIONS:
        keys, display, items = _read_manifest(root, len(listed) if isinstance(listed, list) else None)
    else:
        raise InputError(f"{root} is neither a folder nor a .csv/.jsonl manifest; pass --data a class-per-folder "
                         f"image tree or a manifest with path,label columns")
    names = apply_classnames(keys, display, listed)
    ds = ImageDataset(str(root), items, names, keys)
    if not ds.items:
        raise InputError(f"{root} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); point --data "
                         f"at the folder whose subfolders are the classes")
    return ds.select(split, domain)


def load_classnames(spec) -> list[str] | dict[str, str] | None:
    """Class names from a JSON file (list or mapping), or a list / mapping given directly."""
    if spec is None or isinstance(spec, (list, tuple, dict)):
        return list(spec) if isinstance(spec, tuple) else spec
    p = Path(spec)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"class-names file not found: {p}; pass --classnames a JSON list or mapping") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class names from {p}: {exc}; write a JSON list or a JSON object") from exc
    if not isinstance(value, (list, dict)):
        raise InputError(f"{p} holds a JSON {type(value).__name__}; class names must be a JSON list or mapping")
    return value


def apply_classnames(keys: list[str], display: list[str], names) -> list[str]:
    """Rename classes: a list gives every name in class order; a mapping renames some by key or index."""
    if names is None:
        return list(display)
    if isinstance(names, list):
        if len(names) != len(keys):
            raise InputError(f"{len(names)} class names given for {len(keys)} classes ({', '.join(keys[:5])}"
                             f"{', …' if len(keys) > 5 else ''}); give exactly one name per class in class order")
        return [_check_name(n) for n in names]
    out = list(display)
    index = {k: i for i, k in enumerate(keys)}
    for key, name in names.items():
        i = index.get(str(key))
        if i is None and str(key).isdigit() and int(key) < len(keys):
            i = int(key)
        if i is None:
            raise InputError(f"class-names mapping has key {key!r}, which is not a class of the data (classes: "
                             f"{', '.join(keys[:8])}{', …' if len(keys) > 8 else ''}); use folder names or indices")
        out[i] = _check_name(name)
    return out


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"class name {name!r} is not a non-empty string; fix the --classnames file")
    return name.strip()


def natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _scan_class_folders(root: Path) -> tuple[list[str], list[str], list[ImageItem]]:
    class_dirs = sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
                        key=lambda e: natural_key(e.name))
    if not class_dirs:
        raise InputError(f"{root} has no class subfolders; arrange images as ROOT/<class name>/<image> or pass a "
                         f".csv/.jsonl manifest")
    keys = [e.name for e in class_dirs]
    display = [e.name.replace("_", " ").strip() or e.name for e in class_dirs]
    items = []
    for label, entry in enumerate(class_dirs):
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.extend(os.path.join(dirpath, f) for f in filenames
                         if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        files.sort(key=lambda f: natural_key(os.path.relpath(f, entry.path)))
        items.extend(ImageItem(os.path.abspath(f), label) for f in files)
    return keys, display, items


def _read_manifest(path: Path, n_listed_names: int | None) -> tuple[list[str], list[str], list[ImageItem]]:
    rows = _manifest_rows(path)
    base = path.resolve().parent
    labels = [str(r["label"]).strip() for r in rows]
    as_index = (n_listed_names is not None and all(lab.isdigit() for lab in labels)
                and all(int(lab) < n_listed_names for lab in labels))
    if as_index:
        keys = [str(i) for i in range(n_listed_names)]
    else:
        keys = sorted(set(labels), key=natural_key)
    index = {k: i for i, k in enumerate(keys)}
    items = []
    for r, lab in zip(rows, labels):
        p = Path(str(r["path"]))
        items.append(ImageItem(str(p if p.is_absolute() else base / p), int(lab) if as_index else index[lab],
                               _opt(r.get("split")), _opt(r.get("domain"))))
    return keys, list(keys), items


def _manifest_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}; pass a UTF-8 .csv or .jsonl file") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        header = list(reader.fieldnames or [])
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno} is not valid JSON ({exc}); write one JSON object per line") from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno} is not a JSON object; write one object per line with path and label")
            rows.append(row)
        header = sorted({k for r in rows for k in r})
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise InputError(f"manifest {path} lacks column(s) {', '.join(missing)}; it needs path,label (and optionally "
                         f"split,domain), found {', '.join(header) or 'nothing'}")
    for i, r in enumerate(rows):
        if r.get("path") in (None, "") or r.get("label") in (None, ""):
            raise InputError(f"manifest {path} row {i + 1} has an empty path or label; every row needs both")
    return rows


def _opt(value) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None
