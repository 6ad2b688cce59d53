"""Writers of tiny on-disk datasets in the formats iimm reads by name (no network, a few images per class).

Every writer starts from `tiny_images(classes, per_class)`: uint8 (H, W, 3) arrays with a class label,
and can write the same images as a class-per-folder PNG tree (`write_folder_tree`), which is the
reference the other formats must embed identically to.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_images(classes: int = 3, per_class: int = 3, size: int = 32, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(image (size, size, 3) uint8, label) in class order: smooth random patterns, distinct per class."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(classes):
        for _ in range(per_class):
            base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR))
            out.append((img, c))
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_folder_tree(root, images, classnames: list[str]) -> Path:
    """ROOT/<class name>/<k>.png in the order of `images` (k counts within a class)."""
    root = Path(root)
    counts: dict[int, int] = {}
    for c, name in enumerate(classnames):
        (root / name).mkdir(parents=True, exist_ok=True)
    for image, c in images:
        k = counts.get(c, 0)
        counts[c] = k + 1
        Image.fromarray(image).save(root / classnames[c] / f"{k}.png")
    return root


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_tar_shards(folder, images, shards: int = 2, label: str = "cls", classnames: list[str] | None = None,
                     ext: str = "png") -> list[Path]:
    """`folder/{00000..}.tar`, consecutive samples per shard. label "cls": an integer member; "json": a
    json member {"label": class name, "caption": ...}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // shards)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for k in range(s * per, min(len(images), (s + 1) * per)):
                image, c = images[k]
                _add(tf, f"sample{k:05d}.{ext}", png_bytes(image))
                if label == "cls":
                    _add(tf, f"sample{k:05d}.cls", str(c).encode())
                else:
                    _add(tf, f"sample{k:05d}.json", json.dumps({"label": classnames[c], "caption": "x"}).encode())
        paths.append(path)
    return paths


def write_clip_benchmark(root, splits: dict, classnames: list[str], templates: list[str]) -> Path:
    """CLIP_benchmark's wds layout: ROOT/<split>/0.tar, classnames.txt, zeroshot_classification_templates.txt."""
    root = Path(root)
    for split, images in splits.items():
        write_tar_shards(root / split, images, shards=1)
        (root / split / "0.tar").unlink(missing_ok=True)
        (root / split / "00000.tar").rename(root / split / "0.tar")
        (root / split / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(t.replace("{}", "{c}") for t in templates))
    return root
