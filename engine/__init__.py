"""The iimm library: everything a Python user imports. No Click, no printing.

Names load on first use (PEP 562), so importing one light module of the package (as the CLI
does to build its help) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    ".calibration.catalog": ["Catalog", "Dataset", "load_catalog"],
    ".embedding.data": ["ImageDataset", "load_image_dataset", "resolve_templates"],
    ".embedding.embedding_set": ["EmbeddingSet"],
    ".embedding.loaders": ["load_embeddings"],
    "..errors": ["BackendUnavailable", "IimmError", "InputError"],
    ".embedding.extract": ["EmbedInfo", "embed_dataset"],
    ".embedding.model_catalog": ["list_model_entries"],
    ".embedding.models": ["LoadedModel", "ModelUnavailable", "class_text_embeddings", "encode_images",
                          "encode_texts", "load_model", "resolve_model"],
    ".calibration.plots": ["plot_calibration"],
    ".calibration.fit": ["OUTCOMES", "Calibration", "LinearFit", "Prediction", "RankCorrelation", "TaskPoint",
                         "fit_calibration", "fit_line", "rank_among", "rank_correlations", "task_points"],
    ".scoring.scores": ["SCORES", "ScoreReport", "score"],
    ".scoring.stats": ["ClassStats"],
    ".embedding.store": ["Store"],
    ".scoring.baselines": ["TRANSFER_SCORES", "TransferResult", "combine_ncti", "compute_transfer"],
}
_RENAMED = {"predict_outcomes": (".calibration.fit", "predict")}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _RENAMED

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
