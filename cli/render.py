"""Rendering results as a table for people, JSON or CSV for programs, and atomic file writes."""

from __future__ import annotations

import csv
import io
import json
import math

import click

from ..engine.files import write_atomic

FORMATS = ("table", "json", "csv")


def format_value(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        text = f"{v:.6f}"
        return text[1:] if text == "-0.000000" else text  # a tiny negative rounds to 0, not -0
    return str(v)


def table(rows: list[list[str]], header: list[str] | None = None) -> str:
    """Left-aligned columns; numbers right-aligned."""
    body = ([header] if header else []) + [[format_value(c) for c in r] for r in rows]
    if not body:
        return ""
    widths = [max(len(r[i]) for r in body if i < len(r)) for i in range(max(len(r) for r in body))]

    def line(r):
        cells = []
        for i, cell in enumerate(r):
            numeric = cell.replace(".", "", 1).replace("-", "", 1).isdigit()
            cells.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    out = [line(r) for r in body]
    if header:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False)


def to_csv(rows: list[dict]) -> str:
    """One CSV line per dict; columns in first-seen order."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    return buf.getvalue()


def emit(text: str, output: str | None) -> None:
    """Print to stdout, or write atomically to `output` and say so on stderr."""
    if not text.endswith("\n"):
        text += "\n"
    if output:
        write_atomic(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


def writable_path(ctx, param, value):
    """Click callback of every output-file option: a path that cannot be written fails before any work."""
    from ..engine.files import check_writable

    return str(check_writable(value)) if value else value
