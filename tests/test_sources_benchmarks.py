"""engine/embedding/sources/benchmarks.py: NAME@ROOT read by torchvision's classes from tiny copies of their
on-disk formats embeds exactly like the same images as a class-folder tree, with the paper's splits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import fixtures_datasets as fx
from iimm.engine import score
from iimm.engine.embedding.data import load_image_dataset
from iimm.engine.embedding.prompts import load_template_set
from iimm.engine.embedding.extract import embed_dataset
from iimm.engine.embedding.sources.classnames import EUROSAT, GTSRB
from iimm.errors import InputError

TEN = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = [str(i) for i in range(10)]


def _split_images(size=32, gray=False):
    imgs = fx.tiny_images(classes=3, per_class=4, size=size)
    if gray:
        imgs = [(np.repeat(im[..., :1], 3, axis=2), c) for im, c in imgs]
    train = [x for k, x in enumerate(imgs) if k % 4 < 2]
    test = [x for k, x in enumerate(imgs) if k % 4 >= 2]
    return train, test


def _write(name, root):
    """(spec, test images, class names as folder names, the names the benchmark displays)."""
    size = {"stl10": 96, "mnist": 28}.get(name, 32)
    train, test = _split_images(size, gray=name == "mnist")
    if name in ("cifar10", "cifar100"):
        fx.write_cifar(root, train, test, TEN, hundred=name == "cifar100")
        return test, TEN, TEN
    if name == "mnist":
        fx.write_mnist(root, train, test)
        return [(im[..., 0], c) for im, c in test], DIGITS, DIGITS
    if name == "svhn":
        fx.write_svhn(root, train, test)
        return test, DIGITS, DIGITS
    if name == "stl10":
        fx.write_stl10(root, train, test, TEN)
        return test, TEN, TEN


def _rows(es):
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


def _write_tree(folder, images, classes):
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for k, (im, c) in enumerate(images):
        Image.fromarray(im).save(folder / classes[c] / f"{k}.png")
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "svhn", "stl10"])
def test_binary_benchmark_embeds_like_its_folder_tree(tmp_path, tiny_model_dir, name, one_torch_thread):
    test, folders, names = _write(name, tmp_path / "root")
    tree = _write_tree(tmp_path / "tree", test, folders)
    spec = f"{name}@{tmp_path / 'root'}"
    ds = load_image_dataset(spec)
    assert ds.classnames == names
    assert [it.split for it in ds.items] == ["train"] * 6 + ["test"] * 6
    assert ds.templates == load_template_set(name)
    model = f"local-dir:{tiny_model_dir}"
    kw = dict(workers=0, batch_size=4, templates=["a photo of a {}."], store=tmp_path / "store")
    got, info = embed_dataset(model, spec, split="test", **kw)
    ref, _ = embed_dataset(model, str(tree), classnames=names, use_cache=False, **kw)
    np.testing.assert_array_equal(got.label, [c for _, c in test])
    np.testing.assert_array_equal(_rows(got), _rows(ref))
    np.testing.assert_array_equal(got.text, ref.text)
    keys = ["iimm", "silhouette_class", "zeroshot_top1"]
    assert score(got, keys=keys).scores == score(ref, keys=keys).scores
    again, info = embed_dataset(model, spec, split="test", **kw)
    assert info.cached
    first = ds.reader.files()[0]
    os.utime(first, ns=(1, 1))
    _, info = embed_dataset(model, spec, split="test", **kw)
    assert not info.cached


def test_eurosat_holds_out_a_stratified_tenth(tmp_path):
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    images = [(im, c % 10) for im, c in zip(*zip(*fx.tiny_images(classes=1, per_class=200)))]
    images = [(im, k % 10) for k, (im, _) in enumerate(images)]  # 20 per class
    fx.write_eurosat(tmp_path, images, classes)
    ds = load_image_dataset(f"eurosat@{tmp_path}")
    assert ds.classnames == EUROSAT
    test = ds.select(split="test")
    assert np.bincount(test.labels, minlength=10).tolist() == [2] * 10
    again = load_image_dataset(f"eurosat@{tmp_path}", split="test")
    assert again.paths == test.paths  # a fixed seed


def test_dtd_partition_one_and_gtsrb(tmp_path):
    train, test = _split_images()
    classes = ["banded", "blotchy", "braided"]
    fx.write_dtd(tmp_path / "d", {"train": train[:4], "val": train[4:], "test": test}, classes)
    ds = load_image_dataset(f"dtd@{tmp_path / 'd'}")
    assert ds.classnames == classes
    assert [it.split for it in ds.items] == ["train"] * 4 + ["val"] * 2 + ["test"] * 6
    assert ds.labels.tolist() == [c for _, c in train + test]
    fx.write_gtsrb(tmp_path / "g", train + [(train[0][0], c) for c in range(3, 43)], test)
    g = load_image_dataset(f"gtsrb@{tmp_path / 'g'}", split="test")
    assert g.classnames == GTSRB and g.labels.tolist() == [c for _, c in test]


def test_missing_files_are_named_with_where_they_were_looked_for(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(InputError, match=r"cifar-10-batches-py/data_batch_1 not found \(torchvision CIFAR10"):
        load_image_dataset(f"cifar10@{tmp_path}")
    with pytest.raises(InputError, match="not a dataset iimm knows by name.*cifar10"):
        load_image_dataset(f"cifar11@{tmp_path}")


def _png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def test_folder_layouts_resisc45_sun397_imagenet_variants(tmp_path):
    from importlib import resources

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    im = fx.tiny_images(classes=1, per_class=1)[0][0]
    r = tmp_path / "resisc"
    for c in ("airplane", "baseball_diamond"):
        for k in (1, 2, 3):
            _png(r / "NWPU-RESISC45" / c / f"{c}_{k:03d}.jpg", im)
    (r / "resisc45-train.txt").write_text("airplane_001.jpg\nbaseball_diamond_001.jpg\nairplane_002.jpg\n")
    (r / "resisc45-test.txt").write_text("airplane_003.jpg\nbaseball_diamond_003.jpg\n")
    ds = load_image_dataset(f"resisc45@{r}")
    assert ds.classnames == ["airplane", "baseball diamond"]
    assert [(os.path.basename(it.path), it.split) for it in ds.items] == [
        ("airplane_001.jpg", "train"), ("airplane_002.jpg", "train"), ("baseball_diamond_001.jpg", "train"),
        ("airplane_003.jpg", "test"), ("baseball_diamond_003.jpg", "test")]

    s = tmp_path / "sun" / "SUN397"
    (s).mkdir(parents=True)
    (s / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    for rel in ("a/abbey/sun_a1.jpg", "a/abbey/sun_a2.jpg", "b/bakery/shop/sun_b1.jpg", "b/bakery/shop/sun_b2.jpg"):
        _png(s / rel, im)
    (s / "Training_01.txt").write_text("/a/abbey/sun_a1.jpg\n/b/bakery/shop/sun_b1.jpg\n")
    (s / "Testing_01.txt").write_text("/b/bakery/shop/sun_b2.jpg\n")
    sun = load_image_dataset(f"sun397@{tmp_path / 'sun'}")
    assert sun.classnames == ["abbey", "bakery shop"]
    assert [(it.label, it.split) for it in sun.items] == [(0, "train"), (1, "train"), (1, "test")]

    synsets = resources.files("timm.data._info").joinpath("imagenet_synsets.txt").read_text().split()
    _png(tmp_path / "inr" / "imagenet-r" / synsets[7] / "a.jpg", im)
    _png(tmp_path / "inr" / "imagenet-r" / synsets[2] / "b.jpg", im)
    inr = load_image_dataset(f"imagenet-r@{tmp_path / 'inr'}")
    assert inr.labels.tolist() == [2, 7] and len(inr.classnames) == 1000
    assert inr.classnames[7] == IMAGENET_CLASSNAMES[7]
    _png(tmp_path / "v2" / "imagenetv2-matched-frequency-format-val" / "999" / "x.jpeg", im)
    assert load_image_dataset(f"imagenet-v2@{tmp_path / 'v2'}", split="test").labels.tolist() == [999]
    (tmp_path / "bad" / "imagenet-a" / "not-a-wnid").mkdir(parents=True)
    with pytest.raises(InputError, match="'not-a-wnid' is not an ImageNet wnid"):
        load_image_dataset(f"imagenet-a@{tmp_path / 'bad'}")


def test_stanford_cars_annotations(tmp_path):
    train, test = _split_images()
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    fx.write_stanford_cars(tmp_path, train, test, names)
    ds = load_image_dataset(f"cars@{tmp_path}")
    assert ds.classnames == names
    assert [(it.label, it.split) for it in ds.items] == [(c, "train") for _, c in train] + [(c, "test") for _, c in test]
    assert ds.items[0].path.endswith("stanford_cars/cars_train/00000.jpg")
