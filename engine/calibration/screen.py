"""Screening: every catalog dataset × model scored from zero-shot embeddings, ranked by predicted gain.

Embeddings come from the store when they are there, and so do their scores when `calibrate`, `finetune`
or an earlier `screen` computed them for the same embedding set and iimm version (`recompute` forces a
new computation). One failing dataset never stops the others: its error is kept in the result and the
rest go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .catalog import Catalog, Dataset
from ..distributed import Executor, UnitFailure, as_executor, map_units, model_task_resources
from ..embedding.data import ImageDataset, load_image_dataset
from ..embedding.extract import embed_dataset, stored_embeddings
from ...errors import one_line
from ..embedding.models import ModelPool, ModelSpec, resolve_model
from .fit import Calibration, predict
from ..scoring.stored import stored_scores
from ..embedding.store import open_store
from ..scoring.baselines import NCTI_PARTS, combine_ncti


@dataclass
class ScreenRow:
    """One dataset × model: its scores and, per calibrated method, predicted outcomes."""

    dataset: str
    model: str
    scores: dict
    images: int
    cached: bool
    predictions: dict = field(default_factory=dict)  # method -> {outcome: {value, low, high}}
    in_range: dict = field(default_factory=dict)      # method -> bool

    @property
    def iimm(self) -> float:
        return self.scores["iimm"]

    def primary_gain(self) -> dict | None:
        """{value, low, high} of the first calibrated method's predicted gain, None when uncalibrated."""
        return next((o["gain"] for o in self.predictions.values() if "gain" in o), None)

    def sort_key(self) -> float:
        """Predicted gain of the first calibrated method, else the IIMM (higher first)."""
        gain = self.primary_gain()
        return self.iimm if gain is None else gain["value"]

    def flat(self) -> dict:
        """One flat row for CSV: dataset, model, iimm, the scores, `<method>.<outcome>[_low|_high]`."""
        out = {"dataset": self.dataset, "model": self.model, "iimm": self.iimm, "images": self.images,
               "cached": self.cached}
        out.update({k: v for k, v in self.scores.items() if k != "iimm"})
        for method, outcomes in self.predictions.items():
            out[f"{method}.in_range"] = self.in_range[method]
            for outcome, p in outcomes.items():
                out[f"{method}.{outcome}"] = p["value"]
                out[f"{method}.{outcome}_low"] = p["low"]
                out[f"{method}.{outcome}_high"] = p["high"]
        return out

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "iimm": self.iimm, "images": self.images,
                "cached": self.cached, "scores": dict(self.scores), "predictions": self.predictions,
                "in_range": self.in_range}


ALL_DATASETS = "(every dataset)"


@dataclass
class ScreenResult:
    rows: list[ScreenRow]
    failures: list[tuple[str, str, str]]  # (dataset or ALL_DATASETS, model, one-line error)
    notes: list[str] = field(default_factory=list)

    @property
    def ranked(self) -> list[ScreenRow]:
        """Rows with a predicted gain first, by it; then the uncalibrated rows, by IIMM (the two don't compare)."""
        def key(r: ScreenRow):
            value = r.sort_key()
            return (r.primary_gain() is None, -value if math.isfinite(value) else math.inf)
        return sorted(self.rows, key=key)


