"""Image sources beyond class folders and manifests, recognised from the --data string.

    NAME@ROOT            a benchmark by name, read by torchvision or its standard folder layout
                         (`benchmarks.BENCHMARKS`), e.g. cifar10@~/data
    wilds:NAME@ROOT      a WILDS dataset (iwildcam, fmow, camelyon17), read by the wilds package
    shards               'dir/{00000..00099}.tar', a .tar, a .txt list of shards, a folder of .tar,
                         or a CLIP_benchmark root (<root>/<split>/*.tar with classnames.txt)

`@` separates name and root (not `:`, which Windows drive letters and `hf-hub:`-style prefixes use).
A string that is an existing path is a path even if it holds an `@`.
"""

from __future__ import annotations

from pathlib import Path

from ....errors import InputError
from ..data import ImageDataset

WILDS_PREFIX = "wilds:"


def split_named_source(spec: str, base: Path | None = None) -> tuple[str, str] | None:
    """(NAME, ROOT) of NAME@ROOT or wilds:NAME@ROOT, or None: no `@`, or an existing path (relative ones
    against `base`, else the working folder) that happens to hold one."""
    if "@" not in spec:
        return None
    path = Path(spec).expanduser()
    if (path if base is None or path.is_absolute() else base / path).exists():
        return None
    name, root = spec.split("@", 1)
    return name, root


def open_source(spec: str, classnames=None, label_key: str | None = None) -> ImageDataset | None:
    """The ImageDataset `spec` names, or None when it is a plain folder tree or manifest (or nothing)."""
    named = split_named_source(spec)
    if named is not None:
        name, root = named
        if name.lower().startswith(WILDS_PREFIX):
            from .wilds import load_wilds
            return load_wilds(name[len(WILDS_PREFIX):].lower(), root, classnames)
        from .benchmarks import BENCHMARKS, load_benchmark
        if name.lower() in BENCHMARKS:
            return load_benchmark(name.lower(), root, classnames)
        raise InputError(f"--data {spec}: {name!r} is not a dataset iimm knows by name; known: "
                         f"{', '.join(sorted(BENCHMARKS))}, wilds:iwildcam, wilds:fmow, wilds:camelyon17 "
                         f"(`iimm catalog list`)")
    from .webdataset import is_shard_spec, load_shards
    if is_shard_spec(spec):
        return load_shards(spec, classnames, label_key)
    return None
