"""Seeded, per-class exact subsets: held-out splits and few-shot training sets.

Every function works on a label vector `labels: (N,) int64` and returns row indices.
Within each class the rows are put in a seeded random order once; a split or a
few-shot subset takes a prefix of that order, so the K-shot subset of a seed is
contained in its (K+1)-shot subset, and the result never depends on the order in
which classes are visited.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..embedding.data import ImageDataset, load_image_dataset
from ...errors import InputError


def class_orders(labels: np.ndarray, seed: int, num_classes: int | None = None) -> list[np.ndarray]:
    """For each class c, its row indices in a seeded random order: a list of C int64 arrays."""
    labels = np.asarray(labels, dtype=np.int64)
    c = int(num_classes if num_classes is not None else (labels.max() + 1 if len(labels) else 0))
    orders = []
    for k in range(c):
        rows = np.flatnonzero(labels == k)
        rng = np.random.default_rng([int(seed), k])
        orders.append(rows[rng.permutation(len(rows))])
    return orders


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (kept, held) with `round(fraction · n_c)` (half up) held rows of every class c.

    A class keeps at least one row (a class with a single row is never held out), and a
    class with two or more rows holds out at least one when `fraction > 0`.
    Returns two sorted int64 index arrays.
    """
    if not 0 <= fraction < 1:
        raise InputError(f"a held-out fraction must be in [0, 1), got {fraction}; pass e.g. --val-fraction 0.1")
    kept, held = [], []
    for rows in class_orders(labels, seed, num_classes):
        n = len(rows)
        h = held_count(n, fraction)
        held.append(rows[:h])
        kept.append(rows[h:])
    return _sorted(kept), _sorted(held)


def held_count(n: int, fraction: float) -> int:
    """Rows a class of n rows gives to a held-out split of `fraction`."""
    if n < 2 or fraction <= 0:
        return 0
    return int(min(n - 1, max(1, round_half_up(fraction * n))))


def few_shot_subset(labels: np.ndarray, seed: int, *, shots: int | None = None, fraction: float | None = None,
                    classnames: list[str] | None = None, num_classes: int | None = None) -> np.ndarray:
    """The rows of a few-shot training set: exactly `shots` per class, or `max(1, round(fraction · n_c))` (half up).

    Classes without rows stay empty. Returns sorted int64 indices.
    """
    if (shots is None) == (fraction is None):
        raise InputError("give exactly one of --shots K and --fraction P for a few-shot run")
    if shots is not None and shots < 1:
        raise InputError(f"--shots must be at least 1, got {shots}")
    if fraction is not None and not 0 < fraction <= 1:
        raise InputError(f"--fraction must be in (0, 1], got {fraction}")
    chosen = []
    for k, rows in enumerate(class_orders(labels, seed, num_classes)):
        if not len(rows):
            continue
        if shots is not None:
            if len(rows) < shots:
                name = classnames[k] if classnames else str(k)
                raise InputError(f"class {name!r} has only {len(rows)} training images, fewer than --shots {shots}; "
                                 f"lower --shots or use --fraction")
            take = shots
        else:
            take = max(1, round_half_up(fraction * len(rows)))
        chosen.append(rows[:take])
    return _sorted(chosen)


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (Python's round() rounds halves to even)."""
    return int(np.floor(x + 0.5))


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)


# ---- a task's splits --------------------------------------------------------------------------------

VAL_SPLIT_NAMES = ("val", "valid", "validation")


@dataclass
class TaskSplits:
    """The image sets of one fine-tuning task (all share the training classes).

    pool: every training-side image (train + in-domain validation; the test split is
    excluded): the data the task's zero-shot scores are computed on.
    train: the pool minus the validation images, before any few-shot subsetting.
    val: the images that choose the best epoch (in-domain, or the out-of-domain --ood-val), or None.
    test: the in-domain test images.
    """

    pool: ImageDataset
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    test_source: str
    val_source: str
    ood_test: ImageDataset | None = None  # WILDS: the out-of-domain test split, reported beside id_test


def subset(ds: ImageDataset, indices) -> ImageDataset:
    """The items of `ds` at `indices` (classes unchanged)."""
    return replace(ds, items=[ds.items[int(i)] for i in indices])


