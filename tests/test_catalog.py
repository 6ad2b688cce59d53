"""Catalog files: parsing, path resolution and one-line validation errors naming table and key."""

import textwrap
from pathlib import Path

import pytest

from iimm.engine.calibration.catalog import Dataset, load_catalog
from iimm.errors import InputError


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "data" / "eurosat").mkdir(parents=True)
    (tmp_path / "data" / "eurosat-test").mkdir()
    (tmp_path / "data" / "cars").mkdir()
    (tmp_path / "pets.csv").write_text("path,label\n")
    (tmp_path / "pets-classes.json").write_text('["cat", "dog"]')
    (tmp_path / "bad-classes.json").write_text('"cat"')
    (tmp_path / "satellite.json").write_text('["a satellite photo of {}."]')
    return tmp_path


def write(tree, body, name="catalog.toml"):
    path = tree / name
    path.write_text(textwrap.dedent(body))
    return path


def test_full_catalog_parses_and_resolves_paths(tree):
    path = write(tree, """
        [[dataset]]
        name = "eurosat"
        path = "data/eurosat"
        test = "data/eurosat-test"
        classnames = ["annual crop", "forest"]
        templates = ["a satellite photo of {}.", "a photo of {}, from above."]

        [[dataset]]
        name = "pets"
        manifest = "pets.csv"
        test = "test"
        classnames = "pets-classes.json"
        templates = "satellite.json"

        [[dataset]]
        name = "cars"
        path = "data/cars"
        classnames = { forest = "a forest", "3" = "a river" }
        templates = "EuroSAT"
        probe_only = true
    """)
    cat = load_catalog(path)
    assert len(cat) == 3 and [d.name for d in cat] == ["eurosat", "pets", "cars"]
    euro, pets, cars = cat.datasets
    assert euro == Dataset(name="eurosat", path=tree / "data" / "eurosat", test_path=tree / "data" / "eurosat-test",
                           classnames=("annual crop", "forest"),
                           templates=("a satellite photo of {}.", "a photo of {}, from above."))
    assert euro.images == euro.path
    assert pets.manifest == pets.images == tree / "pets.csv" and pets.path is None and pets.test_split == "test"
    assert pets.classnames == tree / "pets-classes.json" and pets.template_file == tree / "satellite.json"
    assert cars.template_set == "eurosat" and cars.classnames == {"forest": "a forest", "3": "a river"}
    assert cars.probe_only and not euro.probe_only
    assert cat.targets == (euro, pets) and cat.probes == (cars,)
    assert cat.get("pets") is pets


