"""`iimm catalog init` / `iimm catalog list`: catalogs from a data root, and the datasets iimm knows by name."""

from __future__ import annotations

import click

from .commands import command
from .render import emit, writable_path


@command("catalog", cls=click.Group)
def catalog_cmd():
    """A catalog is the TOML file `calibrate` and `screen` read: one [[dataset]] table per task."""


@catalog_cmd.command("init")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False),
              help="The data root to look under (each dataset at ROOT or ROOT/<name>).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the catalog here [default: print it].")
def init(root, output):
    """Find the known datasets under ROOT and write a catalog TOML with each one's test split, class names and
    templates, ready for `iimm calibrate` and `iimm screen`."""
    from ..engine.calibration.catalog_init import catalog_toml

    text, names, failed = catalog_toml(root)
    for line in failed:
        click.echo(f"iimm: skipped {line}", err=True)
    emit(text, output)
    click.echo(f"iimm: {len(names)} dataset(s): {', '.join(names)}", err=True)


@catalog_cmd.command("list")
def list_cmd():
    """The datasets iimm reads by name (--data NAME@ROOT, wilds:NAME@ROOT, a CLIP_benchmark root) and what each
    needs under ROOT."""
    from ..engine.embedding.sources.discover import known_datasets

    rows = known_datasets()
    width = max(len(r[0]) for r in rows)
    lines = [f"{'--data':<{width}}  reader / splits / needs under ROOT"]
    for form, reader, splits, needs in rows:
        lines.append(f"{form:<{width}}  {reader}; splits: {splits}; needs: {needs}")
    emit("\n".join(lines), None)