def split_task(data, *, classnames=None, test=None, test_fraction: float | None = None, val_fraction: float = 0.1,
               train_split: str | None = None, domain: str | None = None, ood_val=None, select_on: str = "val",
               split_seed: int = 0) -> TaskSplits:
    """Work out the train / validation / test images of a task.

    The test split is `test` (a path or ImageDataset with the same classes), else the
    manifest rows whose split is "test", else a stratified `test_fraction` of the data.
    Validation is `ood_val` when select_on == "ood", else the manifest's val/validation
    rows, else a stratified `val_fraction` of the rest (none when 0). Splits are seeded by
    `split_seed` and stay the same across the seeds of a run.
    """
    if select_on not in ("val", "ood"):
        raise InputError(f"--select-on must be val or ood, got {select_on!r}")
    if test is not None and test_fraction is not None:
        raise InputError("both --test and --test-fraction given; pass one of them")
    ds = data if isinstance(data, ImageDataset) else load_image_dataset(data, classnames, domain=domain)
    splits = {it.split for it in ds.items if it.split}
    if "id_val" in splits:
        return _wilds_splits(ds, test, ood_val, select_on, train_split)
    if train_split is not None and train_split not in splits:
        raise InputError(f"--split {train_split!r} is not a split of {ds.root} (it has: "
                         f"{', '.join(sorted(splits)) or 'no split column'})")
    manifest_val = sorted(splits & set(VAL_SPLIT_NAMES))
    if test is not None:
        test_ds = same_classes(test, ds, "--test")
        test_source = test_ds.root
        pool = _train_rows(ds, train_split, splits, exclude=set())
    elif "test" in splits and test_fraction is None:
        test_ds = ds.select(split="test")
        test_source = f"{ds.root} (split test)"
        pool = _train_rows(ds, train_split, splits, exclude={"test"})
    elif test_fraction is not None:
        base = _train_rows(ds, train_split, splits, exclude=set())
        keep, held = stratified_split(base.labels, test_fraction, split_seed, len(ds.classnames))
        if not len(held):
            raise InputError(f"--test-fraction {test_fraction} holds out no image of {ds.root}; raise it")
        pool, test_ds = subset(base, keep), subset(base, held)
        test_source = f"{ds.root} ({test_fraction:g} held out, seed {split_seed})"
    else:
        raise InputError(f"no test images for {ds.root}: pass --test PATH, --test-fraction F, or a manifest whose "
                         f"split column has 'test' rows")
    if select_on == "ood":
        if ood_val is None:
            raise InputError("--select-on ood needs --ood-val PATH (out-of-domain images with the task's classes)")
        val_ds = same_classes(ood_val, ds, "--ood-val")
        return TaskSplits(pool, pool, val_ds, test_ds, test_source, val_ds.root)
    if manifest_val and train_split is None:
        # from the pool, so no image held out for the test also chooses the epoch
        val_ds = replace(pool, items=[it for it in pool.items if it.split in VAL_SPLIT_NAMES])
        train = replace(pool, items=[it for it in pool.items if it.split not in VAL_SPLIT_NAMES])
        return TaskSplits(pool, train, val_ds, test_ds, test_source, f"{ds.root} (split {manifest_val[0]})")
    if val_fraction <= 0:
        return TaskSplits(pool, pool, None, test_ds, test_source, "none (last epoch)")
    keep, held = stratified_split(pool.labels, val_fraction, split_seed + 1, len(ds.classnames))
    val_ds = subset(pool, held) if len(held) else None
    source = f"{val_fraction:g} of the training images" if val_ds is not None else "none (last epoch)"
    return TaskSplits(pool, subset(pool, keep), val_ds, test_ds, test_source, source)


def _wilds_splits(ds: ImageDataset, test, ood_val, select_on: str, train_split: str | None) -> TaskSplits:
    """WILDS's official splits: train on train, choose the epoch on id_val (or, with --select-on ood, on the
    out-of-domain val), test on id_test (or --test; camelyon17, which has no id_test, on its test), and report
    the out-of-domain test beside id_test."""
    train = ds.select(split=train_split or "train")
    id_val = ds.select(split="id_val")
    pool = replace(ds, items=train.items + id_val.items)
    has = {it.split for it in ds.items}
    own_test = "id_test" if "id_test" in has else "test"
    test_ds = same_classes(test, ds, "--test") if test is not None else ds.select(split=own_test)
    test_source = test_ds.root if test is not None else f"{ds.root} (split {own_test})"
    shifted = ds.select(split="test") if "test" in has and (test is not None or own_test == "id_test") else None
    if select_on == "ood":
        val_ds = same_classes(ood_val, ds, "--ood-val") if ood_val is not None else ds.select(split="val")
        val_source = val_ds.root if ood_val is not None else f"{ds.root} (split val, out of domain)"
    else:
        val_ds, val_source = id_val, f"{ds.root} (split id_val)"
    return TaskSplits(pool, train, val_ds, test_ds, test_source, val_source, shifted)


def _train_rows(ds: ImageDataset, train_split: str | None, splits: set, exclude: set) -> ImageDataset:
    if train_split is not None:
        return ds.select(split=train_split)
    if "train" in splits:
        return ds.select(split="train") if not (splits & set(VAL_SPLIT_NAMES)) else replace(
            ds, items=[it for it in ds.items if it.split == "train" or it.split in VAL_SPLIT_NAMES])
    items = [it for it in ds.items if it.split not in exclude]
    if not items:
        raise InputError(f"{ds.root} has no training images outside the test split")
    return replace(ds, items=items)


def same_classes(data, task: ImageDataset, option: str) -> ImageDataset:
    """Load `data` (path or ImageDataset) and check it has the task's classes, in the task's order."""
    other = data if isinstance(data, ImageDataset) else load_image_dataset(data)
    if other.class_keys != task.class_keys:
        only = sorted(set(other.class_keys) ^ set(task.class_keys))[:3]
        detail = f"differing classes: {', '.join(only)}" if only else "same classes in another order"
        raise InputError(f"{option} {other.root} does not have the training classes ({detail}); give images of "
                         f"the same classes (same folder names / labels)")
    return replace(other, classnames=list(task.classnames))
