"""WILDS datasets (`--data wilds:NAME@ROOT`), read by the `wilds` package (`pip install 'iimm[wilds]'`) with
download=False from the layout its download leaves: ROOT/<name>_v<version>/ with RELEASE_v<version>.txt,
metadata.csv (fmow: rgb_metadata.csv and country_code_mapping.csv) and the images.

Every image keeps its official split (train, id_val, id_test, val, test; val and test are the
out-of-domain ones) and its domain (fmow: region; iwildcam: location; camelyon17: hospital) as the
`domain` column, so --split and --domain select rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ....errors import InputError
from ..data import ImageDataset, ImageItem, apply_classnames
from ..prompts import load_template_set

WILDS = {  # name -> (domain metadata field, what must be under ROOT)
    "iwildcam": ("location", "iwildcam_v2.0/{RELEASE_v2.0.txt, metadata.csv, categories.csv, train/}"),
    "fmow": ("region", "fmow_v1.1/{RELEASE_v1.1.txt, rgb_metadata.csv, country_code_mapping.csv, images/}"),
    "camelyon17": ("hospital", "camelyon17_v1.0/{RELEASE_v1.0.txt, metadata.csv, patches/}"),
}
CAMELYON_NAMES = ["normal lymph node", "lymph node tumor tissue"]


def load_wilds(name: str, root: str, classnames=None) -> ImageDataset:
    """The ImageDataset of wilds:NAME@ROOT, every split and domain tagged."""
    if name not in WILDS:
        raise InputError(f"wilds:{name} is not a WILDS dataset iimm reads; known: "
                         f"{', '.join('wilds:' + n for n in WILDS)}")
    try:
        from wilds import get_dataset
    except ImportError as exc:
        raise InputError("wilds:NAME@ROOT needs the wilds package; pip install 'iimm[wilds]'") from exc
    base = Path(root).expanduser().resolve()
    field, needs = WILDS[name]
    if not base.is_dir():
        raise InputError(f"wilds:{name}@{root}: {base} is not a folder; it should hold {needs}")
    try:
        ds = get_dataset(dataset=name, root_dir=str(base), download=False)
    except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise InputError(f"wilds:{name}@{root}: the wilds package cannot read it ({exc}); ROOT should hold "
                         f"{needs}") from exc
    data_dir = Path(ds.data_dir)
    paths = _input_paths(name, ds, data_dir)
    split_of = {v: k for k, v in ds.split_dict.items()}
    domains = ds.metadata_array[:, ds.metadata_fields.index(field)].numpy()
    domain_names = getattr(ds, "_metadata_map", {}).get(field)
    labels = np.asarray(ds.y_array)
    items = [ImageItem(str(p), int(y), split_of.get(int(s)), _domain(d, domain_names))
             for p, y, s, d in zip(paths, labels, ds.split_array, domains) if int(s) in split_of]
    keys = [str(i) for i in range(int(ds.n_classes))]
    names = apply_classnames(keys, _classnames(name, ds, data_dir, len(keys)), classnames)
    return ImageDataset(f"wilds:{name}@{base}", items, names, keys, templates=load_template_set(name))


def _input_paths(name: str, ds, data_dir: Path) -> list[Path]:
    if name == "fmow":
        return [data_dir / "images" / f"rgb_img_{i}.png" for i in ds.full_idxs]
    if name == "iwildcam":
        return [data_dir / "train" / f for f in ds._input_array]
    return [data_dir / f for f in ds._input_array]


def _domain(value, names) -> str:
    return str(names[int(value)]) if names is not None else str(int(value))


def _classnames(name: str, ds, data_dir: Path, n: int) -> list[str]:
    if name == "camelyon17":
        return list(CAMELYON_NAMES)
    if name == "fmow":
        from wilds.datasets.fmow_dataset import categories
        return [c.replace("_", " ") for c in categories]
    csv = data_dir / "categories.csv"
    if csv.is_file():
        import pandas as pd
        table = pd.read_csv(csv)
        by_y = dict(zip(table["y"], table["name"]))
        return [str(by_y.get(i, f"class {i}")) for i in range(n)]
    return [f"class {i}" for i in range(n)]
