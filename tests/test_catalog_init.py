"""`iimm catalog init` / `iimm catalog list`: the known datasets under a data root become a catalog that
`iimm screen` reads as it is."""

from __future__ import annotations

import json

from click.testing import CliRunner

import fixtures_datasets as fx
from iimm.cli.main import cli
from iimm.engine.calibration.catalog import load_catalog
from iimm.errors import InputError

TEN = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _root(tmp_path):
    images = fx.tiny_images(classes=3, per_class=2)
    fx.write_cifar(tmp_path / "data", images[::2], images[1::2], TEN)
    fx.write_mnist(tmp_path / "data" / "mnist", images[::2], images[1::2])  # at ROOT/<name> too
    fx.write_clip_benchmark(tmp_path / "data" / "wds_pets", {"test": images}, ["cat", "dog", "fish"],
                            ["a photo of a {}, a pet."])
    (tmp_path / "data" / "svhn").mkdir()  # incomplete: not listed
    return tmp_path / "data"


def test_init_writes_a_catalog_that_screen_reads(tmp_path, tiny_model_dir, one_torch_thread):
    root = _root(tmp_path)
    out = tmp_path / "catalog.toml"
    res = CliRunner().invoke(cli, ["catalog", "init", "--root", str(root), "--output", str(out)])
    assert res.exit_code == 0, res.output
    cat = load_catalog(out)
    assert [d.name for d in cat] == ["cifar10", "mnist", "pets"]
    cifar, mnist, pets = cat
    assert str(cifar.path) == f"cifar10@{root}" and cifar.test_split == "test"
    assert str(mnist.path) == f"mnist@{root / 'mnist'}" and mnist.classnames == tuple(str(i) for i in range(10))
    assert cifar.classnames == tuple(TEN) and cifar.templates[0] == "a photo of a {}."
    assert pets.probe_only and pets.templates == ("a photo of a {}, a pet.",)
    screen = CliRunner().invoke(cli, ["screen", str(out), "--model", f"local-dir:{tiny_model_dir}", "--workers", "0",
                                      "--format", "json", "--store", str(tmp_path / "s")])
    assert screen.exit_code == 0, screen.output
    rows = json.loads(screen.stdout)
    assert sorted(r["dataset"] for r in (rows if isinstance(rows, list) else rows["rows"])) == ["cifar10", "mnist"]


def test_init_on_an_empty_root_and_list(tmp_path):
    res = CliRunner().invoke(cli, ["catalog", "init", "--root", str(tmp_path)])
    assert isinstance(res.exception, InputError) and "no dataset iimm knows by name" in str(res.exception)
    listed = CliRunner().invoke(cli, ["catalog", "list"])
    assert listed.exit_code == 0
    assert "cifar10@ROOT" in listed.output and "cifar-10-batches-py/data_batch_1" in listed.output
    assert "wilds:camelyon17@ROOT" in listed.output and "ROOT/wds_<name>" in listed.output
