"""Which datasets iimm knows by name live under a data root, and what each needs on disk.

`find_datasets(root)` looks for every benchmark of `benchmarks.BENCHMARKS` at ROOT and at ROOT/<name>,
for WILDS datasets at ROOT (ROOT/<name>_v<version>/RELEASE_v<version>.txt), and for CLIP_benchmark
roots ROOT/wds_<name>/ (`classnames.txt` beside `<split>/*.tar`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .benchmarks import BENCHMARKS, missing_files
from .wilds import WILDS

WILDS_VERSIONS = {"iwildcam": "2.0", "fmow": "1.1", "camelyon17": "1.0"}
WILDS_SPLITS = {"camelyon17": "train, id_val, val, test"}


@dataclass(frozen=True)
class Found:
    """A dataset found under the root: its catalog name, its --data string, and its kind."""

    name: str
    spec: str
    kind: str  # "benchmark", "wilds" or "webdataset"


def known_datasets() -> list[tuple[str, str, str, str]]:
    """(--data form, reader, splits, what must be on disk) for every dataset iimm knows by name."""
    rows = [(f"{b.name}@ROOT", b.reader, b.splits, ", ".join(b.needs)) for b in BENCHMARKS.values()]
    rows += [(f"wilds:{n}@ROOT", "wilds package", WILDS_SPLITS.get(n, "train, id_val, id_test, val, test"), needs)
             for n, (_, needs) in WILDS.items()]
    rows.append(("ROOT/wds_<name>", "webdataset (CLIP_benchmark layout)", "<split> folders",
                 "<split>/*.tar, classnames.txt, zeroshot_classification_templates.txt"))
    return rows


def find_datasets(root: str | os.PathLike) -> list[Found]:
    """Every known dataset present under `root`, in the order of `known_datasets`."""
    base = Path(root).expanduser().resolve()
    found = []
    for name in BENCHMARKS:
        for where in (base, base / name):
            if where.is_dir() and not missing_files(name, where):
                found.append(Found(name, f"{name}@{where}", "benchmark"))
                break
    for name, version in WILDS_VERSIONS.items():
        if (base / f"{name}_v{version}" / f"RELEASE_v{version}.txt").is_file():
            found.append(Found(name, f"wilds:{name}@{base}", "wilds"))
    for entry in sorted(base.glob("wds_*")):
        if entry.is_dir() and (entry / "classnames.txt").is_file() and any(entry.glob("*/*.tar")):
            found.append(Found(entry.name[len("wds_"):], str(entry), "webdataset"))
    return found
