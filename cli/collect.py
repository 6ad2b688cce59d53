"""`iimm collect`: flatten JSON results (score reports, fine-tune records, predictions) into one CSV."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from .commands import command
from .render import emit, to_csv, writable_path

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def flatten(obj: dict, prefix: str = "", where: str = "") -> dict:
    """Nested objects become dotted column names: {"scores": {"iimm": 0.3}} -> {"scores.iimm": 0.3}.

    Lists stay values (the CSV holds them as JSON text); an empty object adds no column.
    """
    out: dict = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            inner = flatten(value, f"{name}.", where)
            clash = set(inner) & set(out)
        else:
            inner = {name: value}
            clash = {name} & set(out)
        if clash:
            raise InputError(f"{where}: column {sorted(clash)[0]!r} arises twice (a dotted key and a nested object "
                             f"name the same column); rename one of them")
        out.update(inner)
    return out


def json_rows(value, where: str) -> list[dict]:
    """One flat row per JSON object: an object gives one row, a list of objects one row each."""
    if isinstance(value, dict):
        return [flatten(value, where=where)]
    if isinstance(value, list):
        rows = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise InputError(f"{where}: item {i} of the top-level list is a {_json_type(item)}; collect "
                                 f"takes JSON objects or lists of objects")
            rows.append(flatten(item, where=f"{where}[{i}]"))
        return rows
    raise InputError(f"{where}: the top level is a {_json_type(value)}; collect takes JSON objects or lists of objects")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a `.json` file, or of every line of a `.jsonl` / `.ndjson` file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text; collect takes JSON result files") from exc
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows += json_rows(_parse(line, f"{path}:{lineno}"), f"{path}:{lineno}")
        return rows
    return json_rows(_parse(text, str(path)), str(path))


def collect_rows(paths, source_column: str | None = None) -> list[dict]:
    """Rows of every file, in order; with `source_column`, each row also names its file there."""
    rows = []
    for path in paths:
        for row in read_rows(path):
            if source_column:
                if source_column in row:
                    raise InputError(f"{path}: the results already have a column {source_column!r}; choose another "
                                     f"name with --source-column")
                row = {source_column: str(path), **row}
            rows.append(row)
    if not rows:
        raise InputError(f"no JSON objects in {', '.join(map(str, paths))}; nothing to collect")
    return rows


def _parse(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); for one object "
                         f"per line name the file .jsonl") from exc


def _json_type(value) -> str:
    return {str: "string", bool: "boolean", type(None): "null", list: "list"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


@command("collect")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="CSV file to write (default: stdout).")
@click.option("--source-column", metavar="NAME",
              help="Add a first column NAME holding the file each row came from.")
def collect(files, output, source_column):
    """FILES are .json (an object or a list of objects) or .jsonl / .ndjson (one object per line)."""
    emit(to_csv(collect_rows(files, source_column)), output)
