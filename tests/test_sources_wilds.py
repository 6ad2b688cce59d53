"""engine/embedding/sources/wilds.py: wilds:NAME@ROOT read by the wilds package from tiny copies of its layout;
official splits and the domain column select the right rows; the images embed like a class-folder tree."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures_datasets as fx
from iimm.engine.embedding.data import load_image_dataset
from iimm.engine.embedding.extract import embed_dataset
from iimm.errors import InputError

pytest.importorskip("wilds")

SPLITS = ["train", "id_val", "test", "val"]  # camelyon17's split ids 0..3


@pytest.fixture(scope="module")
def camelyon(tmp_path_factory):
    images = fx.tiny_images(classes=2, per_class=6)
    # centers 0 and 3 are in-domain (split 0 train / 1 id_val); 1 is OOD val, 2 OOD test
    rows = [(im, c, [0, 3, 0, 1, 2, 3][k % 6], [0, 1, 0, 3, 2, 0][k % 6]) for k, (im, c) in enumerate(images)]
    return fx.write_wilds_camelyon17(tmp_path_factory.mktemp("wilds"), rows), rows


def test_camelyon17_splits_and_hospital_domains(camelyon):
    root, rows = camelyon
    ds = load_image_dataset(f"wilds:camelyon17@{root}")
    assert ds.classnames == ["normal lymph node", "lymph node tumor tissue"]
    assert [it.split for it in ds.items] == [SPLITS[s] for *_, s in rows]
    assert [it.domain for it in ds.items] == [str(c) for _, _, c, _ in rows]
    assert ds.labels.tolist() == [t for _, t, _, _ in rows]
    ood = load_image_dataset(f"wilds:camelyon17@{root}", split="test")
    assert {it.domain for it in ood.items} == {"2"} and len(ood) == 2
    h3 = load_image_dataset(f"wilds:camelyon17@{root}", domain="3")
    assert len(h3) == 4


def test_iwildcam_location_domain_and_folder_equality(tmp_path, tiny_model_dir, one_torch_thread):
    images = fx.tiny_images(classes=3, per_class=2)
    splits = ["train", "id_test", "train", "val", "test", "id_val"]
    rows = [(im, c, k % 2, splits[k]) for k, (im, c) in enumerate(images)]
    fx.write_wilds_iwildcam(tmp_path / "w", rows, ["empty", "deer", "fox"])
    ds = load_image_dataset(f"wilds:iwildcam@{tmp_path / 'w'}")
    assert ds.classnames == ["empty", "deer", "fox"]
    assert [it.domain for it in ds.items] == ["0", "1"] * 3
    assert [it.split for it in ds.items] == splits
    loc1 = load_image_dataset(f"wilds:iwildcam@{tmp_path / 'w'}", domain="1")
    assert loc1.labels.tolist() == [0, 1, 2]
    # the same jpg files as a class-folder tree
    tree = tmp_path / "tree"
    import shutil
    for it in ds.items:  # folders named so that their natural order is the class order
        folder = tree / f"{it.label}_{ds.classnames[it.label]}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(it.path, folder / it.path.rsplit("/", 1)[-1])
    kw = dict(workers=0, batch_size=4, use_cache=False, templates=["a photo of {}."])
    got, _ = embed_dataset(f"local-dir:{tiny_model_dir}", ds, **kw)
    ref, _ = embed_dataset(f"local-dir:{tiny_model_dir}", str(tree), classnames=["empty", "deer", "fox"], **kw)
    order = np.argsort(got.label, kind="stable")
    np.testing.assert_array_equal(np.concatenate(got.image_blocks)[order], np.concatenate(ref.image_blocks))
    np.testing.assert_array_equal(got.text, ref.text)


def test_missing_wilds_folder_names_the_layout(tmp_path):
    with pytest.raises(InputError, match=r"iwildcam_v2.0/\{RELEASE_v2.0.txt, metadata.csv"):
        load_image_dataset(f"wilds:iwildcam@{tmp_path}")
    with pytest.raises(InputError, match="wilds:poverty is not a WILDS dataset"):
        load_image_dataset(f"wilds:poverty@{tmp_path}")


@pytest.fixture(scope="module")
def iwildcam(tmp_path_factory):
    images = fx.tiny_images(classes=2, per_class=10)
    cycle = ["train", "train", "train", "id_val", "id_test", "val", "test", "train", "id_test", "test"]
    rows = [(im, c, k % 3, cycle[k % 10]) for k, (im, c) in enumerate(images)]
    return fx.write_wilds_iwildcam(tmp_path_factory.mktemp("iw"), rows, ["empty", "deer"])


def test_finetune_splits_follow_the_wilds_recipe(iwildcam):
    from iimm.engine.finetune.subsets import split_task

    spec = f"wilds:iwildcam@{iwildcam}"
    s = split_task(spec)
    assert {it.split for it in s.train.items} == {"train"} and len(s.train) == 8
    assert {it.split for it in s.val.items} == {"id_val"}
    assert {it.split for it in s.test.items} == {"id_test"} and len(s.test) == 4
    assert {it.split for it in s.ood_test.items} == {"test"} and len(s.ood_test) == 4
    assert {it.split for it in s.pool.items} == {"train", "id_val"}
    ood = split_task(spec, select_on="ood")
    assert {it.split for it in ood.val.items} == {"val"} and "out of domain" in ood.val_source


def test_cli_finetune_reports_id_test_and_test_side_by_side(tmp_path, tiny_model_dir, iwildcam, one_torch_thread):
    from click.testing import CliRunner
    import json

    from iimm.cli.finetune import finetune as finetune_command

    args = ["--model", f"local-dir:{tiny_model_dir}", "--data", f"wilds:iwildcam@{iwildcam}", "--method", "bitfit",
            "--fraction", "0.5", "--select-on", "ood", "--epochs", "1", "--workers", "0", "--store",
            str(tmp_path / "s"), "--backend", "torch", "--no-progress", "--format", "json"]
    res = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    sides = record["test_splits"]
    assert sides["id_test"] == {"before": record["zeroshot_acc"], "after": record["finetuned_acc"]}
    assert set(sides["test"]) == {"before", "after"} and 0 <= sides["test"]["after"] <= 1
    assert record["task"] == "iwildcam" and record["images"]["train"] == 8
    assert record["per_seed"][0]["train_images"] == 4  # --fraction 0.5 of each class of train
    assert record["hparams"]["templates"] == json.loads(
        (__import__("pathlib").Path(__import__("iimm").__file__).parent / "engine/embedding/templates/iwildcam.json")
        .read_text())


def test_fmow_regions_and_time_splits(tmp_path):
    im = fx.tiny_images(classes=1, per_class=1)[0][0]
    rows = [(im, "airport", "USA", "train", 2010), (im, "barn", "FRA", "train", 2011),
            (im, "airport", "FRA", "val", 2011), (im, "barn", "USA", "test", 2012),
            (im, "barn", "USA", "val", 2014), (im, "airport", "FRA", "test", 2017)]
    fx.write_wilds_fmow(tmp_path, rows)
    ds = load_image_dataset(f"wilds:fmow@{tmp_path}")
    assert [it.split for it in ds.items] == ["train", "train", "id_val", "id_test", "val", "test"]
    assert [it.domain for it in ds.items] == ["Americas", "Europe", "Europe", "Americas", "Americas", "Europe"]
    assert [ds.classnames[y] for y in ds.labels] == ["airport", "barn", "airport", "barn", "barn", "airport"]
    assert len(ds.classnames) == 62 and ds.items[5].path.endswith("fmow_v1.1/images/rgb_img_5.png")
    europe = load_image_dataset(f"wilds:fmow@{tmp_path}", domain="Europe", split="train")
    assert len(europe) == 1