def test_paths_resolve_against_the_catalog_folder_not_cwd(tree, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cat = load_catalog(write(tree, '[[dataset]]\nname = "e"\npath = "data/eurosat"\n'))
    assert cat.datasets[0].path == tree / "data" / "eurosat"


def test_an_existing_folder_with_an_at_sign_is_a_path_not_name_at_root(tree, monkeypatch, tmp_path_factory):
    """As `--data` reads it: a string that is an existing path is a path even if it holds an `@`."""
    (tree / "data" / "run@2" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # exists relative to the catalog, not the cwd
    cat = load_catalog(write(tree, '[[dataset]]\nname = "r"\npath = "data/run@2"\n'))
    assert cat.datasets[0].path == tree / "data" / "run@2"
    named = load_catalog(write(tree, '[[dataset]]\nname = "c"\npath = "cifar10@data"\n'), check_paths=False)
    assert named.datasets[0].path == Path(f"cifar10@{tree / 'data'}")


def test_check_paths_false_accepts_missing_paths(tree):
    cat = load_catalog(write(tree, '[[dataset]]\nname = "x"\npath = "not/here"\n'), check_paths=False)
    assert cat.datasets[0].path == tree / "not" / "here"


E = "catalog.toml: [[dataset]]"


@pytest.mark.parametrize("body, message", [
    ('[[dataset]]\nname = "a"\npath = "data/cars"\n[[dataset]]\nname = "b"\n[[dataset]]\nname = "eurosat"\n'
     'path = "data/eurosatt"\n',
     f"{E} #2 ('b'): key 'path' is missing"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\n[[dataset]]\nname = "b"\npath = "data/cars"\n[[dataset]]\n'
     'name = "eurosat"\npath = "data/eurosatt"\n',
     f"{E} #3 ('eurosat'): key 'path' points to"),
    ('[[dataset]]\npath = "data/cars"\n', f"{E} #1: key 'name' is missing"),
    ('[[dataset]]\nname = ""\npath = "data/cars"\n', f"{E} #1: key 'name' must be a non-empty string"),
    ('[[dataset]]\nname = 3\npath = "data/cars"\n', f"{E} #1: key 'name' must be a non-empty string"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nmanifest = "pets.csv"\n',
     f"{E} #1 ('a'): key 'path' and key 'manifest' are both set"),
    ('[[dataset]]\nname = "a"\nmanifest = "data/cars"\n', f"{E} #1 ('a'): key 'manifest' points to"),
    ('[[dataset]]\nname = "a"\npath = 7\n', f"{E} #1 ('a'): key 'path' must be a non-empty path string"),
    ('[[dataset]]\nname = "a"\npth = "data/cars"\n', f"{E} #1 ('a'): key 'pth' is not a dataset key"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntest = "x y"\n', f"{E} #1 ('a'): key 'test' 'x y' is neither"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntest = "missing.csv"\n', f"{E} #1 ('a'): key 'test' points to"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = []\n', f"{E} #1 ('a'): key 'classnames' must be"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = ["x", 1]\n',
     f"{E} #1 ('a'): key 'classnames' entry 1 is 1"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = ["x", "y", "x"]\n',
     f"{E} #1 ('a'): key 'classnames' repeats 'x'"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = "nope.json"\n',
     f"{E} #1 ('a'): key 'classnames' points to"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = "bad-classes.json"\n',
     f"{E} #1 ('a'): key 'classnames' "),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nclassnames = { x = 1 }\n',
     f"{E} #1 ('a'): key 'classnames' maps 'x' to 1"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntemplates = ["a photo of {c}"]\n',
     f"{E} #1 ('a'): key 'templates' entry 0 is 'a photo of {{c}}'"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntemplates = ["{} and {}"]\n',
     f"{E} #1 ('a'): key 'templates' entry 0 is"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntemplates = "nosuchset"\n',
     f"{E} #1 ('a'): key 'templates' 'nosuchset' is neither a file nor a built-in template set"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntest = "test"\n',
     f"{E} #1 ('a'): key 'test' names the split 'test', but only a manifest"),
    ('[[dataset]]\nname = "a"\nmanifest = "satellite.json"\n', f"{E} #1 ('a'): key 'manifest' is satellite.json"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\ntemplates = 5\n', f"{E} #1 ('a'): key 'templates' must be"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nprobe_only = "yes"\n',
     f"{E} #1 ('a'): key 'probe_only' must be true or false"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\n[[dataset]]\nname = "a"\npath = "data/eurosat"\n',
     f"{E} #2 ('a'): key 'name' repeats [[dataset]] #1"),
    ('[[dataset]]\nname = "a"\npath = "data/cars"\nprobe_only = true\n',
     "catalog.toml: every [[dataset]] has probe_only = true"),
    ('', "catalog.toml: no [[dataset]] tables"),
    ('dataset = "x"\n', "catalog.toml: 'dataset' must be an array of tables"),
    ('[dataset]\nname = "a"\n', "catalog.toml: 'dataset' must be an array of tables"),
    ('models = ["clip"]\n[[dataset]]\nname = "a"\npath = "data/cars"\n', "catalog.toml: unknown top-level key"),
    ('[[dataset]\nname = "a"\n', "catalog.toml: invalid TOML"),
])
def test_validation_errors_name_table_and_key(tree, monkeypatch, body, message):
    monkeypatch.chdir(tree)
    write(tree, body)
    with pytest.raises(InputError) as info:
        load_catalog("catalog.toml")
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(InputError, match="catalog not found"):
        load_catalog(tmp_path / "absent.toml")


def test_unknown_dataset_name(tree):
    cat = load_catalog(write(tree, '[[dataset]]\nname = "a"\npath = "data/cars"\n'))
    with pytest.raises(InputError, match="no dataset named 'b'; known: a"):
        cat.get("b")
