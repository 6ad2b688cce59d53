"""engine/embedding/data.py: class folders, manifests, class names, templates, unreadable images."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_tiny import DIGIT_WORDS
from iimm.engine.embedding.data import collate_skipping, load_image_dataset
from iimm.engine.embedding.prompts import DEFAULT_TEMPLATE, list_template_sets, load_template_set, resolve_templates
from iimm.errors import InputError


def _png(path: Path, value: int = 128, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_digits_tree(digits_png_dir):
    ds = load_image_dataset(digits_png_dir)
    expected_keys = sorted(f"digit_{w}" for w in DIGIT_WORDS)
    assert ds.class_keys == expected_keys
    assert ds.classnames == [k.replace("_", " ") for k in expected_keys]
    assert len(ds) == 200
    for it in ds.items:
        assert Path(it.path).parent.name == ds.class_keys[it.label]
        assert os.path.isabs(it.path)
    assert np.bincount(ds.labels).tolist() == [20] * 10


def test_folder_layout_rules(tmp_path):
    _png(tmp_path / "b_class" / "10.png")
    _png(tmp_path / "b_class" / "2.png")
    _png(tmp_path / "b_class" / "nested" / "1.jpg")
    _png(tmp_path / "a" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    _png(tmp_path / "a" / ".hidden.png")
    _png(tmp_path / ".cache" / "x.png")
    (tmp_path / "c_empty").mkdir()
    _png(tmp_path / "stray.png")
    ds = load_image_dataset(tmp_path)
    assert ds.class_keys == ["a", "b_class", "c_empty"]
    assert ds.classnames == ["a", "b class", "c empty"]
    rel = [(os.path.relpath(it.path, tmp_path), it.label) for it in ds.items]
    assert rel == [("a/x.PNG", 0), ("b_class/2.png", 1), ("b_class/10.png", 1), ("b_class/nested/1.jpg", 1)]


def test_natural_class_order(tmp_path):
    for c in ["10", "2", "1"]:
        _png(tmp_path / c / "a.png")
    assert load_image_dataset(tmp_path).class_keys == ["1", "2", "10"]


def test_csv_manifest_with_split_and_domain(tmp_path):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png")
    absolute = tmp_path / "imgs" / "3.png"
    (tmp_path / "m.csv").write_text(
        "path,label,split,domain\n"
        "imgs/0.png,sea_lion,train,a\nimgs/1.png,cat,test,b\nimgs/2.png,cat,train,\n"
        f"{absolute},sea_lion,test,a\n")
    ds = load_image_dataset(tmp_path / "m.csv")
    assert ds.class_keys == ["cat", "sea_lion"] and ds.classnames == ["cat", "sea_lion"]
    assert [it.label for it in ds.items] == [1, 0, 0, 1]
    assert ds.items[0].path == str(tmp_path / "imgs" / "0.png")
    assert [it.domain for it in ds.items] == ["a", "b", None, "a"]
    train = load_image_dataset(tmp_path / "m.csv", split="train")
    assert [Path(it.path).name for it in train.items] == ["0.png", "2.png"]
    assert train.classnames == ds.classnames
    assert len(ds.select(domain="a")) == 2
    with pytest.raises(InputError, match="no images with split 'val'; its splits are test, train"):
        ds.select(split="val")
    with pytest.raises(InputError, match="no images with split 'test' and domain 'c'; its splits are test, train; "
                                         "its domains are a, b"):
        ds.select(split="test", domain="c")
    flat = load_image_dataset(tmp_path / "imgs" / ".." / "m.csv")
    flat.items = [it.__class__(it.path, it.label) for it in flat.items]  # as a class-folder tree: no splits
    with pytest.raises(InputError, match="no images with split 'test'; it has no split column"):
        flat.select(split="test")


def test_jsonl_manifest_integer_labels_with_classnames_list(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    lines = [{"path": "a.png", "label": 2}, {"path": "b.png", "label": 0, "split": "val"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    names = ["zero", "one", "two"]
    ds = load_image_dataset(tmp_path / "m.jsonl", classnames=names)
    assert ds.classnames == names and [it.label for it in ds.items] == [2, 0]
    # without names, integer labels are class keys in natural order
    plain = load_image_dataset(tmp_path / "m.jsonl")
    assert plain.class_keys == ["0", "2"] and [it.label for it in plain.items] == [1, 0]


@pytest.mark.parametrize("name,content,match", [
    ("m.csv", "file,label\nx.png,a\n", "lacks column.*path"),
    ("e.csv", "path,label\nx.png,\n", "row 1"),
    ("b.jsonl", '{"path": "x.png", "label": "a"}\n{oops\n', "b.jsonl:2"),
    ("x.txt", "hi", "neither a folder"),
    ("missing", None, "data not found"),
])
def test_manifest_errors(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=match):
        load_image_dataset(tmp_path / name)


def test_folder_errors(tmp_path):
    _png(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match="no class subfolders"):
        load_image_dataset(tmp_path / "flat")
    (tmp_path / "empty" / "c").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no images"):
        load_image_dataset(tmp_path / "empty")


def test_classnames_file_list_and_mapping(tmp_path, digits_png_dir):
    names = [f"the digit {w}" for w in sorted(DIGIT_WORDS)]
    (tmp_path / "list.json").write_text(json.dumps(names))
    ds = load_image_dataset(digits_png_dir, classnames=tmp_path / "list.json")
    assert ds.classnames == names
    (tmp_path / "map.json").write_text(json.dumps({"digit_one": "1", "0": "eight!"}))
    ds = load_image_dataset(digits_png_dir, classnames=str(tmp_path / "map.json"))
    assert ds.classnames[ds.class_keys.index("digit_one")] == "1"
    assert ds.classnames[0] == "eight!" and ds.class_keys[0] == "digit_eight"
    (tmp_path / "short.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(InputError, match="2 class names given for 10 classes"):
        load_image_dataset(digits_png_dir, classnames=tmp_path / "short.json")
    with pytest.raises(InputError, match="key 'digit_ten'"):
        load_image_dataset(digits_png_dir, classnames={"digit_ten": "10"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read class names"):
        load_image_dataset(digits_png_dir, classnames=tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        load_image_dataset(digits_png_dir, classnames=tmp_path / "nope.json")


def test_templates(tmp_path):
    assert resolve_templates() == [DEFAULT_TEMPLATE]
    assert resolve_templates(["a {}.", "b {}.", "a {}."]) == ["a {}.", "b {}."]
    (tmp_path / "t.txt").write_text("# prompts\nitap of a {}.\n\n  a sketch of a {}.\n")
    (tmp_path / "t.json").write_text(json.dumps(["x {} y"]))
    got = resolve_templates(["a {}."], tmp_path / "t.txt", "mnist")
    assert got == ["a {}.", "itap of a {}.", "a sketch of a {}.", 'a photo of the number: "{}".']
    assert resolve_templates(template_file=tmp_path / "t.json") == ["x {} y"]
    with pytest.raises(InputError, match="exactly one"):
        resolve_templates(["no placeholder"])
    with pytest.raises(InputError, match="exactly one"):
        resolve_templates(["{} and {}"])
    with pytest.raises(InputError, match="unknown template set 'imagenet21k'"):
        resolve_templates(template_set="imagenet21k")


def test_builtin_template_sets_are_well_formed():
    sets = list_template_sets()
    assert {"default", "eurosat", "gtsrb", "mnist", "dtd", "resisc45"} <= set(sets)
    for name in sets:
        templates = load_template_set(name)
        assert templates and len(set(templates)) == len(templates)
        assert all(t.count("{}") == 1 for t in templates)
    assert load_template_set("default") == [DEFAULT_TEMPLATE]
    assert load_template_set("EuroSAT")[0] == "a centered satellite photo of {}."


def test_torch_dataset_skips_unreadable(tmp_path):
    _png(tmp_path / "a" / "0.png", 10)
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _png(tmp_path / "b" / "0.png", 200)
    full = tmp_path / "b" / "1.png"
    _png(full, 50, size=(64, 64))
    truncated = tmp_path / "b" / "2.png"
    truncated.write_bytes(full.read_bytes()[:60])
    ds = load_image_dataset(tmp_path)

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)

    tds = ds.torch_dataset(to_tensor)
    batch = [tds[i] for i in range(len(tds))]
    images, labels, indices, skipped = collate_skipping(batch)
    names = [Path(p).relative_to(tmp_path).as_posix() for p in ds.paths]
    assert names == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/2.png"]
    assert skipped == [1, 4]
    assert indices.tolist() == [0, 2, 3] and labels.tolist() == [0, 1, 1]
    assert images.shape == (3, 3, 4, 4)
    assert images[0].max() == 10 and images[1].min() == 200 and images[2].max() == 50
    none = collate_skipping([tds[1]])
    assert none[0] is None and none[3] == [1] and none[2].numel() == 0


def test_fingerprint_tracks_files(tmp_path, digits_png_dir):
    root = tmp_path / "d"
    shutil.copytree(digits_png_dir, root)
    first = load_image_dataset(root).fingerprint()
    assert load_image_dataset(root).fingerprint() == first
    victim = root / "digit_one" / "3.png"
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = load_image_dataset(root).fingerprint()
    assert touched != first
    victim.unlink()
    assert load_image_dataset(root).fingerprint() not in (first, touched)
    renamed = load_image_dataset(root, classnames={"digit_two": "2"})
    assert renamed.fingerprint() == load_image_dataset(root).fingerprint()
