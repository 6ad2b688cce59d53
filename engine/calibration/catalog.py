"""Catalog files: the datasets a screening run covers, as `[[dataset]]` tables in TOML.

    [[dataset]]
    name = "eurosat"
    path = "data/eurosat"              # a class-per-folder tree, shards, NAME@ROOT; or manifest = "x.csv"
    test = "data/eurosat-test"         # optional: a path, or a split name of the manifest ("test")
    classnames = ["annual crop", "forest"]  # optional: a list, a {key = name} table, or a JSON file
    templates = ["a satellite photo of {}."] # optional: a list, a templates file, or a built-in set name
    probe_only = false                 # true: used only as an out-of-domain probe, never screened

Conventions are those of `engine/embedding/data.py` (and the --classnames / --templates options):
templates hold one `{}` for the class name. Relative paths are resolved against the
catalog's folder. Every validation error names the file, the table and the key, e.g.
`catalog.toml: [[dataset]] #3 ('eurosat'): key 'path' ...`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..embedding.data import MANIFEST_EXTENSIONS, load_classnames
from ..embedding.prompts import PLACEHOLDER, list_template_sets
from ..embedding.sources import split_named_source
from ..embedding.sources.webdataset import is_brace_pattern
from ...errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DATASET_KEYS = ("name", "path", "manifest", "test", "classnames", "templates", "probe_only")
PATH_SUFFIXES = (".csv", ".jsonl", ".json", ".txt")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Dataset:
    """One catalog entry; fields map onto `engine.data`: images from `path` (a folder tree or a
    manifest) or `manifest`; the test split from `test_path` or the manifest rows of `test_split`;
    `classnames` as `load_classnames` takes it (list, mapping or JSON file); `templates`,
    `template_file`, `template_set` as `resolve_templates` takes them."""

    name: str
    path: Path | None = None
    manifest: Path | None = None
    test_path: Path | None = None
    test_split: str | None = None
    classnames: object = None
    templates: tuple | None = None
    template_file: Path | None = None
    template_set: str | None = None
    probe_only: bool = False

    @property
    def images(self) -> Path:
        """The folder tree or manifest holding the images."""
        return self.path if self.path is not None else self.manifest


@dataclass(frozen=True)
class Catalog:
    """The datasets of a catalog file, in file order."""

    source: str
    datasets: tuple

    def __iter__(self):
        return iter(self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def targets(self) -> tuple:
        """Datasets to screen (not probe-only)."""
        return tuple(d for d in self.datasets if not d.probe_only)

    @property
    def probes(self) -> tuple:
        """Datasets used only as out-of-domain probes."""
        return tuple(d for d in self.datasets if d.probe_only)

    def get(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise InputError(f"{self.source}: no dataset named {name!r}; known: {', '.join(d.name for d in self.datasets)}")


def load_catalog(path: str | os.PathLike, check_paths: bool = True) -> Catalog:
    """Parse and validate a catalog file; with `check_paths`, every referenced file must exist."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"catalog not found: {source}; pass an existing .toml file") from None
    except OSError as exc:
        raise InputError(f"cannot read catalog {source}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: invalid TOML ({exc}); fix the syntax") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text ({exc.reason}); save the catalog as UTF-8") from exc
    return parse_catalog(data, source, Path(path).resolve().parent, check_paths)


def parse_catalog(data: dict, source: str = "catalog", base: Path | None = None, check_paths: bool = True) -> Catalog:
    """Validate an already-parsed catalog mapping; relative paths resolve against `base`."""
    base = base or Path.cwd()
    unknown = sorted(set(data) - {"dataset"})
    if unknown:
        raise InputError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; a catalog holds "
                         f"[[dataset]] tables")
    tables = data.get("dataset")
    if tables is None or tables == []:
        raise InputError(f"{source}: no [[dataset]] tables; add one per dataset with at least name and path")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InputError(f"{source}: 'dataset' must be an array of tables; write each entry as [[dataset]]")
    datasets, seen = [], {}
    for i, table in enumerate(tables, start=1):
        ds = _parse_dataset(table, _Where(source, i, table.get("name")), base, check_paths)
        if ds.name in seen:
            raise InputError(f"{source}: [[dataset]] #{i} ('{ds.name}'): key 'name' repeats [[dataset]] "
                             f"#{seen[ds.name]}; give each dataset a unique name")
        seen[ds.name] = i
        datasets.append(ds)
    if all(d.probe_only for d in datasets):
        raise InputError(f"{source}: every [[dataset]] has probe_only = true; at least one must be a dataset to screen")
    return Catalog(source, tuple(datasets))


@dataclass(frozen=True)
class _Where:
    source: str
    index: int
    name: object

    def error(self, key: str | None, problem: str) -> InputError:
        name = f" ('{self.name}')" if isinstance(self.name, str) and self.name else ""
        where = f" key '{key}'" if key else ""
        return InputError(f"{self.source}: [[dataset]] #{self.index}{name}:{where} {problem}")


