"""`iimm store`: list, check and clean the embedding store (`ls`, `check`, `rm`, `gc`)."""

from __future__ import annotations

import sys
import time

import click

from .commands import command
from .device_options import store_option
from .render import emit, table, to_json

STORE_OPTION = store_option()
YES_OPTION = click.option("--yes", is_flag=True, help="Remove; without it, only list what would be removed.")


def _open_store(store):
    from ..engine.embedding.store import open_store

    return open_store(store)


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            break
    return f"{n:.1f} {unit}"


def ago(t: float, now: float) -> str:
    s = max(0.0, now - t)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return "just now"


@command("store", cls=click.Group)
def store():
    """Embedding sets are kept in the store ($IIMM_HOME, else ~/.cache/iimm) and reused; these
    subcommands show and clean it. Removing anything is a dry run unless --yes is given."""


@store.command("ls")
@STORE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def ls(store, fmt):
    """List the embedding sets: id, model, data, rows, size on disk, last use."""
    from ..engine.embedding.store_maintenance import list_sets

    st = _open_store(store)
    sets = list_sets(st)
    if fmt == "json":
        emit(to_json([s.to_dict() for s in sets]), None)
        return
    now = time.time()
    body = [[s.id, s.model + (f" ({s.pretrained})" if s.pretrained else ""), s.data,
             s.rows if s.status == "complete" else f"partial: {s.shards} shards", human_bytes(s.bytes),
             ago(s.last_used, now)] for s in sets]
    total = human_bytes(sum(s.bytes for s in sets))
    emit(table(body, ["id", "model", "data", "rows", "size", "last use"]) + f"\n{len(sets)} sets, {total} in "
         f"{st.root}", None)


@store.command("check")
@STORE_OPTION
def check(store):
    """Check every shard against the size and sha256 recorded when it was written, and the rest of the store.

    Exits 1 when something is wrong. A bad shard is encoded again by the next run that uses its set.
    """
    from ..engine.embedding.store_maintenance import check_store

    st = _open_store(store)
    problems = check_store(st)
    for p in problems:
        click.echo(f"{p.set_id or '-'}  {p.path}: {p.what}")
    with st.connect(write=False) as con:
        n_sets = con.execute("SELECT COUNT(*) FROM embedding_sets").fetchone()[0]
        n_shards = con.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    if problems:
        click.echo(f"iimm: {len(problems)} problem(s) in {n_sets} sets ({n_shards} shards); the next run that uses "
                   f"a set re-encodes its bad shards; `iimm store gc --yes` removes orphans and leftovers, "
                   f"`iimm store rm ID --yes` a set", err=True)
        sys.exit(1)
    click.echo(f"{n_sets} sets, {n_shards} shards: all match their recorded size and sha256", err=True)


@store.command("rm")
@click.argument("set_ids", nargs=-1, required=True)
@STORE_OPTION
@YES_OPTION
def rm(set_ids, store, yes):
    """Remove embedding sets by id (or a unique prefix of 4+ characters, see `iimm store ls`)."""
    from ..engine.embedding.store_maintenance import remove_sets, resolve_set_ids

    st = _open_store(store)
    _report(remove_sets(st, resolve_set_ids(st, list(set_ids)), dry_run=not yes))


@store.command("gc")
@STORE_OPTION
@YES_OPTION
def gc(store, yes):
    """Remove partial sets no run is writing, folders without a registry row, registry rows whose files
    are gone, and temporary files of killed runs (older than an hour). Finished sets stay."""
    from ..engine.embedding.store_maintenance import collect_garbage

    _report(collect_garbage(_open_store(store), dry_run=not yes))


def _report(removal) -> None:
    verb = "removed" if removal.done else "would remove"
    for path in removal.paths:
        click.echo(f"{verb} {path}")
    for set_id in removal.rows:
        click.echo(f"{verb} the registry row of {set_id} (its files are gone)")
    for set_id in removal.busy:
        click.echo(f"iimm: {set_id} is in use by another run; left alone", err=True)
    size = human_bytes(removal.bytes)
    if not (removal.paths or removal.rows):
        click.echo("iimm: nothing to remove", err=True)
    elif removal.done:
        click.echo(f"iimm: {verb} {len(removal.paths) + len(removal.rows)} item(s), {size}", err=True)
    else:
        click.echo(f"iimm: {verb} {len(removal.paths) + len(removal.rows)} item(s), {size}; pass --yes to remove",
                   err=True)
