"""Calibration runs: a reference fine-tune per catalog task, then the fits that turn IIMM into predictions.

For each (model, method) every non-probe task of the catalog is fine-tuned once (finished runs
in the store are reused and an interrupted one resumes from its last epoch, so an interrupted
calibration picks up where it stopped), evaluated before and after on its own test split and on
every other catalog task (forgetting), and the records are fitted by `fit.fit_calibration`.
Zero-shot accuracies and scores are kept in the store and computed once per model and data,
whatever the method. Calibrations are also logged in the store.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

from ..distributed import Executor, UnitFailure, as_executor, map_units, model_task_resources
from .catalog import Catalog, Dataset
from ..embedding.data import ImageDataset, load_image_dataset
from ..embedding.prompts import resolve_templates
from ...errors import InputError, one_line
from ..finetune import DataOptions, EvalOptions, EvalTask, MethodOptions, TrainConfig, finetune
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

    def fail(self, task: str, method: str, error: BaseException, on_failure=None) -> None:
        """Keep a fine-tune's failure (task, method, one-line error) and tell `on_failure`."""
        message = one_line(error)
        self.failures.append((task, method, message))
        if on_failure:
            on_failure(task, method, message)

    def advice(self, method: str) -> str:
        """For an unfitted method, what to change (`fit_advice` of its records)."""
        return fit_advice(self.records.get(method, []))


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
    templates = data.templates
    if ds.templates or ds.template_file or ds.template_set:
        templates = resolve_templates(list(ds.templates) if ds.templates else None, ds.template_file,
                                      ds.template_set)
    return EvalTask(ds.name, data, templates)


@dataclass(frozen=True)
class TaskRuns:
    """How each task's reference fine-tune runs (besides its TrainConfig and MethodOptions).

    seeds / seed: run seeds; split_seed: seed of the test and validation splits; test_fraction: the
    test share of a task without a catalog `test`; evaluation: how the baseline and accuracies are measured.
    """

    seeds: int = 1
    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.2
    evaluation: EvalOptions = EvalOptions()


