"""The iimm library: everything a Python user imports. No Click, no printing."""

from .calibration.catalog import Catalog, Dataset, load_catalog
from .embedding.data import ImageDataset, load_image_dataset, resolve_templates
from .embedding.embedding_set import EmbeddingSet
from .embedding.loaders import load_embeddings
from ..errors import BackendUnavailable, IimmError, InputError
from .embedding.extract import EmbedInfo, embed_dataset
from .embedding.model_catalog import list_model_entries
from .embedding.models import (LoadedModel, ModelUnavailable, class_text_embeddings, encode_images, encode_texts, load_model,
                     resolve_model)
from .calibration.plots import plot_calibration
from .calibration.fit import (OUTCOMES, Calibration, LinearFit, Prediction, RankCorrelation, TaskPoint, fit_calibration,
                      fit_line, rank_among, rank_correlations, task_points)
from .calibration.fit import predict as predict_outcomes
from .scoring.scores import SCORES, ScoreReport, score
from .scoring.stats import ClassStats
from .embedding.store import Store
from .scoring.baselines import TRANSFER_SCORES, TransferResult, combine_ncti, compute_transfer

__all__ = ["EmbeddingSet", "load_embeddings", "score", "ScoreReport", "SCORES", "ClassStats",
           "IimmError", "InputError", "BackendUnavailable",
           "Catalog", "Dataset", "load_catalog", "plot_calibration",
           "OUTCOMES", "Calibration", "LinearFit", "Prediction", "RankCorrelation", "TaskPoint", "fit_calibration",
           "fit_line", "rank_among", "rank_correlations", "task_points", "predict_outcomes",
           "TRANSFER_SCORES", "TransferResult", "combine_ncti", "compute_transfer",
           "ImageDataset", "load_image_dataset", "resolve_templates", "EmbedInfo", "embed_dataset",
           "list_model_entries", "LoadedModel", "ModelUnavailable", "class_text_embeddings", "encode_images",
           "encode_texts", "load_model", "resolve_model", "Store"]
