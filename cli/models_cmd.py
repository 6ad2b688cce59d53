"""`iimm models`: the model aliases, open_clip architectures with their pretrained tags, and what is cached."""

from __future__ import annotations

import click

from ..engine.embedding.model_catalog import list_model_entries
from .commands import command
from .render import emit, table, to_csv, to_json

NO_TAG = "(no tag: --pretrained FILE or random)"


@command("models")
@click.option("--filter", "contains", help="Only rows whose architecture, tag or alias contains this text.")
@click.option("--cached", "only_cached", is_flag=True, help="Only weights already on this machine.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def models(contains, only_cached, fmt):
    """Aliases (clip, siglip, coca, eva02) come first, then every open_clip architecture with each of its
    pretrained tags, then the architectures open_clip publishes no weights for. Any architecture works with
    --pretrained TAG|FILE|random, as do hf-hub:ORG/REPO and local-dir:PATH (a folder with
    open_clip_config.json and the weights). "cached" means the weights are already in the
    Hugging Face cache (or open_clip's download folder), so no network is needed.
    """
    rows = [r for r in list_model_entries(contains) if r.cached or not only_cached]
    dicts = [{"alias": r.alias or "", "architecture": r.architecture, "pretrained": r.pretrained,
              "cached": r.cached} for r in rows]
    if fmt == "json":
        emit(to_json(dicts), None)
    elif fmt == "csv":
        emit(to_csv(dicts), None)
    else:
        body = [[d["alias"], d["architecture"], d["pretrained"] or NO_TAG, "yes" if d["cached"] else ""]
                for d in dicts]
        footer = ("\nalso: hf-hub:ORG/REPO, local-dir:PATH, or an architecture with --pretrained FILE (or "
                  "--pretrained random: random weights, to try iimm without downloads)")
        emit(table(body, ["alias", "architecture", "pretrained", "cached"]) + footer, None)
