"""The registry that drives scoring: every score key, what it reads, and how it is finalised.

A `ScoreSpec` owns everything about its key: the streamed statistics it reads (`passes`, names
in `STATISTICS`), its finaliser (`finalise(plan) -> float`), its all-pairs parameters
(`all_pairs`), its class requirements. A `StatisticSpec` says how to build one accumulator
and which merged statistics it is measured against (`after`), which fixes its pass: a statistic
with no `after` is read in pass 1, one measured against pass-1 statistics in pass 2, and so on.
The pass driver (`engine.scoring.passes`) reads the rows once per pass for every statistic
that pass needs. Adding a score is `register(ScoreSpec(...))` plus its finaliser
(docs/architecture.md shows one). One resolver (`resolve_keys`) serves every key, group and alias.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable

from ...errors import InputError
from .options import DEFAULT_BASELINE_SAMPLE, DEFAULT_QUADRATIC_LIMIT  # noqa: F401

EMBEDDING, BASELINE = "embedding", "baseline"


class _Finalisers:
    """`fin.NAME`: a function of `engine.scoring.finalisers`, imported on first call, so that the registry
    loads without torch (the CLI's help reads it); `fin.made_by(NAME, *args)`: the function NAME(*args) makes."""

    def __getattr__(self, name: str):
        return _Lazy(name)

    @staticmethod
    def made_by(name: str, *args) -> "_Lazy":
        return _Lazy(name, args)


class _Lazy:
    def __init__(self, name: str, args: tuple = ()):
        self.name, self.args = name, args
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        from . import finalisers

        fn = getattr(finalisers, self.name)
        return (fn(*self.args) if self.args else fn)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"finalisers.{self.name}{self.args if self.args else ''}"


fin = _Finalisers()


@dataclass(frozen=True)
class StatisticSpec:
    """How to build one streamed statistic from the plan (`build(plan, index)`; index < passes(plan)).

    after: statistics (merged over the whole set) it is built against; it is read in the pass after theirs.
    passes: how many consecutive passes it takes (one accumulator each), e.g. TransRate's class groups.
    provided_by: a richer statistic that serves as this one when both are planned.
    """

    name: str
    build: Callable
    after: tuple[str, ...] = ()
    passes: Callable | int = 1
    provided_by: str | None = None

    @property
    def multi_pass(self) -> bool:
        """Whether it may take several passes; its merged value is then a list, one accumulator per pass."""
        return self.passes != 1

    def pass_count(self, plan) -> int:
        return self.passes(plan) if callable(self.passes) else self.passes


@dataclass(frozen=True)
class ScoreSpec:
    """One output key.

    passes: names of the streamed statistics it reads (or a callable plan -> names when that depends on N, D);
    finalise: plan -> float, reading `plan.stat(name)`, `plan.options`, `plan.sample_rows(...)`;
    all_pairs: an all-pairs silhouette, computed with the others of its kind in one tiled sweep over the
        row sample (`engine.scoring.pairwise.all_pairs_scores`);
    min_classes / clustering: at least this many classes (with rows, for a clustering score);
    family: "embedding" (group "all") or "baseline" (group "baselines"); reference: the paper, for baselines.
    """

    key: str
    meaning: str
    passes: tuple[str, ...] | Callable = ()
    finalise: Callable | None = None
    min_classes: int = 1
    clustering: bool = False
    all_pairs: bool = False
    family: str = EMBEDDING
    reference: str = ""

    @property
    def description(self) -> str:
        return self.meaning

    @property
    def quadratic(self) -> bool:
        return self.all_pairs

    def passes_for(self, plan) -> tuple[str, ...]:
        return tuple(self.passes(plan) if callable(self.passes) else self.passes)

    def compute(self, es, **options) -> tuple[float, list[str]]:
        """This baseline alone: (value, notes). Options as `compute_transfer`."""
        from .baselines import compute_transfer

        result = compute_transfer(es, [self.key], **options)
        return result.scores[self.key], result.notes


def _stat(name, build, after=(), passes=1, provided_by=None) -> StatisticSpec:
    return StatisticSpec(name, build, tuple(after), passes, provided_by)


STATISTICS: dict[str, StatisticSpec] = {s.name: s for s in [
    _stat("class", fin.build_class_stats),
    _stat("zeroshot", fin.build_zeroshot_stats),
    _stat("silhouette_class", fin.build_silhouette_class_stats, after=("class",)),
    _stat("modality", fin.build_modality_stats, after=("class",)),
    _stat("gram", fin.build_gram_light, provided_by="gram_scatter"),
    _stat("gram_scatter", fin.build_gram_scatter),
    _stat("zeroshot_joint", fin.build_zeroshot_joint),
    _stat("leep", fin.build_leep, after=("zeroshot_joint",)),
    _stat("sfda_mix", fin.build_sfda_mix, after=("gram_scatter",)),
    _stat("sfda_refit", fin.build_sfda_refit, after=("sfda_mix",)),
    _stat("transrate", fin.build_transrate_group, after=("gram_scatter",), passes=fin.transrate_group_count),
]}


def _spec(key, meaning, passes, finalise, min_classes=1, clustering=False, all_pairs=False) -> ScoreSpec:
    return ScoreSpec(key, meaning, passes, finalise, min_classes, clustering, all_pairs)


def _baseline(key, meaning, reference, passes, finalise) -> ScoreSpec:
    return ScoreSpec(key, meaning, passes, finalise, 2, True, False, BASELINE, reference)


REGISTRY: dict[str, ScoreSpec] = {}
SCORES: dict[str, ScoreSpec] = {}           # the embedding scores (group "all"), in registry order
TRANSFER_SCORES: dict[str, ScoreSpec] = {}  # the baselines (group "baselines")


def register(spec: ScoreSpec) -> ScoreSpec:
    """Add `spec` to the registry (after the scores of its family); its key must be new."""
    if spec.key in REGISTRY or spec.key in GROUPS or spec.key in ALIASES:
        raise ValueError(f"score key {spec.key!r} is already taken")
    if spec.family not in (EMBEDDING, BASELINE):
        raise ValueError(f"family must be {EMBEDDING!r} or {BASELINE!r}, got {spec.family!r}")
    unknown = [p for p in (spec.passes if not callable(spec.passes) else ()) if p not in STATISTICS]
    if unknown:
        raise ValueError(f"{spec.key}: unknown statistics {unknown}; known: {', '.join(STATISTICS)}")
    REGISTRY[spec.key] = spec
    (SCORES if spec.family == EMBEDDING else TRANSFER_SCORES)[spec.key] = spec
    return spec


def unregister(key: str) -> None:
    """Remove a key added by `register` (tests that register a score at run time clean up with it)."""
    spec = REGISTRY.pop(key)
    (SCORES if spec.family == EMBEDDING else TRANSFER_SCORES).pop(key)


def keys_of(family: str) -> list[str]:
    return list(SCORES if family == EMBEDDING else TRANSFER_SCORES)


GROUPS: dict[str, Callable[[], list[str]]] = {
    "all": lambda: keys_of(EMBEDDING),
    "baselines": lambda: keys_of(BASELINE),
    "everything": lambda: [*keys_of(EMBEDDING), *keys_of(BASELINE)],
}
ALIASES: dict[str, tuple[str, ...]] = {"ncti": ("ncti_sc", "ncti_cls", "ncti_nc"),
                                       "gbc": ("gbc_spherical", "gbc_diagonal")}


def resolve_keys(keys: Iterable[str] | str | None, scope: str = "everything") -> list[str]:
    """Metric keys, groups and aliases -> output keys, in registry order (embedding scores, then baselines).

    None: group "all" (every embedding score); "baselines": every baseline; "everything": both;
    aliases such as "ncti" expand to their parts. scope "baselines" accepts only baselines and
    their aliases, and reads None and "all" as every baseline. Unknown keys are one InputError.
    """
    baselines_only = scope == "baselines"
    word = "baseline" if baselines_only else "metric"
    if keys is None:
        keys = ["all"]
    elif isinstance(keys, str):
        keys = keys.split(",")
    keys = [k.strip() for k in keys if k.strip()]
    groups = ["all"] if baselines_only else list(GROUPS)
    members = keys_of(BASELINE) if baselines_only else [*keys_of(EMBEDDING), *keys_of(BASELINE)]
    names = [*groups, *members, *ALIASES] if not baselines_only else [*members, *ALIASES]
    if not keys:
        if baselines_only:
            raise InputError(f"no baseline requested; pass some of: {', '.join(members)}")
        raise InputError(f"no metric requested; pass --metrics all or some of: {', '.join(names)}")
    unknown = [k for k in keys if k not in names and k not in groups]
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hints = [f"{k!r} (did you mean {close[k][0]!r}?)" if close[k] else repr(k) for k in unknown]
        raise InputError(f"unknown {word}{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; valid keys: "
                         f"{', '.join(names)}")
    wanted: set[str] = set()
    for k in keys:
        if k in groups:
            wanted.update(keys_of(BASELINE) if baselines_only else GROUPS[k]())
        else:
            wanted.update(ALIASES.get(k, (k,)))
    return [k for k in members if k in wanted]


for _s in [
    _spec("iimm", "Inter-Intra Modal Measure, ½(intra + inter): higher = more to gain and to forget",
          ("class",), fin.iimm, 2),
    _spec("iimm_intra_image", "mean cosine similarity of all image pairs", ("class",), fin.intra_image),
    _spec("iimm_inter_modal", "mean cosine of each image to the texts of its incorrect classes", ("class",),
          fin.inter_modal, 2),
    _spec("acs", "mean cosine of each image to its correct class text", ("class",), fin.acs),
    _spec("gap", "modality gap: distance between the image mean and the class-text mean", ("class",), fin.gap),
    _spec("uniformity_text", "mean over classes of the cosine of its text to other classes' images", ("class",),
          fin.uniformity_text, 2),
    _spec("inter_text", "mean cosine between the texts of different classes", ("class",), fin.inter_text, 2),
    _spec("zeroshot_top1", "zero-shot top-1 accuracy (argmax of image·text)", ("zeroshot",), fin.zeroshot_top1),
    _spec("zeroshot_top5", "zero-shot top-5 accuracy", ("zeroshot",), fin.zeroshot_top5),
    _spec("zeroshot_balanced", "zero-shot balanced accuracy (mean per-class recall)", ("zeroshot",),
          fin.zeroshot_balanced),
    _spec("silhouette_modality", "silhouette of images vs class texts as two clusters, cosine distance",
          ("class", "modality"), fin.silhouette_modality),
    _spec("silhouette_class", "silhouette of the images clustered by label, cosine distance",
          ("class", "silhouette_class"), fin.silhouette_class, 2, clustering=True),
    _spec("silhouette_class_euclidean", "silhouette of the images clustered by label, Euclidean distance",
          (), fin.made_by("all_pairs", "silhouette_class_euclidean"), 2, clustering=True, all_pairs=True),
    _spec("gensil", "generalised silhouette (power mean of cosine distances, exponent p) by label",
          (), fin.made_by("all_pairs", "gensil"), 2, clustering=True, all_pairs=True),
    _baseline("logme", "LogME: max log evidence per row of a Bayesian linear model features → one-hot labels",
              "You et al., ICML 2021", fin.logme_passes, fin.logme),
    _baseline("leep", "LEEP: log expected empirical prediction of the zero-shot classifier's labels",
              "Nguyen et al., ICML 2020", ("zeroshot_joint", "leep"), fin.leep),
    _baseline("nce", "NCE: −H(label | zero-shot prediction)", "Tran et al., ICCV 2019", ("zeroshot_joint",),
              fin.nce_score),
    _baseline("hscore", "H-Score: tr(pinv(Cov f) · Cov(E[f | y]))", "Bao et al., ICIP 2019", ("gram_scatter",),
              fin.hscore_score),
    _baseline("gbc_spherical", "GBC: −Σ Bhattacharyya coefficients between spherical class Gaussians",
              "Pandy et al., CVPR 2022", ("gram",), fin.gbc_spherical),
    _baseline("gbc_diagonal", "GBC: −Σ Bhattacharyya coefficients between diagonal class Gaussians",
              "Pandy et al., CVPR 2022", ("gram",), fin.gbc_diagonal),
    _baseline("sfda", "SFDA: mean true-class probability of a regularised Fisher discriminant after ConfMix",
              "Shao et al., ECCV 2022", ("gram_scatter", "sfda_mix", "sfda_refit"), fin.sfda),
    _baseline("transrate", "TransRate: coding rate of all rows minus mean coding rate within classes",
              "Huang et al., ICML 2022", ("gram_scatter", "transrate"), fin.transrate_score),
    _baseline("ncti_sc", "NCTI part: nuclear norm of the centred LDA features (raw; combine across models)",
              "Wang et al., CVPR 2023", (), fin.made_by("ncti_part", "ncti_sc")),
    _baseline("ncti_cls", "NCTI part: mean LDA probability of the true class (raw; combine across models)",
              "Wang et al., CVPR 2023", (), fin.made_by("ncti_part", "ncti_cls")),
    _baseline("ncti_nc", "NCTI part: log Σ_c nuclear norm of class-c LDA probabilities (raw; lower is better)",
              "Wang et al., CVPR 2023", (), fin.made_by("ncti_part", "ncti_nc")),
    _baseline("emms", "EMMS: −residual of regressing features onto text-tower label embeddings",
              "Meng et al., 2023", ("gram_scatter",), fin.emms_score),
]:
    register(_s)

METRIC_GROUPS = tuple(GROUPS)
TRANSFER_ALIASES = ALIASES
TransferScore = ScoreSpec   # a baseline's entry: .description, .reference, .compute(es, **options)
