"""engine/embedding/sources/webdataset.py: tar shards (cls / json labels, CLIP_benchmark layout) embed exactly
like the same images as a class-folder tree; corrupt and truncated samples are skipped and listed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_datasets import tiny_images, write_clip_benchmark, write_folder_tree, write_tar_shards
from iimm.cli.main import cli
from iimm.engine import score
from iimm.engine.embedding.data import load_image_dataset
from iimm.engine.embedding.extract import embed_dataset
from iimm.errors import InputError

CLASSES = ["cat", "dog", "fish"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def images():
    return tiny_images(classes=3, per_class=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, images):
    return write_folder_tree(tmp_path_factory.mktemp("tree"), images, CLASSES)


def _rows(es) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


def _embed(model_dir, data, **kw):
    kw = {"templates": TEMPLATES, "workers": 0, "batch_size": 4, **kw}
    return embed_dataset(f"local-dir:{model_dir}", data, **kw)


@pytest.mark.parametrize("label", ["cls", "json"])
def test_shards_embed_and_score_like_the_folder_tree(tmp_path, tiny_model_dir, folder, images, label,
                                                     one_torch_thread):
    write_tar_shards(tmp_path / "shards", images, shards=2, label=label, classnames=CLASSES)
    if label == "cls":
        (tmp_path / "shards" / "classnames.txt").write_text("\n".join(CLASSES))
        spec, kw = str(tmp_path / "shards" / "{00000..00001}.tar"), {}
    else:
        spec, kw = str(tmp_path / "shards"), {"label_key": "label"}
    ref, _ = _embed(tiny_model_dir, str(folder), use_cache=False)
    got, info = _embed(tiny_model_dir, spec, use_cache=False, **kw)
    assert got.classnames == CLASSES
    np.testing.assert_array_equal(got.label, ref.label)
    np.testing.assert_array_equal(_rows(got), _rows(ref))
    np.testing.assert_array_equal(got.text, ref.text)
    assert score(got, keys=["iimm", "silhouette_class"]).scores == score(ref, keys=["iimm", "silhouette_class"]).scores
    assert info.skipped == []


def test_workers_stream_shards_in_dataset_order(tmp_path, tiny_model_dir, folder, images):
    write_tar_shards(tmp_path / "s", images, shards=3)
    ref, _ = _embed(tiny_model_dir, str(folder), use_cache=False)
    got, _ = embed_dataset(f"local-dir:{tiny_model_dir}", str(tmp_path / "s"), templates=TEMPLATES, workers=2,
                           batch_size=2, use_cache=False, shard_rows=4)
    np.testing.assert_array_equal(got.label, ref.label)
    np.testing.assert_array_equal(_rows(got), _rows(ref))


def test_txt_list_and_single_tar(tmp_path, images):
    paths = write_tar_shards(tmp_path / "s", images, shards=3)
    (tmp_path / "list.txt").write_text("\n".join(f"s/{p.name}" for p in paths[1:]) + "\n")
    assert len(load_image_dataset(tmp_path / "list.txt")) == 6
    one = load_image_dataset(paths[0])
    assert [it.label for it in one.items] == [0, 0, 0]
    assert one.items[0].path == f"{paths[0]}#sample00000"


def test_clip_benchmark_root_gives_splits_classnames_and_templates(tmp_path, images):
    root = write_clip_benchmark(tmp_path / "wds_tiny", {"train": images[:6], "test": images[6:] + images[:2]},
                                CLASSES, TEMPLATES)
    ds = load_image_dataset(root)
    assert ds.classnames == CLASSES
    assert ds.templates == TEMPLATES
    assert ds.prompts() == TEMPLATES
    assert ds.prompts(templates=["a {}"]) == ["a {}"]
    test = load_image_dataset(root, split="test")
    assert [it.label for it in test.items] == [2, 2, 2, 0, 0]
    assert {it.split for it in ds.items} == {"train", "test"}


def test_corrupt_sample_and_truncated_tar_are_skipped_and_listed(tmp_path, tiny_model_dir, images):
    import io
    import tarfile

    folder = tmp_path / "s"
    write_tar_shards(folder, images, shards=2)
    # shard 0: replace sample 1's image by garbage
    with tarfile.open(folder / "00000.tar") as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(folder / "00000.tar", "w") as tf:
        for name, data in members:
            if name == "sample00001.png":
                data = b"not a png at all"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # shard 1: cut inside its last image
    with tarfile.open(folder / "00001.tar") as tf:
        last = [m for m in tf if m.name.endswith(".png")][-1]
    os.truncate(folder / "00001.tar", last.offset_data + last.size // 2)
    es, info = _embed(tiny_model_dir, str(folder), max_skip_frac=0.5)
    assert info.skipped == [f"{folder / '00000.tar'}#sample00001", f"{folder / '00001.tar'}#{last.name[:-4]}"]
    assert es.n == len(images) - 2
    labels = [c for k, (_, c) in enumerate(images) if k not in (1, 8)]
    np.testing.assert_array_equal(es.label, labels)
    with pytest.raises(InputError, match="could not be read"):
        _embed(tiny_model_dir, str(folder), use_cache=False)


def test_missing_shard_names_it(tmp_path, images):
    write_tar_shards(tmp_path / "s", images, shards=2)
    with pytest.raises(InputError, match=r"1 of 3 shard\(s\).*00002\.tar"):
        load_image_dataset(str(tmp_path / "s" / "{00000..00002}.tar"))


def test_sample_without_label_names_the_fix(tmp_path, images):
    write_tar_shards(tmp_path / "s", images, shards=1, label="json", classnames=CLASSES)
    with pytest.raises(InputError, match="sample00000 has no label.*'klass' field"):
        load_image_dataset(tmp_path / "s", label_key="klass")


def test_store_caches_resumes_and_fingerprints_shards(tmp_path, tiny_model_dir, images, one_torch_thread):
    folder = tmp_path / "s"
    write_tar_shards(folder, images, shards=3)
    store = tmp_path / "store"

    class Stop(Exception):
        pass

    def stop_after_first_shard(stage, done, total):
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        _embed(tiny_model_dir, str(folder), store=store, shard_rows=3, batch_size=3, progress=stop_after_first_shard)
    resumed, info = _embed(tiny_model_dir, str(folder), store=store, shard_rows=3, batch_size=3)
    assert 0 < info.encoded < len(images)
    fresh, _ = _embed(tiny_model_dir, str(folder), use_cache=False)
    np.testing.assert_array_equal(_rows(resumed), _rows(fresh))
    again, info = _embed(tiny_model_dir, str(folder), store=store, shard_rows=3)
    assert info.cached and info.encoded == 0
    os.utime(folder / "00001.tar", ns=(1, 1))  # a touched shard is a new dataset
    _, info = _embed(tiny_model_dir, str(folder), store=store, shard_rows=3)
    assert not info.cached


def test_cli_score_on_shards_with_label_key(tmp_path, tiny_model_dir, folder, images):
    write_tar_shards(tmp_path / "s", images, shards=2, label="json", classnames=CLASSES)
    base = ["score", "--model", f"local-dir:{tiny_model_dir}", "--template", "a photo of a {}.", "--workers", "0",
            "--metrics", "iimm", "--format", "json", "--no-cache"]
    res = CliRunner().invoke(cli, base + ["--data", str(tmp_path / "s"), "--label-key", "label"])
    assert res.exit_code == 0, res.output
    ref = CliRunner().invoke(cli, base + ["--data", str(folder)])
    assert json.loads(res.output)["scores"] == json.loads(ref.output)["scores"]
