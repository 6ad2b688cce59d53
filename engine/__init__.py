"""The iimm library: everything a Python user imports. No Click, no printing."""

from .embeddings import EmbeddingSet, load_embeddings
from .errors import BackendUnavailable, IimmError, InputError
from .scores import SCORES, ScoreReport, score
from .stats import ClassStats

__all__ = ["EmbeddingSet", "load_embeddings", "score", "ScoreReport", "SCORES", "ClassStats",
           "IimmError", "InputError", "BackendUnavailable"]
