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


# ---- torchvision's on-disk formats -------------------------------------------------------------------

def write_cifar(root, train, test, classnames: list[str], hundred: bool = False) -> Path:
    """ROOT/cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) or ROOT/cifar-100-python."""
    import pickle

    def dump(path, images, label_key):
        data = np.zeros((0, 3072), np.uint8) if not images else \
            np.stack([im.transpose(2, 0, 1).reshape(-1) for im, _ in images]).astype(np.uint8)
        with open(path, "wb") as f:
            pickle.dump({"data": data, label_key: [c for _, c in images]}, f)

    if hundred:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(folder / "train", train, "fine_labels")
        dump(folder / "test", test, "fine_labels")
        meta, key = folder / "meta", "fine_label_names"
    else:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for b in range(1, 6):  # the train images spread over the five batches, in order
            dump(folder / f"data_batch_{b}", _chunk(train, 5, b - 1), "labels")
        dump(folder / "test_batch", test, "labels")
        meta, key = folder / "batches.meta", "label_names"
    with open(meta, "wb") as f:
        pickle.dump({key: classnames}, f)
    return Path(root)


def _chunk(items, parts, k):
    per = -(-len(items) // parts)
    return items[k * per:(k + 1) * per] or items[:0]


def write_mnist(root, train, test) -> Path:
    """ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (big-endian idx, uint8)."""
    import struct

    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, images in (("train", train), ("t10k", test)):
        gray = np.stack([im[..., 0] for im, _ in images]).astype(np.uint8)
        n, h, w = gray.shape
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4B3i", 0, 0, 8, 3, n, h, w) + gray.tobytes())
        labels = np.array([c for _, c in images], dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">4Bi", 0, 0, 8, 1, n) + labels.tobytes())
    return Path(root)


