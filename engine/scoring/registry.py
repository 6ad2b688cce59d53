"""The score registry: every output key, what it means and what it needs, without torch (the CLI's help reads it).

`SCORES` are the embedding scores (`scores.score`), `TRANSFER_SCORES` the transferability
baselines (`baselines.compute_transfer`), `TRANSFER_ALIASES` groups of baseline keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..embedding.embedding_set import EmbeddingSet

# Default --quadratic-limit by device type: the all-pairs pass of the default `iimm score` takes
# seconds on a 2-core CPU (engine.scoring.pairwise) and on one GPU.
DEFAULT_QUADRATIC_LIMIT = {"cpu": 20_000, "cuda": 100_000}
DEFAULT_BASELINE_SAMPLE = 50_000
METRIC_GROUPS = ("all", "baselines", "everything")


@dataclass(frozen=True)
class ScoreSpec:
    key: str
    meaning: str
    passes: tuple[str, ...]
    min_classes: int = 1

    @property
    def quadratic(self) -> bool:
        return any(p in ("euclidean", "gensil") for p in self.passes)


SCORES: dict[str, ScoreSpec] = {s.key: s for s in [
    ScoreSpec("iimm", "Inter-Intra Modal Measure, ½(intra + inter): higher = more to gain and to forget",
              ("class",), 2),
    ScoreSpec("iimm_intra_image", "mean cosine similarity of all image pairs", ("class",)),
    ScoreSpec("iimm_inter_modal", "mean cosine of each image to the texts of its incorrect classes", ("class",), 2),
    ScoreSpec("acs", "mean cosine of each image to its correct class text", ("class",)),
    ScoreSpec("gap", "modality gap: distance between the image mean and the class-text mean", ("class",)),
    ScoreSpec("uniformity_text", "mean over classes of the cosine of its text to other classes' images",
              ("class",), 2),
    ScoreSpec("inter_text", "mean cosine between the texts of different classes", ("class",), 2),
    ScoreSpec("zeroshot_top1", "zero-shot top-1 accuracy (argmax of image·text)", ("zeroshot",)),
    ScoreSpec("zeroshot_top5", "zero-shot top-5 accuracy", ("zeroshot",)),
    ScoreSpec("zeroshot_balanced", "zero-shot balanced accuracy (mean per-class recall)", ("zeroshot",)),
    ScoreSpec("silhouette_modality", "silhouette of images vs class texts as two clusters, cosine distance",
              ("class", "modality")),
    ScoreSpec("silhouette_class", "silhouette of the images clustered by label, cosine distance",
              ("class", "silhouette_class"), 2),
    ScoreSpec("silhouette_class_euclidean", "silhouette of the images clustered by label, Euclidean distance",
              ("class", "euclidean"), 2),
    ScoreSpec("gensil", "generalised silhouette (power mean of cosine distances, exponent p) by label",
              ("class", "gensil"), 2),
]}



@dataclass(frozen=True)
class TransferScore:
    """One baseline output key: what it measures (one line) and which paper defines it."""

    key: str
    description: str
    reference: str

    def compute(self, es: EmbeddingSet, **options) -> tuple[float, list[str]]:
        """This key alone: (value, notes). Options as `compute_transfer`."""
        from .baselines import compute_transfer

        result = compute_transfer(es, [self.key], **options)
        return result.scores[self.key], result.notes


TRANSFER_SCORES: dict[str, TransferScore] = {s.key: s for s in [
    TransferScore("logme", "LogME: max log evidence per row of a Bayesian linear model features → one-hot labels",
                  "You et al., ICML 2021"),
    TransferScore("leep", "LEEP: log expected empirical prediction of the zero-shot classifier's labels",
                  "Nguyen et al., ICML 2020"),
    TransferScore("nce", "NCE: −H(label | zero-shot prediction)", "Tran et al., ICCV 2019"),
    TransferScore("hscore", "H-Score: tr(pinv(Cov f) · Cov(E[f | y]))", "Bao et al., ICIP 2019"),
    TransferScore("gbc_spherical", "GBC: −Σ Bhattacharyya coefficients between spherical class Gaussians",
                  "Pandy et al., CVPR 2022"),
    TransferScore("gbc_diagonal", "GBC: −Σ Bhattacharyya coefficients between diagonal class Gaussians",
                  "Pandy et al., CVPR 2022"),
    TransferScore("sfda", "SFDA: mean true-class probability of a regularised Fisher discriminant after ConfMix",
                  "Shao et al., ECCV 2022"),
    TransferScore("transrate", "TransRate: coding rate of all rows minus mean coding rate within classes",
                  "Huang et al., ICML 2022"),
    TransferScore("ncti_sc", "NCTI part: nuclear norm of the centred LDA features (raw; combine across models)",
                  "Wang et al., CVPR 2023"),
    TransferScore("ncti_cls", "NCTI part: mean LDA probability of the true class (raw; combine across models)",
                  "Wang et al., CVPR 2023"),
    TransferScore("ncti_nc", "NCTI part: log Σ_c nuclear norm of class-c LDA probabilities (raw; lower is better)",
                  "Wang et al., CVPR 2023"),
    TransferScore("emms", "EMMS: −residual of regressing features onto text-tower label embeddings",
                  "Meng et al., 2023"),
]}

TRANSFER_ALIASES: dict[str, tuple[str, ...]] = {"ncti": ("ncti_sc", "ncti_cls", "ncti_nc"),
                                               "gbc": ("gbc_spherical", "gbc_diagonal")}
