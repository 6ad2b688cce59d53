"""Screening: every catalog dataset × model scored from zero-shot embeddings, ranked by predicted gain.

Embeddings come from the store when they are there. One failing dataset never stops the
others: its error is kept in the result and the rest go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .catalog import Catalog, Dataset
from .extract import embed_dataset
from .models import ModelPool
from .predict import Calibration, predict
from .scores import score
from .transfer import NCTI_PARTS, combine_ncti


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


@dataclass
class ScreenResult:
    rows: list[ScreenRow]
    failures: list[tuple[str, str, str]]  # (dataset, model, one-line error)

    @property
    def ranked(self) -> list[ScreenRow]:
        return sorted(self.rows, key=lambda r: -r.sort_key() if math.isfinite(r.sort_key()) else math.inf)


def screen(catalog: Catalog, models: Sequence[str], *, calibrations: Sequence[Calibration] = (),
           pretrained: str | None = None, keys: Sequence[str] | None = None, backend: str = "auto",
           device: str = "auto", embed_options: dict | None = None, level: float = 0.90,
           include_probes: bool = False, progress: Callable | None = None,
           on_failure: Callable[[str, str, str], None] | None = None) -> ScreenResult:
    """Score every dataset of `catalog` with every model; predictions from the matching calibrations.

    keys: score keys to compute (None: all); `iimm` is always included.
    embed_options: extra keyword arguments of `embed_dataset` (batch_size, workers, store, ...).
    """
    keys = None if keys is None else list(dict.fromkeys(["iimm", *keys]))
    datasets = catalog.datasets if include_probes else catalog.targets
    result = ScreenResult([], [])
    for model in models:
        pool = ModelPool()  # loaded on the first dataset not in the store, then shared by the rest
        for ds in datasets:
            try:
                result.rows.append(screen_one(ds, model, calibrations, pretrained=pretrained, keys=keys,
                                              backend=backend, device=device,
                                              embed_options={"models": pool, **(embed_options or {})},
                                              level=level, progress=progress))
            except Exception as exc:  # noqa: BLE001 - one dataset's failure is reported, the others go on
                message = " ".join(str(exc).split()) or type(exc).__name__
                result.failures.append((ds.name, model, message))
                if on_failure:
                    on_failure(ds.name, model, message)
        del pool  # the model's memory goes before the next model loads
    add_combined_ncti(result.rows)
    return result


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


def screen_one(ds: Dataset, model: str, calibrations: Sequence[Calibration], *, pretrained, keys, backend, device,
               embed_options: dict, level: float, progress=None) -> ScreenRow:
    es, info = embed_dataset(model, str(ds.images), pretrained=pretrained, templates=ds.templates,
                             template_file=ds.template_file, template_set=ds.template_set,
                             classnames=ds.classnames, device=device, progress=progress, **embed_options)
    report = score(es, keys, backend=backend, device=device)
    row = ScreenRow(ds.name, model, report.scores, info.images, info.cached)
    for cal in calibrations:
        if cal.model != model:
            continue
        pred = predict(cal, report.scores[cal.score_key], level)
        row.predictions[cal.method] = {o: {"value": p.value, "low": p.low, "high": p.high}
                                       for o, p in pred.outcomes.items()}
        row.in_range[cal.method] = pred.in_range
    return row