def screen(catalog: Catalog, models: Sequence[str], *, calibrations: Sequence[Calibration] = (),
           pretrained: str | None = None, keys: Sequence[str] | None = None, backend: str = "auto",
           device: str = "auto", embed_options: dict | None = None, level: float = 0.90,
           include_probes: bool = False, recompute: bool = False, progress: Callable | None = None,
           on_failure: Callable[[str, str, str], None] | None = None, executor=None) -> ScreenResult:
    """Score every dataset of `catalog` with every model; predictions from the matching calibrations.

    keys: score keys to compute (None: all); `iimm` is always included.
    embed_options: extra keyword arguments of `embed_dataset` (batch_size, workers, store, ...).
    recompute: compute the scores even when the store keeps them for the same embedding set.
    executor: None / "local" runs here, model by model; "ray" (or an `Executor`) runs one task per
        (model, dataset) cell, see `screen_cells` (its workers read kept scores but leave the store's
        registry to the driver).
    """
    keys = None if keys is None else list(dict.fromkeys(["iimm", *keys]))
    datasets = catalog.datasets if include_probes else catalog.targets
    result = ScreenResult([], [])
    calibrated = {c.model for c in calibrations}
    result.notes += [f"calibration {c.model}/{c.method} matches no --model; it was not used" for c in calibrations
                     if c.model not in models]
    if calibrations:
        result.notes += [f"{m} has no calibration: its rows are ranked by IIMM, after the calibrated ones"
                         for m in models if m not in calibrated]
    embed_options = embed_options or {}
    store = embed_options.get("store")

    def failed(dataset: str, model: str, exc: Exception) -> None:
        result.failures.append((dataset, model, one_line(exc)))
        if on_failure:
            on_failure(dataset, model, one_line(exc))

    specs = []  # (model as given, its ModelSpec)
    for model in models:
        try:  # resolved once: a model that cannot be found fails once, not once per dataset
            specs.append((model, resolve_model(model, pretrained, hash_memo=None if embed_options.get("use_cache")
                                               is False else open_store(store).hash_memo())))
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the others go on
            failed(ALL_DATASETS, model, exc)
    executor = as_executor(executor)
    if executor.is_ray:
        screen_cells(specs, datasets, calibrations, result, failed, keys=keys, backend=backend, device=device,
                     embed_options=embed_options, level=level, progress=progress, executor=executor,
                     recompute=recompute)
        add_combined_ncti(result.rows)
        return result
    for model, spec in specs:
        pool = ModelPool()  # loaded on the first dataset not in the store, then shared by the rest
        for ds in datasets:
            try:
                result.rows.append(screen_one(ds, spec, calibrations, keys=keys, backend=backend, device=device,
                                              embed_options={"models": pool, **embed_options},
                                              level=level, recompute=recompute, progress=progress))
            except Exception as exc:  # noqa: BLE001 - one dataset's failure is reported, the others go on
                failed(ds.name, model, exc)
        del pool  # the model's memory goes before the next model loads
    add_combined_ncti(result.rows)
    return result


@dataclass(frozen=True)
class ScreenCell:
    """One (model, dataset) unit of a distributed screen: what a worker needs, no arrays.

    images: the dataset's size (largest first shortens the tail); stored: its embeddings are in the store,
    so the cell is CPU scoring work only.
    """

    model: str
    spec: ModelSpec
    dataset: Dataset
    images: int
    stored: bool


_WORKER_POOL: dict = {}  # per worker process: the last model's pool, kept for the next cell of that model


@dataclass(frozen=True)
class ScreenCellJob:
    calibrations: tuple
    keys: tuple | None
    backend: str
    device: str
    embed_options: dict
    level: float
    recompute: bool = False

    def __call__(self, cell: ScreenCell) -> ScreenRow:
        if _WORKER_POOL.get("model") != cell.spec.fingerprint:  # the previous model's memory goes first
            _WORKER_POOL.clear()
            _WORKER_POOL.update(model=cell.spec.fingerprint, pool=ModelPool())
        return screen_one(cell.dataset, cell.spec, self.calibrations, keys=self.keys, backend=self.backend,
                          device=self.device, embed_options={"models": _WORKER_POOL["pool"], **self.embed_options},
                          level=self.level, recompute=self.recompute, keep_scores=False)


