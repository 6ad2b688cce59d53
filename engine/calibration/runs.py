"""Calibration runs: a reference fine-tune per catalog task, then the fits that turn IIMM into predictions.

For each (model, method) every non-probe task of the catalog is fine-tuned once (finished runs
in the store are reused and an interrupted one resumes from its last epoch, so an interrupted
calibration picks up where it stopped), evaluated before and after on its own test split and on
every other catalog task (forgetting), and the records are fitted by `predict.fit_calibration`.
Zero-shot accuracies and scores are kept in the store and computed once per model and data,
whatever the method. Calibrations are also logged in the store.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from .catalog import Catalog, Dataset
from ..embedding.data import ImageDataset, load_image_dataset, resolve_templates
from ...errors import InputError, one_line
from ..finetune import EvalTask, MethodOptions, TrainConfig, finetune
from .fit import MIN_TASKS, Calibration, fit_calibration
from ..embedding.store import Store, open_store

CALIBRATION_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS calibrations (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, "
    "pretrained TEXT, method TEXT NOT NULL, score_key TEXT NOT NULL, tasks TEXT NOT NULL, path TEXT, "
    "calibration TEXT NOT NULL, created REAL NOT NULL)",
]


@dataclass
class CalibrationRun:
    """Per method: the calibration (None when it could not be fitted) and the fine-tune records.

    unfitted: per method without a calibration, why (too few tasks finished, or no relation to fit).
    """

    calibrations: dict[str, Calibration | None] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (task, method, one-line error)
    unfitted: dict[str, str] = field(default_factory=dict)


def task_data(ds: Dataset) -> tuple[str | ImageDataset, str | ImageDataset | None]:
    """(training images, test images or None for the manifest's own "test" rows) of a catalog entry."""
    if ds.test_path is not None:
        return str(ds.images), str(ds.test_path)
    if ds.test_split in (None, "test"):
        return str(ds.images), None
    full = load_image_dataset(ds.images, ds.classnames)
    train = replace(full, items=[it for it in full.items if it.split != ds.test_split])
    return train, full.select(split=ds.test_split)


def eval_task(ds: Dataset) -> EvalTask:
    """A catalog dataset as another task for forgetting: its test images (all of them without a test),
    its own class names and prompts."""
    _, test = task_data(ds)
    if test is None:
        full = load_image_dataset(ds.images, ds.classnames)
        has_test = any(it.split == "test" for it in full.items)
        data = full.select(split="test") if has_test else full
    else:
        data = test if isinstance(test, ImageDataset) else load_image_dataset(test, ds.classnames)
    templates = None
    if ds.templates or ds.template_file or ds.template_set:
        templates = resolve_templates(list(ds.templates) if ds.templates else None, ds.template_file,
                                      ds.template_set)
    return EvalTask(ds.name, data, templates)


def calibrate(catalog: Catalog, model: str, methods: Sequence[str], *, pretrained: str | None = None,
              config: TrainConfig | None = None, options: MethodOptions | None = None, seeds: int = 1,
              seed: int = 0, split_seed: int = 0, test_fraction: float = 0.2, device: str = "auto",
              workers: int | None = None, store=None, score_backend: str = "auto",
              permutations: int = 999, progress: Callable | None = None,
              on_failure: Callable[[str, str, str], None] | None = None) -> CalibrationRun:
    """Fine-tune `model` with each method on every target task of `catalog` and fit the calibrations.

    A task's test images are its catalog `test` (a folder, or a split of its manifest), else a
    stratified `test_fraction` of its images (seeded by `split_seed`).
    progress: as for `finetune`, plus ("task", k, runs, {"task", "method"}) before the k-th of the runs.
    """
    targets = catalog.targets
    if len(targets) < MIN_TASKS:
        raise InputError(f"{catalog.source} has {len(targets)} tasks to fine-tune; a calibration needs at least "
                         f"{MIN_TASKS} (probe_only datasets are only evaluated)")
    st = open_store(store)
    run = CalibrationRun()
    runs = len(methods) * len(targets)
    as_target: dict[str, tuple] = {}   # each dataset is listed once for the whole calibration,
    as_other: dict[str, EvalTask] = {}  # whatever the number of methods and tasks

    def target(ds: Dataset) -> tuple:
        if ds.name not in as_target:
            as_target[ds.name] = task_data(ds)
        return as_target[ds.name]

    def other(ds: Dataset) -> EvalTask:
        if ds.name not in as_other:
            as_other[ds.name] = eval_task(ds)
        return as_other[ds.name]

    for m, method in enumerate(methods):
        records = []
        for t, ds in enumerate(targets):
            if progress is not None:
                progress("task", m * len(targets) + t + 1, runs, {"task": ds.name, "method": method})
            try:
                train, test = target(ds)
                held_out = None if test is not None or ds.test_split == "test" else test_fraction
                evals = [other(o) for o in catalog.datasets if o.name != ds.name]
                result = finetune(model, train, method, pretrained=pretrained, config=config, options=options,
                                  test=test, test_fraction=held_out, evals=evals,
                                  templates=list(ds.templates) if ds.templates else None,
                                  template_file=ds.template_file, template_set=ds.template_set,
                                  classnames=ds.classnames, task=ds.name, seeds=seeds, seed=seed,
                                  split_seed=split_seed, device=device,
                                  workers=workers, store=st, score_backend=score_backend, reuse=True, resume=True,
                                  progress=progress)
            except Exception as exc:  # noqa: BLE001 - one task's failure is reported, the others go on
                message = one_line(exc)
                run.failures.append((ds.name, method, message))
                if on_failure:
                    on_failure(ds.name, method, message)
                continue
            records.append(result.record)
        run.records[method] = records
        run.calibrations[method] = None
        if len(records) < MIN_TASKS:
            run.unfitted[method] = (f"only {len(records)} task(s) finished; a calibration needs at least "
                                    f"{MIN_TASKS}")
            continue
        try:  # one method that cannot be fitted must not lose the others' calibrations
            run.calibrations[method] = fit_calibration(records, model, method,
                                                       pretrained=records[0].get("pretrained"),
                                                       permutations=permutations)
        except InputError as exc:
            run.unfitted[method] = str(exc)
    return run


def record_calibration(store: Store | str | None, calibration: Calibration, path: str | None) -> int:
    """Log a calibration in the store's registry; returns its row id."""
    st = open_store(store)
    st.migrate("calibrations", 1, CALIBRATION_SCHEMA)
    with st.connect() as con:
        cur = con.execute("INSERT INTO calibrations (model, pretrained, method, score_key, tasks, path, calibration, "
                          "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (calibration.model, calibration.pretrained, calibration.method, calibration.score_key,
                           json.dumps(calibration.tasks), path, calibration.to_json(), time.time()))
        return int(cur.lastrowid)


def known_scores(store: Store | str | None, key: str = "iimm", exclude: str | None = None) -> list[float]:
    """The latest `key` score of every task the store has scored, one per embedding set (or input path),
    leaving out `exclude` (the set id or input of the task being ranked)."""
    st = open_store(store)
    latest: dict[str, float] = {}
    with st.connect(write=False) as con:
        for row in con.execute("SELECT embedding_set_id, input, scores FROM score_runs ORDER BY id"):
            value = json.loads(row["scores"]).get(key)
            if value is not None:
                latest[row["embedding_set_id"] or row["input"]] = float(value)
    latest.pop(exclude, None)
    return list(latest.values())
