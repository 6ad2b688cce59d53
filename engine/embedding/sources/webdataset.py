"""Webdataset tar shards (img2dataset output, LAION subsets, CLIP_benchmark's `wds_<name>` repositories).

A shard set is a brace pattern (`shards/{00000..00099}.tar`), one `.tar`, a `.txt` listing shard
paths, a folder of `.tar` files, or a CLIP_benchmark root: `<root>/<split>/*.tar` beside
`classnames.txt` and `zeroshot_classification_templates.txt` (each split's rows tagged with it).
Samples are grouped as webdataset groups them (`webdataset.tariterators.base_plus_ext`); the image is
the first of `jpg jpeg png webp`, the label the integer in `cls` or a field of the `json` member.

The shards are indexed once from their tar headers (stdlib `tarfile`, plus the small label members),
samples grouped by webdataset's own key rule; when images are encoded each tar is streamed in file
order, every image read at the offset its header gave, never unpacked to disk (this measured faster
than webdataset's `tarfile_samples`, which parses every header a second time). A sample that does not
decode, or that a truncated tar cuts off, is yielded as unreadable (None) and so counted and listed
like an unreadable image file. Random access (fine-tuning) reads a member at the same offset.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

import torch

from ....errors import InputError
from ..data import ImageDataset, ImageItem, UnreadableImage, apply_classnames, natural_key, read_rgb

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


class Member(NamedTuple):
    """Where a sample's image lies in its shard."""

    tar: str
    key: str
    offset: int
    size: int


def is_brace_pattern(spec: str) -> bool:
    """'dir/{00000..00099}.tar' and the like: shards named by a pattern, decided from the string alone."""
    return "{" in spec and "}" in spec and ".tar" in spec


def is_shard_spec(spec: str) -> bool:
    """True when `spec` names webdataset shards (a brace pattern, a .tar, a .txt list, a folder holding .tar)."""
    if is_brace_pattern(spec):
        return True
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix.lower() == ".txt":
        lines = _read_lines(p)
        return bool(lines) and all(ln.endswith(".tar") for ln in lines)
    if p.is_file():
        return p.suffix.lower() == ".tar"
    return p.is_dir() and bool(_tars_in(p) or _split_folders(p))


def load_shards(spec: str, classnames=None, label_key: str | None = None) -> ImageDataset:
    """The ImageDataset of a shard set; `classnames` (list or mapping) renames the classes."""
    try:
        import webdataset  # noqa: F401 - its key rule and brace expansion are used below
    except ImportError as exc:
        raise InputError(f"{spec}: webdataset shards need the webdataset package; pip install 'iimm[webdataset]'") \
            from exc
    root = Path(spec).expanduser()
    if root.is_dir() and not _tars_in(root):
        splits = {name: _tars_in(root / name) for name in _split_folders(root)}
        shards = [(t, s) for s, tars in splits.items() for t in tars]
        side = root
    else:
        shards = [(t, None) for t in _expand(spec)]
        side = Path(shards[0][0]).parent
    index = _Index(label_key)
    for tar, split in shards:
        index.add_shard(tar, split)
    if not index.items:
        raise InputError(f"{spec}: no samples with an image ({', '.join(IMAGE_KEYS)}) in {len(shards)} shard(s); "
                         f"check the shard paths")
    keys, items = index.class_keys_and_items()
    listed = _read_lines(_beside(side, CLASSNAMES_FILE))
    if classnames is None and listed is not None:
        classnames = listed
    if isinstance(classnames, list) and index.integer_labels:
        keys = [str(i) for i in range(len(classnames))]
        if items and max(it.label for it in items) >= len(keys):
            bad = max(it.label for it in items)
            raise InputError(f"{spec}: label {bad} but {len(keys)} class names; give one name per class index in "
                             f"{CLASSNAMES_FILE} or --classnames")
    names = apply_classnames(keys, list(keys), classnames)
    templates = _read_lines(_beside(side, TEMPLATES_FILE))
    if templates is not None:
        templates = [t.replace("{c}", "{}") for t in templates]
    return ImageDataset(str(spec), items, names, keys, reader=TarReader([t for t, _ in shards]),
                        templates=templates)