def _parse_dataset(table: dict, where: _Where, base: Path, check: bool) -> Dataset:
    unknown = [k for k in table if k not in DATASET_KEYS]
    if unknown:
        raise where.error(unknown[0], f"is not a dataset key; known keys: {', '.join(DATASET_KEYS)}")
    name = table.get("name")
    if name is None:
        raise where.error("name", "is missing; every dataset needs a name")
    if not isinstance(name, str) or not name.strip():
        raise where.error("name", f"must be a non-empty string, got {name!r}")
    has_path, has_manifest = "path" in table, "manifest" in table
    if has_path == has_manifest:
        problem = "and key 'manifest' are both set; give one" if has_path else \
            "is missing; give the dataset folder as path, or a CSV/JSONL file as manifest"
        raise where.error("path", problem)
    fields = {"name": name}
    if has_path and _is_named_source(table["path"], base):
        fields["path"] = _named_source(table["path"], base)
    elif has_path:
        fields["path"] = _existing_path(table["path"], "path", where, base, check)
    else:
        fields["manifest"] = _existing_path(table["manifest"], "manifest", where, base, check, want_file=True)
        if fields["manifest"].suffix.lower() not in MANIFEST_EXTENSIONS:
            raise where.error("manifest", f"is {fields['manifest'].name}; a manifest is a .csv or .jsonl file (a "
                                          f"folder of class subfolders goes in key 'path')")
    if "test" in table:
        fields.update(_test(table["test"], fields.get("path") or fields["manifest"], where, base, check))
    if "classnames" in table:
        fields.update(_classnames(table["classnames"], where, base, check))
    if "templates" in table:
        fields.update(_templates(table["templates"], where, base, check))
    if "probe_only" in table:
        if not isinstance(table["probe_only"], bool):
            raise where.error("probe_only", f"must be true or false, got {table['probe_only']!r}")
        fields["probe_only"] = table["probe_only"]
    return Dataset(**fields)


def _test(value, images: Path, where: _Where, base: Path, check: bool) -> dict:
    if not isinstance(value, str) or not value:
        raise where.error("test", f"must be a split name or a path, got {value!r}")
    if _looks_like_path(value):
        return {"test_path": _existing_path(value, "test", where, base, check)}
    if not SPLIT_NAME.match(value):
        raise where.error("test", f"{value!r} is neither a split name (letters, digits, _ . -) nor a path")
    if images.suffix.lower() not in MANIFEST_EXTENSIONS and not _is_named_source(str(images), base):
        raise where.error("test", f"names the split {value!r}, but only a manifest (.csv/.jsonl) has splits; give "
                                  f"the test images' folder as a path (e.g. \"./{value}\")")
    return {"test_split": value}


def _classnames(value, where: _Where, base: Path, check: bool) -> dict:
    if isinstance(value, str):
        path = _existing_path(value, "classnames", where, base, check, want_file=True)
        if check:
            try:
                load_classnames(path)
            except InputError as exc:
                raise where.error("classnames", str(exc)) from None
        return {"classnames": path}
    if isinstance(value, dict):
        if not value:
            raise where.error("classnames", "is an empty table; map class folder names or indices to names")
        for key, name in value.items():
            if not isinstance(name, str) or not name.strip():
                raise where.error("classnames", f"maps {key!r} to {name!r}; every class name must be a non-empty "
                                                f"string")
        return {"classnames": dict(value)}
    if not isinstance(value, list) or not value:
        raise where.error("classnames", "must be a non-empty list of class names, a table, or a JSON file path")
    for j, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise where.error("classnames", f"entry {j} is {name!r}; every class name must be a non-empty string")
    repeated = sorted({n for n in value if value.count(n) > 1})
    if repeated:
        raise where.error("classnames", f"repeats {', '.join(map(repr, repeated))}; class names must be unique")
    return {"classnames": tuple(value)}


def _templates(value, where: _Where, base: Path, check: bool) -> dict:
    if isinstance(value, str):
        if _looks_like_path(value):
            return {"template_file": _existing_path(value, "templates", where, base, check, want_file=True)}
        if value.lower() not in list_template_sets():
            raise where.error("templates", f"{value!r} is neither a file nor a built-in template set; built-in "
                                           f"sets: {', '.join(list_template_sets())}")
        return {"template_set": value.lower()}
    if not isinstance(value, list) or not value:
        raise where.error("templates", "must be a non-empty list of prompt templates, a file, or a template set name")
    for j, template in enumerate(value):
        if not isinstance(template, str) or template.count(PLACEHOLDER) != 1:
            raise where.error("templates", f"entry {j} is {template!r}; each template must be a string with one "
                                           f"{{}} where the class name goes, e.g. \"a photo of a {{}}.\"")
    return {"templates": tuple(value)}


def _is_named_source(value, base: Path) -> bool:
    """NAME@ROOT, wilds:NAME@ROOT or a webdataset brace pattern (not an existing path that holds an `@`): read
    by `engine.embedding.sources`, which names what is missing itself."""
    return isinstance(value, str) and (split_named_source(value, base) is not None or is_brace_pattern(value))


def _named_source(value: str, base: Path) -> Path:
    """The source string with its ROOT (or shard pattern) made absolute against the catalog's folder."""
    named = split_named_source(value, base)
    if named is not None:
        name, root = named
        root_path = Path(root).expanduser()
        return Path(f"{name}@{root_path if root_path.is_absolute() else base / root_path}")
    pattern = Path(value).expanduser()
    return pattern if pattern.is_absolute() else base / pattern


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith(("~", ".")) or value.lower().endswith(PATH_SUFFIXES)


def _existing_path(value, key: str, where: _Where, base: Path, check: bool, want_file: bool = False) -> Path:
    if not isinstance(value, str) or not value:
        raise where.error(key, f"must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if check:
        if not path.exists():
            raise where.error(key, f"points to {path}, which does not exist; fix the path (relative paths start "
                                   f"at the catalog's folder)")
        if want_file and not path.is_file():
            raise where.error(key, f"points to {path}, which is not a file")
    return path
