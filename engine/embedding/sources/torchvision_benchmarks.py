"""Benchmarks read by torchvision's dataset classes (download=False) from the layout they leave on disk.

Binary formats (CIFAR pickles, MNIST idx, SVHN .mat, STL10 binaries) load into memory through the
torchvision class and are handed out by `ArrayReader`; the others (GTSRB, EuroSAT, DTD, SUN397,
Stanford Cars) give their sample files, which become ordinary file items. Files are checked for
presence, not for torchvision's md5 sums (a tiny test copy has other sums; the store fingerprints
the files by size and mtime).
Each loader returns `(class keys, class names, items, files, reader)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data import ImageItem, UnreadableImage
from .classnames import DIGITS, EUROSAT, GTSRB

EUROSAT_TEST_FRACTION = 0.1
EUROSAT_SEED = 0


def _no_md5(files):
    return [[name, None] for name, *_ in files]


class ArrayReader:
    """Images of torchvision datasets held in memory, one dataset object per split (built on first use)."""

    def __init__(self, build: dict, files: list[str]):
        self.build, self._files, self._loaded = build, files, {}

    def files(self) -> list[str]:
        return list(self._files)

    def dataset(self, split: str):
        if split not in self._loaded:
            self._loaded[split] = self.build[split]()
        return self._loaded[split]

    def load(self, item: ImageItem):
        split, i = item.ref
        try:
            return self.dataset(split)[i][0].convert("RGB")
        except (IndexError, ValueError, OSError) as exc:
            raise UnreadableImage(f"{item.path}: {exc}") from exc


def _array_items(name: str, root: Path, reader: ArrayReader, splits: tuple[str, ...]) -> list[ImageItem]:
    items = []
    for split in splits:
        ds = reader.dataset(split)
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = ds.labels
        for i, t in enumerate(np.asarray(targets).tolist()):
            items.append(ImageItem(f"{name}@{root}:{split}/{i}", int(t), split, None, (split, i)))
    return items


def cifar(root: Path, hundred: bool = False):
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR100 if hundred else CIFAR10

    class Present(base):
        train_list = _no_md5(base.train_list)
        test_list = _no_md5(base.test_list)
        meta = {**base.meta, "md5": None}

    folder = root / base.base_folder
    files = [str(folder / f) for f, _ in Present.train_list + Present.test_list] + [str(folder / base.meta["filename"])]
    reader = ArrayReader({s: (lambda s=s: Present(str(root), train=s == "train")) for s in ("train", "test")}, files)
    names = [c.replace("_", " ") for c in reader.dataset("test").classes]
    return names, names, _array_items("cifar100" if hundred else "cifar10", root, reader, ("train", "test")), reader


def mnist(root: Path):
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    files = [str(raw / f"{p}-{k}-idx{d}-ubyte") for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    reader = ArrayReader({s: (lambda s=s: MNIST(str(root), train=s == "train")) for s in ("train", "test")}, files)
    return DIGITS, DIGITS, _array_items("mnist", root, reader, ("train", "test")), reader


def svhn(root: Path):
    from torchvision.datasets import SVHN

    class Present(SVHN):
        split_list = {k: [url, name, None] for k, (url, name, _) in SVHN.split_list.items()}

    files = [str(root / f"{s}_32x32.mat") for s in ("train", "test")]
    reader = ArrayReader({s: (lambda s=s: Present(str(root), split=s)) for s in ("train", "test")}, files)
    return DIGITS, DIGITS, _array_items("svhn", root, reader, ("train", "test")), reader


def stl10(root: Path):
    from torchvision.datasets import STL10

    class Present(STL10):
        train_list = _no_md5([f for f in STL10.train_list if not f[0].startswith("unlabeled")])
        test_list = _no_md5(STL10.test_list)

    folder = root / STL10.base_folder
    files = [str(folder / f) for f, _ in Present.train_list + Present.test_list] + [str(folder / "class_names.txt")]
    reader = ArrayReader({s: (lambda s=s: Present(str(root), split=s)) for s in ("train", "test")}, files)
    names = list(reader.dataset("test").classes)
    return names, names, _array_items("stl10", root, reader, ("train", "test")), reader


def gtsrb(root: Path):
    from torchvision.datasets import GTSRB as TvGTSRB

    items = [ImageItem(str(p), int(t), split) for split in ("train", "test")
             for p, t in TvGTSRB(str(root), split=split)._samples]
    return [f"{i:05d}" for i in range(len(GTSRB))], list(GTSRB), items, None


def eurosat(root: Path):
    """torchvision's EuroSAT (ROOT/eurosat/2750/<class>/*.jpg); test: a stratified 10 % per class, seed 0."""
    from torchvision.datasets import EuroSAT

    ds = EuroSAT(str(root))
    labels = np.asarray(ds.targets)
    test = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(EUROSAT_SEED)
    for c in range(len(ds.classes)):
        rows = np.flatnonzero(labels == c)
        held = int(np.ceil(EUROSAT_TEST_FRACTION * len(rows)))
        test[rng.permutation(rows)[:held]] = True
    items = [ImageItem(str(p), int(t), "test" if test[i] else "train") for i, (p, t) in enumerate(ds.samples)]
    names = list(EUROSAT) if len(ds.classes) == len(EUROSAT) else [c for c in ds.classes]
    return list(ds.classes), names, items, None


def dtd(root: Path):
    """Partition 1: train1 (split train), val1 (split val, chooses the epoch), test1 (split test)."""
    from torchvision.datasets import DTD

    keys = sorted(e.name for e in os.scandir(root / "dtd" / "dtd" / "images") if e.is_dir())
    index = {c: i for i, c in enumerate(keys)}
    items = []
    for split in ("train", "val", "test"):
        ds = DTD(str(root), split=split, partition=1)
        items += [ImageItem(str(p), index[ds.classes[t]], split) for p, t in zip(ds._image_files, ds._labels)]
    return keys, [k.replace("_", " ") for k in keys], items, None


def sun397(root: Path, partitions: Path):
    """torchvision's SUN397 (ROOT/SUN397/ClassName.txt + images), split by Training_01 / Testing_01."""
    from torchvision.datasets import SUN397

    ds = SUN397(str(root))
    data_dir = Path(ds._data_dir)
    label_of = {str(Path(p).resolve()): t for p, t in zip(ds._image_files, ds._labels)}
    items = []
    for split, name in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        for line in (partitions / name).read_text().split():
            path = str((data_dir / line.lstrip("/")).resolve())
            if path in label_of:
                items.append(ImageItem(path, label_of[path], split))
    names = [c.replace("/", " ").replace("_", " ") for c in ds.classes]
    return list(ds.classes), names, items, None


def cars(root: Path):
    from torchvision.datasets import StanfordCars

    items, keys = [], None
    for split in ("train", "test"):
        ds = StanfordCars(str(root), split=split)
        keys = keys or [str(c) for c in ds.classes]
        items += [ImageItem(str(p), int(t), split) for p, t in ds._samples]
    return keys, list(keys), items, None
