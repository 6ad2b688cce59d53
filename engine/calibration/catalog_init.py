"""`iimm catalog init`: a catalog TOML of the known datasets found under a data root.

Each entry gives the dataset by its --data string (NAME@ROOT, wilds:NAME@ROOT, a CLIP_benchmark
root), its test split, its class names and its prompt templates, as the dataset itself carries
them; the ImageNet variants, which have no training split, are out-of-domain probes only.
"""

from __future__ import annotations

import json
import os

from ..embedding.data import load_image_dataset
from ..embedding.sources.discover import find_datasets
from ...errors import InputError

PROBE_ONLY = {"imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"}


def catalog_toml(root: str | os.PathLike) -> tuple[str, list[str], list[str]]:
    """(the catalog text, the names written, one line per dataset found but unreadable)."""
    found = find_datasets(root)
    if not found:
        raise InputError(f"no dataset iimm knows by name under {root}; `iimm catalog list` shows what each needs")
    blocks, names, failed = [], [], []
    for f in found:
        try:
            ds = load_image_dataset(f.spec)
        except InputError as exc:
            failed.append(f"{f.name}: {exc}")
            continue
        splits = {it.split for it in ds.items}
        lines = ["[[dataset]]", f"name = {_q(f.name)}", f"path = {_q(f.spec)}"]
        if f.kind != "wilds" and "test" in splits and "train" in splits:
            lines.append('test = "test"')
        if f.name in PROBE_ONLY or "train" not in splits:
            lines.append("probe_only = true")
        lines.append(f"classnames = {_list(ds.classnames)}")
        if ds.templates:
            lines.append(f"templates = {_list(ds.templates)}")
        blocks.append("\n".join(lines))
        names.append(f.name)
    if not blocks:
        raise InputError(f"every dataset found under {root} failed to load: " + "; ".join(failed))
    header = f"# written by `iimm catalog init --root {root}`: {len(names)} dataset(s)\n\n"
    return header + "\n\n".join(blocks) + "\n", names, failed


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"
