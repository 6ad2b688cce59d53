"""The iimm library: everything a Python user imports. No Click, no printing."""

from .catalog import Catalog, Dataset, load_catalog
from .data import ImageDataset, load_image_dataset, resolve_templates
from .embeddings import EmbeddingSet, load_embeddings
from .errors import BackendUnavailable, IimmError, InputError
from .extract import EmbedInfo, embed_dataset
from .model_catalog import list_model_entries
from .models import (LoadedModel, ModelUnavailable, class_text_embeddings, encode_images, encode_texts, load_model,
                     resolve_model)
from .plots import plot_calibration
from .predict import (OUTCOMES, Calibration, LinearFit, Prediction, RankCorrelation, TaskPoint, fit_calibration,
                      fit_line, rank_among, rank_correlations, task_points)
from .predict import predict as predict_outcomes
from .scores import SCORES, ScoreReport, score
from .stats import ClassStats
from .store import Store
from .transfer import TRANSFER_SCORES, TransferResult, combine_ncti, compute_transfer

__all__ = ["EmbeddingSet", "load_embeddings", "score", "ScoreReport", "SCORES", "ClassStats",
           "IimmError", "InputError", "BackendUnavailable",
           "Catalog", "Dataset", "load_catalog", "plot_calibration",
           "OUTCOMES", "Calibration", "LinearFit", "Prediction", "RankCorrelation", "TaskPoint", "fit_calibration",
           "fit_line", "rank_among", "rank_correlations", "task_points", "predict_outcomes",
           "TRANSFER_SCORES", "TransferResult", "combine_ncti", "compute_transfer",
           "ImageDataset", "load_image_dataset", "resolve_templates", "EmbedInfo", "embed_dataset",
           "list_model_entries", "LoadedModel", "ModelUnavailable", "class_text_embeddings", "encode_images",
           "encode_texts", "load_model", "resolve_model", "Store"]