class TarReader:
    """Reads samples of webdataset shards: streamed in order to encode, by offset to fine-tune."""

    def __init__(self, tars: list[str]):
        self.tars = tars

    def files(self) -> list[str]:
        return list(self.tars)

    def load(self, item: ImageItem):
        m: Member = item.ref
        with open(m.tar, "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
        return read_rgb(io.BytesIO(data), item.path)

    def stream(self, items: list[ImageItem], indices: list[int], transform) -> "TarStream":
        return TarStream(items, indices, transform)


class TarStream(torch.utils.data.IterableDataset):
    """`(image | None, label, index)` for the items at `indices`, streamed tar by tar in file order.

    Workers take every W-th tar; a sample that does not decode (corrupt, or cut off by a truncated
    tar) comes as None."""

    def __init__(self, items: list[ImageItem], indices: list[int], transform):
        self.transform = transform
        self.by_tar: dict[str, dict[str, tuple[int, int, str]]] = {}
        for i in indices:
            it = items[i]
            self.by_tar.setdefault(it.ref.tar, {})[it.ref] = (i, it.label, it.path)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        tars = list(self.by_tar)
        if info is not None:
            tars = tars[info.id::info.num_workers]
        for tar in tars:
            yield from self._one_tar(tar, self.by_tar[tar])

    def _one_tar(self, tar: str, wanted: dict):
        """Read the wanted samples' images in file order, each at the offset its tar header gave (one
        sequential pass over the tar; a short read, from a truncated tar, fails to decode)."""
        try:
            f = open(tar, "rb")
        except OSError:
            for index, label, _ in wanted.values():
                yield None, label, index
            return
        with f:
            for member, (index, label, name) in sorted(wanted.items(), key=lambda kv: kv[1][0]):
                f.seek(member.offset)
                try:
                    image = read_rgb(io.BytesIO(f.read(member.size)), name)
                except UnreadableImage:
                    yield None, label, index
                    continue
                yield self.transform(image), label, index


class _Index:
    """Samples of the shards in order, from the tar headers and the label members."""

    def __init__(self, label_key: str | None):
        self.label_key = label_key
        self.raw: list[tuple[Member, object, str | None]] = []  # (member, label as found, split)
        self.integer_labels = True

    @property
    def items(self):
        return self.raw

    def add_shard(self, tar: str, split: str | None) -> None:
        from webdataset.tariterators import base_plus_ext

        size = os.path.getsize(tar)
        try:
            tf = tarfile.open(tar, "r:")
        except (tarfile.TarError, OSError) as exc:
            raise InputError(f"{tar} is not a readable tar file ({exc}); remove it from the shard list") from exc
        with tf:
            samples: dict[str, dict] = {}
            order: list[str] = []
            try:
                for m in tf:
                    if not m.isreg():
                        continue
                    key, ext = base_plus_ext(m.name)
                    if key is None or key.split("/")[-1].startswith("__"):
                        continue
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    samples[key][ext.lower()] = m
            except tarfile.TarError:
                pass  # a truncated header ends the shard; the samples before it stay
            for key in order:
                self._add_sample(tf, tar, size, key, samples[key], split)

    def _add_sample(self, tf, tar, size, key, members, split) -> None:
        image = next((members[k] for k in IMAGE_KEYS if k in members), None)
        if image is None:
            return
        complete = image.offset_data + image.size <= size
        label = self._label(tf, tar, key, members, size)
        if label is None and complete:
            want = f"a '{self.label_key}' field in its json" if self.label_key else "a cls member (or --label-key)"
            raise InputError(f"{tar}: sample {key} has no label; every sample needs {want}")
        member = Member(tar, key, image.offset_data, image.size if complete else max(0, size - image.offset_data))
        self.raw.append((member, label, split))

    def _label(self, tf, tar, key, members, size):
        def text(m):
            if m.offset_data + m.size > size:
                return None
            tf.fileobj.seek(m.offset_data)
            return tf.fileobj.read(m.size).decode("utf-8", "replace").strip()

        if self.label_key is None and "cls" in members:
            value = text(members["cls"])
        elif "json" in members:
            raw = text(members["json"])
            if raw is None:
                return None
            try:
                value = json.loads(raw).get(self.label_key or "label")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise InputError(f"{tar}: sample {key}.json is not a JSON object ({exc})") from exc
        else:
            return None
        if value is None:
            return None
        value = str(value).strip()
        if not value.lstrip("-").isdigit():
            self.integer_labels = False
        return value

    def class_keys_and_items(self) -> tuple[list[str], list[ImageItem]]:
        """Integer labels are class indices; other labels are class names in natural order. A sample cut
        off before its label (truncated tar) gets class 0: it is unreadable and never used as a row."""
        known = [lab for _, lab, _ in self.raw if lab is not None]
        if self.integer_labels:
            top = max((int(v) for v in known), default=0)
            if min((int(v) for v in known), default=0) < 0:
                raise InputError("a cls label is negative; class indices start at 0")
            keys = [str(i) for i in range(top + 1)]
            index = {k: i for i, k in enumerate(keys)}
            index.update({v: int(v) for v in known})
        else:
            keys = sorted(set(known), key=natural_key)
            index = {k: i for i, k in enumerate(keys)}
        items = [ImageItem(f"{m.tar}#{m.key}", index[lab] if lab is not None else 0, split, None, m)
                 for m, lab, split in self.raw]
        return keys, items


def _expand(spec: str) -> list[str]:
    from braceexpand import braceexpand

    p = Path(spec).expanduser()
    if p.is_dir():
        return _tars_in(p)
    if p.suffix.lower() == ".txt" and p.is_file():
        lines = _read_lines(p) or []
        paths = [str(Path(ln).expanduser() if Path(ln).expanduser().is_absolute() else p.parent / ln)
                 for ln in lines]
    else:
        paths = [str(Path(x).expanduser()) for x in braceexpand(spec)]
    paths = [os.path.abspath(x) for x in paths]
    missing = [x for x in paths if not os.path.isfile(x)]
    if missing:
        raise InputError(f"{len(missing)} of {len(paths)} shard(s) of {spec} not found, e.g. {missing[0]}; fix the "
                         f"pattern or list")
    if not paths:
        raise InputError(f"{spec} names no shards; give a brace pattern, a .tar, a .txt list or a folder of .tar")
    return paths


def _tars_in(folder: Path) -> list[str]:
    return sorted((str(p) for p in folder.glob("*.tar")), key=natural_key)


def _split_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and _tars_in(Path(e.path)))


def _beside(folder: Path, name: str) -> Path | None:
    for d in (folder, folder.parent):
        if (d / name).is_file():
            return d / name
    return None


def _read_lines(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError):
        return None
    return [ln for ln in lines if ln and not ln.startswith("#")] or None
