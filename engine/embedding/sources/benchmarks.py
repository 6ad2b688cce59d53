"""The papers' benchmarks by name: `--data NAME@ROOT`, each with the IIMM paper's train/test split, its
class names and its built-in prompt templates.

ROOT is the folder given to torchvision's dataset class as `root` (what `download=True` fills), or, for
the benchmarks torchvision does not read, the standard folder layout listed in `BENCHMARKS`. Items are
tagged with their split (train / test, and DTD's val), so `--split` selects one and fine-tuning and
calibration train on train and test on test by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ....errors import InputError
from ..data import ImageDataset, ImageItem, _scan_class_folders, apply_classnames
from ..prompts import load_template_set
from . import torchvision_benchmarks as tv


@dataclass(frozen=True)
class Benchmark:
    """name: the NAME of NAME@ROOT; needs: what must be under ROOT (paths relative to it, `|` between
    alternatives); splits: the splits it has; reader: how it is read; templates: the built-in set."""

    name: str
    needs: tuple[str, ...]
    splits: str
    reader: str
    templates: str
    load: Callable


def _imagenet_synsets(which: str = "imagenet") -> list[str]:
    from importlib import resources
    try:
        text = resources.files("timm.data._info").joinpath(f"{which}_synsets.txt").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise InputError("the ImageNet synset list ships with timm, which is not installed; pip install timm") from exc
    return text.split()


def _imagenet_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


def _wnid_folder(folder: Path, split: str = "test"):
    """A folder of ImageNet wnid class folders (all 1000, or the 200 of ImageNet-R/A)."""
    keys, _, items = _scan_class_folders(folder)
    synsets = _imagenet_synsets()
    index = {w: i for i, w in enumerate(synsets)}
    unknown = [k for k in keys if k not in index]
    if unknown:
        raise InputError(f"{folder}: class folder {unknown[0]!r} is not an ImageNet wnid (n01440764, …)")
    names = _imagenet_names()
    items = [ImageItem(it.path, index[keys[it.label]], split) for it in items]
    return list(synsets), names, items, None


def _imagenet_v2(folder: Path):
    """ImageNetV2: ROOT/imagenetv2-matched-frequency-format-val/<class index>/<image>."""
    keys, _, items = _scan_class_folders(folder)
    bad = [k for k in keys if not k.isdigit() or int(k) >= 1000]
    if bad:
        raise InputError(f"{folder}: class folder {bad[0]!r} is not a class index 0..999")
    items = [ImageItem(it.path, int(keys[it.label]), "test") for it in items]
    return [str(i) for i in range(1000)], _imagenet_names(), items, None


def _resisc45(root: Path):
    """RESISC45 as torchgeo lays it out: ROOT/NWPU-RESISC45/<class>/<class>_NNN.jpg and the split files
    ROOT/resisc45-{train,val,test}.txt (file names); val rows choose the epoch."""
    keys, display, all_items = _scan_class_folders(root / "NWPU-RESISC45")
    split_of = {}
    for split in ("train", "val", "test"):
        f = root / f"resisc45-{split}.txt"
        if f.is_file():
            split_of.update((name, split) for name in f.read_text().split())
    items = [ImageItem(it.path, it.label, split_of[os.path.basename(it.path)]) for it in all_items
             if os.path.basename(it.path) in split_of]
    items.sort(key=lambda it: ("train", "val", "test").index(it.split))
    return keys, display, items, None


def _sun397(root: Path):
    parts = next((d for d in (root / "SUN397", root) if (d / "Training_01.txt").is_file()), root)
    return tv.sun397(root, parts)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("cifar10", ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch",
                          "cifar-10-batches-py/batches.meta"), "train, test", "torchvision CIFAR10", "cifar10",
              lambda r: tv.cifar(r)),
    Benchmark("cifar100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
              "train, test", "torchvision CIFAR100", "cifar100", lambda r: tv.cifar(r, hundred=True)),
    Benchmark("mnist", ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
                        "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"),
              "train, test", "torchvision MNIST", "mnist", tv.mnist),
    Benchmark("svhn", ("train_32x32.mat", "test_32x32.mat"), "train, test", "torchvision SVHN", "svhn", tv.svhn),
    Benchmark("stl10", ("stl10_binary/train_X.bin", "stl10_binary/train_y.bin", "stl10_binary/test_X.bin",
                        "stl10_binary/test_y.bin", "stl10_binary/class_names.txt"),
              "train, test", "torchvision STL10", "stl10", tv.stl10),
    Benchmark("gtsrb", ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
              "train, test", "torchvision GTSRB", "gtsrb", tv.gtsrb),
    Benchmark("eurosat", ("eurosat/2750",), "train, test (stratified 10 %, seed 0)", "torchvision EuroSAT",
              "eurosat", tv.eurosat),
    Benchmark("dtd", ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt",
                      "dtd/dtd/labels/test1.txt"), "train, val, test (partition 1)", "torchvision DTD", "dtd", tv.dtd),
    Benchmark("resisc45", ("NWPU-RESISC45", "resisc45-train.txt", "resisc45-test.txt"),
              "train, val, test (its split files)", "folder layout (torchgeo's)", "resisc45", _resisc45),
    Benchmark("sun397", ("SUN397/ClassName.txt", "SUN397/Training_01.txt|Training_01.txt",
                         "SUN397/Testing_01.txt|Testing_01.txt"), "train, test (Training_01 / Testing_01)",
              "torchvision SUN397", "sun397", _sun397),
    Benchmark("cars", ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                       "stanford_cars/cars_test_annos_withlabels.mat", "stanford_cars/cars_train",
                       "stanford_cars/cars_test"), "train, test", "torchvision StanfordCars", "cars", tv.cars),
    Benchmark("imagenet", ("val",), "test (the val folder, <wnid>/ class folders)", "folder layout", "imagenet",
              lambda r: _wnid_folder(r / "val")),
    Benchmark("imagenet-v2", ("imagenetv2-matched-frequency-format-val",), "test (<class index>/ folders)",
              "folder layout", "imagenet", lambda r: _imagenet_v2(r / "imagenetv2-matched-frequency-format-val")),
    Benchmark("imagenet-sketch", ("sketch",), "test (<wnid>/ folders)", "folder layout", "imagenet",
              lambda r: _wnid_folder(r / "sketch")),
    Benchmark("imagenet-r", ("imagenet-r",), "test (200 <wnid>/ folders)", "folder layout", "imagenet",
              lambda r: _wnid_folder(r / "imagenet-r")),
    Benchmark("imagenet-a", ("imagenet-a",), "test (200 <wnid>/ folders)", "folder layout", "imagenet",
              lambda r: _wnid_folder(r / "imagenet-a")),
]}


def missing_files(name: str, root: str | os.PathLike) -> list[str]:
    """What BENCHMARKS[name] needs under root and is not there (each as the path(s) looked for)."""
    base = Path(root).expanduser()
    out = []
    for need in BENCHMARKS[name].needs:
        options = [base / n for n in need.split("|")]
        if not any(p.exists() for p in options):
            out.append(" or ".join(str(p) for p in options))
    return out


def load_benchmark(name: str, root: str, classnames=None) -> ImageDataset:
    """The ImageDataset of NAME@ROOT, every split tagged; `classnames` renames its classes."""
    bench = BENCHMARKS[name]
    base = Path(root).expanduser().resolve()
    missing = missing_files(name, base)
    if missing:
        raise InputError(f"{name}@{root}: {missing[0]} not found ({bench.reader} layout: "
                         f"{', '.join(bench.needs)} under ROOT); download it there (torchvision's download=True "
                         f"writes this layout) or point @ROOT at the folder that holds it")
    try:
        keys, display, items, reader = bench.load(base)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise InputError(f"{name}@{root}: cannot read it with {bench.reader} ({exc}); check the files under "
                         f"{base}") from exc
    if not items:
        raise InputError(f"{name}@{root}: no images found under {base}")
    names = apply_classnames(keys, display, classnames)
    return ImageDataset(f"{name}@{base}", items, names, keys, reader=reader,
                        templates=load_template_set(bench.templates))