def plan_cells(specs: Sequence[tuple[str, ModelSpec]], datasets: Sequence[Dataset], embed_options: dict, device: str,
               failed: Callable[[str, str, Exception], None]) -> list[ScreenCell]:
    """Every (model, dataset) cell, grouped by model (a worker keeps its model for the next cell of the same
    model), the largest datasets first within a model. A dataset that cannot be listed fails its cells here."""
    options = {k: embed_options[k] for k in ("dtype", "store") if k in embed_options}
    listed: dict[str, ImageDataset | Exception] = {}
    for ds in datasets:  # each dataset is listed (one stat per image) once, whatever the number of models
        try:
            listed[ds.name] = load_image_dataset(str(ds.images), ds.classnames)
        except Exception as exc:  # noqa: BLE001 - reported per cell
            listed[ds.name] = exc
    cells = []
    for model, spec in specs:
        group = []
        for ds in datasets:
            try:
                if isinstance(listed[ds.name], Exception):
                    raise listed[ds.name]
                images, stored = stored_embeddings(spec, listed[ds.name], templates=ds.templates,
                                                   template_file=ds.template_file, template_set=ds.template_set,
                                                   device=device, **options)
            except Exception as exc:  # noqa: BLE001 - reported per cell
                failed(ds.name, model, exc)
                continue
            group.append(ScreenCell(model, spec, ds, images, stored))
        cells += sorted(group, key=lambda c: -c.images)
    return cells


def screen_cells(specs, datasets, calibrations, result: ScreenResult, failed, *, keys, backend, device,
                 embed_options: dict, level: float, progress, executor: Executor, recompute: bool = False) -> None:
    """The screen as one Ray task per cell: cells in the store are CPU scoring tasks, the others run the model
    (a GPU each where there are GPUs). A failing cell is retried once by the driver, then reported."""
    cells = plan_cells(specs, datasets, embed_options, device, failed)
    job = ScreenCellJob(tuple(calibrations), tuple(keys) if keys else None, backend, device,
                        {k: v for k, v in embed_options.items() if k != "models"}, level, recompute)
    model_resources = model_task_resources(executor, device)
    done = [0]

    def finished(i, outcome):
        done[0] += 1
        if isinstance(outcome, UnitFailure):
            failed(cells[i].dataset.name, cells[i].model, outcome.error)
        else:
            result.rows.append(outcome)
        if progress is not None:
            progress("dataset × model cells", done[0], len(cells))

    map_units(job, cells, executor, resources=lambda cell: {"num_cpus": 1} if cell.stored else model_resources,
              on_result=finished, on_failure=finished)
    order = {(c.spec.name, c.dataset.name): k for k, c in enumerate(cells)}  # rows in plan order
    result.rows.sort(key=lambda r: order[r.model, r.dataset])


def add_combined_ncti(rows: Sequence[ScreenRow]) -> None:
    """NCTI is only defined across models: where a dataset has its parts for ≥ 2 models, add `ncti`."""
    by_dataset: dict[str, list[ScreenRow]] = {}
    for row in rows:
        if all(p in row.scores for p in NCTI_PARTS):
            by_dataset.setdefault(row.dataset, []).append(row)
    for group in by_dataset.values():
        if len({r.model for r in group}) >= 2:
            combined = combine_ncti({r.model: {p: r.scores[p] for p in NCTI_PARTS} for r in group})
            for r in group:
                r.scores["ncti"] = combined[r.model]


def screen_one(ds: Dataset, spec: ModelSpec, calibrations: Sequence[Calibration], *, keys, backend, device,
               embed_options: dict, level: float, recompute: bool = False, keep_scores: bool = True,
               progress=None) -> ScreenRow:
    """One dataset × model. Scores the store keeps for the embeddings are read (unless `recompute`), new ones
    kept there (unless not `keep_scores`: a Ray worker leaves the store's registry to the driver)."""
    model = spec.name
    es, info = embed_dataset(spec, str(ds.images), templates=ds.templates,
                             template_file=ds.template_file, template_set=ds.template_set,
                             classnames=ds.classnames, device=device, progress=progress, **embed_options)
    store = open_store(embed_options.get("store")) if embed_options.get("use_cache", True) else None
    scores, _ = stored_scores(es, info.set_id, store, keys, backend=backend, device=device, recompute=recompute,
                              keep=keep_scores)
    row = ScreenRow(ds.name, model, scores, info.images, info.cached)
    for cal in calibrations:
        if cal.model != model:
            continue
        pred = predict(cal, scores[cal.score_key], level)
        row.predictions[cal.method] = {o: {"value": p.value, "low": p.low, "high": p.high}
                                       for o, p in pred.outcomes.items()}
        row.in_range[cal.method] = pred.in_range
    return row