def write_svhn(root, train, test) -> Path:
    """ROOT/{train,test}_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    Path(root).mkdir(parents=True, exist_ok=True)
    for split, images in (("train", train), ("test", test)):
        x = np.stack([im for im, _ in images], axis=-1).astype(np.uint8)
        y = np.array([[c if c else 10] for _, c in images], dtype=np.uint8)
        savemat(Path(root) / f"{split}_32x32.mat", {"X": x, "y": y})
    return Path(root)


def write_stl10(root, train, test, classnames: list[str]) -> Path:
    """ROOT/stl10_binary/{train,test}_{X,y}.bin (column-major 3×96×96 uint8, labels 1-based), class_names.txt."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, images in (("train", train), ("test", test)):
        x = np.stack([im.transpose(2, 1, 0) for im, _ in images]).astype(np.uint8)  # (N, 3, W, H)
        (folder / f"{split}_X.bin").write_bytes(x.tobytes())
        (folder / f"{split}_y.bin").write_bytes(np.array([c + 1 for _, c in images], dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(classnames) + "\n")
    return Path(root)


def write_eurosat(root, images, classes: list[str]) -> Path:
    """ROOT/eurosat/2750/<class>/<class>_<k>.png (torchvision's EuroSAT is an ImageFolder there)."""
    folder = Path(root) / "eurosat" / "2750"
    counts: dict[int, int] = {}
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for image, c in images:
        counts[c] = counts.get(c, 0) + 1
        Image.fromarray(image).save(folder / classes[c] / f"{classes[c]}_{counts[c]}.png")
    return Path(root)


def write_dtd(root, splits: dict, classes: list[str]) -> Path:
    """ROOT/dtd/dtd/images/<class>/<class>_<k>.jpg and labels/{train,val,test}1.txt."""
    base = Path(root) / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    k = 0
    for split, images in splits.items():
        lines = []
        for image, c in images:
            (base / "images" / classes[c]).mkdir(parents=True, exist_ok=True)
            name = f"{classes[c]}_{k:04d}.png"
            k += 1
            Image.fromarray(image).save(base / "images" / classes[c] / name)
            lines.append(f"{classes[c]}/{name}")
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_gtsrb(root, train, test) -> Path:
    """ROOT/gtsrb/GTSRB/Training/<00000..00042>/*.ppm (every class needs one image), Final_Test/Images/*.ppm
    and GT-final_test.csv (Filename;…;ClassId)."""
    base = Path(root) / "gtsrb"
    for c in range(43):
        (base / "GTSRB" / "Training" / f"{c:05d}").mkdir(parents=True, exist_ok=True)
    for k, (image, c) in enumerate(train):
        Image.fromarray(image).save(base / "GTSRB" / "Training" / f"{c:05d}" / f"{k:05d}.ppm")
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for k, (image, c) in enumerate(test):
        Image.fromarray(image).save(test_dir / f"{k:05d}.ppm")
        rows.append(f"{k:05d}.ppm;32;32;0;0;31;31;{c}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return Path(root)


# ---- WILDS ---------------------------------------------------------------------------------------------

def write_wilds_camelyon17(root, rows) -> Path:
    """ROOT/camelyon17_v1.0: RELEASE_v1.0.txt, metadata.csv (patient,node,x_coord,y_coord,tumor,slide,center,split)
    and patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png. rows: (image, tumor, center,
    split id); centers 1 and 2 become WILDS's val and test."""
    base = Path(root) / "camelyon17_v1.0"
    base.mkdir(parents=True, exist_ok=True)
    (base / "RELEASE_v1.0.txt").write_text("tiny\n")
    lines = [",patient,node,x_coord,y_coord,tumor,slide,center,split"]
    for k, (image, tumor, center, split) in enumerate(rows):
        patient, node = f"{center:03d}", 0
        folder = base / "patches" / f"patient_{patient}_node_{node}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"patch_patient_{patient}_node_{node}_x_{k}_y_{k}.png")
        lines.append(f"{k},{patient},{node},{k},{k},{tumor},{center},{center},{split}")
    (base / "metadata.csv").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_wilds_iwildcam(root, rows, categories: list[str]) -> Path:
    """ROOT/iwildcam_v2.0: RELEASE_v2.0.txt, metadata.csv (split,filename,y,location_remapped,sequence_remapped,
    datetime), categories.csv (y,name) and train/<filename>. rows: (image, y, location, split name)."""
    base = Path(root) / "iwildcam_v2.0"
    (base / "train").mkdir(parents=True, exist_ok=True)
    (base / "RELEASE_v2.0.txt").write_text("tiny\n")
    lines = ["split,filename,y,location_remapped,sequence_remapped,datetime"]
    for k, (image, y, location, split) in enumerate(rows):
        Image.fromarray(image).save(base / "train" / f"img{k}.jpg", quality=95)
        lines.append(f"{split},img{k}.jpg,{y},{location},{k},2013-06-0{1 + k % 9} 10:00:00.000")
    (base / "metadata.csv").write_text("\n".join(lines) + "\n")
    (base / "categories.csv").write_text("y,name\n" + "\n".join(f"{i},{n}" for i, n in enumerate(categories)) + "\n")
    return Path(root)


def write_stanford_cars(root, train, test, classnames: list[str]) -> Path:
    """ROOT/stanford_cars: devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat and
    cars_test_annos_withlabels.mat (annotations: fname, class 1-based), cars_train/ and cars_test/ images."""
    from scipy.io import savemat

    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(classnames, dtype=object)})
    for images, folder, annos in ((train, "cars_train", base / "devkit" / "cars_train_annos.mat"),
                                  (test, "cars_test", base / "cars_test_annos_withlabels.mat")):
        (base / folder).mkdir(exist_ok=True)
        table = np.zeros(len(images), dtype=[("fname", object), ("class", object)])
        for k, (image, c) in enumerate(images):
            Image.fromarray(image).save(base / folder / f"{k:05d}.jpg", quality=95)
            table[k] = (f"{k:05d}.jpg", c + 1)
        savemat(annos, {"annotations": table})
    return Path(root)


def write_wilds_fmow(root, rows) -> Path:
    """ROOT/fmow_v1.1: RELEASE_v1.1.txt, rgb_metadata.csv (split,timestamp,country_code,category),
    country_code_mapping.csv (alpha-3,region) and images/rgb_img_<k>.png. rows: (image, category, country
    code, split as written, year); WILDS makes val/test from 2013 on out of domain."""
    base = Path(root) / "fmow_v1.1"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "RELEASE_v1.1.txt").write_text("tiny\n")
    lines = ["split,timestamp,country_code,category"]
    for k, (image, category, country, split, year) in enumerate(rows):
        Image.fromarray(image).save(base / "images" / f"rgb_img_{k}.png")
        lines.append(f"{split},{year}-03-01T10:00:00Z,{country},{category}")
    (base / "rgb_metadata.csv").write_text("\n".join(lines) + "\n")
    (base / "country_code_mapping.csv").write_text("alpha-3,region\nUSA,Americas\nFRA,Europe\n")
    return Path(root)