class CatalogTasks:
    """The catalog's datasets, each listed once for a whole calibration (as a target and as another task),
    whatever the number of methods and tasks."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._targets: dict[str, tuple] = {}
        self._others: dict[str, EvalTask] = {}

    def target(self, ds: Dataset) -> tuple:
        if ds.name not in self._targets:
            self._targets[ds.name] = task_data(ds)
        return self._targets[ds.name]

    def others(self, ds: Dataset) -> list[EvalTask]:
        """Every other dataset of the catalog as a task for forgetting."""
        out = []
        for o in self.catalog.datasets:
            if o.name != ds.name:
                if o.name not in self._others:
                    self._others[o.name] = eval_task(o)
                out.append(self._others[o.name])
        return out


def calibrate(catalog: Catalog, model: str, methods: Sequence[str], *, pretrained: str | None = None,
              config: TrainConfig | None = None, options: MethodOptions | None = None, runs: TaskRuns | None = None,
              device: str = "auto", workers: int | None = None, store=None, permutations: int = 999,
              progress: Callable | None = None, on_failure: Callable[[str, str, str], None] | None = None,
              executor=None, **keywords) -> CalibrationRun:
    """Fine-tune `model` with each method on every target task of `catalog` and fit the calibrations.

    A task's test images are its catalog `test` (a folder, or a split of its manifest), else a
    stratified `runs.test_fraction` of its images (seeded by `runs.split_seed`). TaskRuns' fields (and
    `score_backend`) can also be given as keywords.
    progress: as for `finetune`, plus ("task", k, runs, {"task", "method"}) before the k-th of the runs
        (under Ray: after the k-th run finished, and nothing from inside the runs).
    executor: None / "local" runs the fine-tunes here one after another; "ray" (or an `Executor`) runs one
        task per (method, task) fine-tune, see `FineTuneCells`.
    """
    runs = _task_runs(runs, keywords)
    targets = catalog.targets
    if len(targets) < MIN_TASKS:
        raise InputError(f"{catalog.source} has {len(targets)} tasks to fine-tune; a calibration needs at least "
                         f"{MIN_TASKS} (probe_only datasets are only evaluated)")
    st = open_store(store)
    run = CalibrationRun()
    tasks = CatalogTasks(catalog)
    total = len(methods) * len(targets)
    executor = as_executor(executor)
    if executor.is_ray:
        job = FineTuneCells(catalog, model, pretrained, config, options, runs, device, workers, str(st.root))
        run.records.update(job.run_all(methods, executor, run, progress, on_failure))
    else:
        for m, method in enumerate(methods):
            run.records[method] = []
            for t, ds in enumerate(targets):
                if progress is not None:
                    progress("task", m * len(targets) + t + 1, total, {"task": ds.name, "method": method})
                try:
                    run.records[method].append(fine_tune_task(tasks, ds, model, method, pretrained=pretrained,
                                                              config=config, options=options, runs=runs,
                                                              device=device, workers=workers, store=st,
                                                              progress=progress))
                except Exception as exc:  # noqa: BLE001 - one task's failure is reported, the others go on
                    run.fail(ds.name, method, exc, on_failure)
    for method in methods:
        run.calibrations[method], reason = fit_method(run.records[method], model, method, permutations)
        if reason is not None:
            run.unfitted[method] = reason
    return run


_WORKER_TASKS: dict = {}  # per worker process: the catalog's datasets, listed once for every run it is given


@dataclass(frozen=True)
class FineTuneCells:
    """The calibration's fine-tunes as units: one (method, task name) per Ray task, the largest tasks first.

    Each worker writes its run's checkpoints and record into the store as `finetune` does (so the store must be
    on storage every worker reaches); a failed run is retried once by the driver, then reported.
    """

    catalog: Catalog
    model: str
    pretrained: str | None
    config: TrainConfig | None
    options: MethodOptions | None
    runs: TaskRuns
    device: str
    workers: int | None
    store: str

    def __call__(self, cell: tuple[str, str]) -> dict:
        method, name = cell
        tasks = _WORKER_TASKS.get(self.catalog.source)
        if tasks is None:
            tasks = _WORKER_TASKS[self.catalog.source] = CatalogTasks(self.catalog)
        return fine_tune_task(tasks, self.catalog.get(name), self.model, method, pretrained=self.pretrained,
                              config=self.config, options=self.options, runs=self.runs, device=self.device,
                              workers=self.workers, store=self.store, progress=None)

    def run_all(self, methods: Sequence[str], executor: Executor, run: CalibrationRun, progress,
                on_failure) -> dict[str, list[dict]]:
        """Every (method, task) run; returns the records per method in catalog order, failures kept in `run`."""
        tasks = CatalogTasks(self.catalog)
        targets = sorted(self.catalog.targets, key=lambda ds: -_size(tasks.target(ds)[0]))
        cells = [(method, ds.name) for ds in targets for method in methods]
        done = [0]

        def finished(i, outcome):
            done[0] += 1
            if isinstance(outcome, UnitFailure):
                run.fail(cells[i][1], cells[i][0], outcome.error, on_failure)
            if progress is not None:
                progress("task", done[0], len(cells), {"task": cells[i][1], "method": cells[i][0]})

        outcomes = map_units(self, cells, executor, resources=model_task_resources(executor, self.device),
                             on_result=finished, on_failure=finished)
        by_cell = {cell: out for cell, out in zip(cells, outcomes) if not isinstance(out, UnitFailure)}
        return {m: [by_cell[m, ds.name] for ds in self.catalog.targets if (m, ds.name) in by_cell] for m in methods}


def _size(data) -> int:
    return len(data) if isinstance(data, ImageDataset) else len(load_image_dataset(data))


def fine_tune_task(tasks: CatalogTasks, ds: Dataset, model: str, method: str, *, pretrained, config, options,
                   runs: TaskRuns, device, workers, store, progress) -> dict:
    """The record of one task's reference fine-tune: reused when finished, resumed when interrupted."""
    train, test = tasks.target(ds)
    held_out = None if test is not None or ds.test_split == "test" else runs.test_fraction
    data = DataOptions(test=test, test_fraction=held_out, evals=tasks.others(ds),
                       templates=list(ds.templates) if ds.templates else None, template_file=ds.template_file,
                       template_set=ds.template_set, classnames=ds.classnames, task=ds.name,
                       split_seed=runs.split_seed)
    return finetune(model, train, method, pretrained=pretrained, config=config, options=options, data_options=data,
                    evaluation=runs.evaluation, seeds=runs.seeds, seed=runs.seed, device=device, workers=workers,
                    store=store, reuse=True, resume=True, progress=progress).record


def fit_method(records: list[dict], model: str, method: str, permutations: int) -> tuple[Calibration | None,
                                                                                         str | None]:
    """(calibration, None), or (None, why not) when too few tasks finished or there is no relation to fit."""
    if len(records) < MIN_TASKS:
        return None, f"only {len(records)} task(s) finished; a calibration needs at least {MIN_TASKS}"
    try:  # one method that cannot be fitted must not lose the others' calibrations
        return fit_calibration(records, model, method, pretrained=records[0].get("pretrained"),
                               permutations=permutations), None
    except InputError as exc:
        return None, str(exc)


def fit_advice(records: list[dict]) -> str:
    """What to change when a method's outcomes cannot be fitted, with the zero-shot accuracies seen."""
    seen = ", ".join(f"{r.get('task')} {r['zeroshot_acc']:.3f}" for r in records
                     if isinstance(r.get("zeroshot_acc"), (int, float)))
    return ("train longer (--epochs) or with another --lr so that the tasks gain differently, or add more, and "
            "more varied, tasks to the catalog" + (f" (zero-shot accuracies seen: {seen})" if seen else ""))


def _task_runs(runs: TaskRuns | None, keywords: dict) -> TaskRuns:
    runs = runs or TaskRuns()
    if "score_backend" in keywords:
        runs = replace(runs, evaluation=replace(runs.evaluation, score_backend=keywords.pop("score_backend")))
    names = {f.name for f in fields(TaskRuns)}
    unknown = set(keywords) - names
    if unknown:
        raise TypeError(f"calibrate() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return replace(runs, **keywords)


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
