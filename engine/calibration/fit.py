"""Calibration fits per (model, method): turn a task's IIMM into predicted gain and forgetting.

Per calibration task (one fine-tuning outcome each) the fit is `outcome = a + b·score` by
least squares, for outcomes `gain`, `normalized_gain` and `forgetting` (fractions, see
docs/prediction.md). A new task's prediction comes with a Student-t
prediction interval; leave-one-task-out errors say how well the fit transfers.
Rank correlations (Kendall τ-b, weighted τ) compare every score against every outcome.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

from ...errors import InputError
from ..files import write_atomic

CALIBRATION_FORMAT = "iimm-calibration"
CALIBRATION_VERSION = 1
OUTCOMES = ("gain", "normalized_gain", "forgetting")


class ConstantOutcome(InputError):
    """An outcome that is the same on every task: nothing to fit, which the calibration says in its own words."""
MIN_TASKS = 3  # a line through n points has n-2 residual degrees of freedom; LOO needs 2 left


@dataclass(frozen=True)
class TaskPoint:
    """One calibration task: its scores and measured outcomes (means over its runs)."""

    task: str
    n_runs: int
    scores: dict
    outcomes: dict


# What an outcome can be, accuracies being fractions: a gain or a change in accuracy lies in [-1, 1]; a
# normalised gain, (ft - zs) / (1 - zs), is at most 1.
POSSIBLE = {"gain": (-1.0, 1.0), "forgetting": (-1.0, 1.0), "normalized_gain": (-math.inf, 1.0)}


@dataclass(frozen=True)
class LinearFit:
    """Least-squares `outcome = intercept + slope·score` over `n` calibration tasks.

    `loo_errors[task]` is observed minus predicted by the fit without that task; they are
    None when leaving some task out leaves a single distinct score value.
    """

    score_key: str
    outcome: str
    n: int
    slope: float
    intercept: float
    slope_stderr: float
    intercept_stderr: float
    r2: float
    pearson_r: float
    p_value: float
    residual_std: float
    score_mean: float
    score_sxx: float
    loo_rmse: float | None
    loo_mae: float | None
    loo_errors: dict | None

    def interval(self, score: float, level: float = 0.90) -> tuple[float, float, float]:
        """Point prediction and Student-t prediction interval `(value, low, high)` for a new task, cut to what
        the outcome can be (`POSSIBLE`): the cut interval still covers at least as often, and no caller shows
        a gain of 1.02."""
        value = self.intercept + self.slope * score
        t = stats.t.ppf(0.5 + level / 2, self.n - 2)
        half = t * self.residual_std * math.sqrt(1 + 1 / self.n + (score - self.score_mean) ** 2 / self.score_sxx)
        lo, hi = POSSIBLE.get(self.outcome, (-math.inf, math.inf))
        return tuple(float(min(max(v, lo), hi)) for v in (value, value - half, value + half))


@dataclass(frozen=True)
class RankCorrelation:
    """Kendall τ-b (scipy p-value) and weighted τ (permutation p-value) of one score vs one outcome.

    Statistics are None, with `note` saying why, when they are undefined (too few tasks or a
    constant input); `weighted_tau_p` is None when no permutations were asked for.
    """

    score_key: str
    outcome: str
    n: int
    kendall_tau_b: float | None
    kendall_p: float | None
    weighted_tau: float | None
    weighted_tau_p: float | None
    note: str | None = None


@dataclass(frozen=True)
class OutcomePrediction:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Prediction:
    """Predicted outcomes of a new task with `level` prediction intervals."""

    score_key: str
    score: float
    in_range: bool
    score_range: tuple
    level: float
    outcomes: dict

    def to_dict(self) -> dict:
        return {self.score_key: self.score, "in_range": self.in_range, "calibration_range": list(self.score_range),
                "level": self.level, "predictions": {k: asdict(v) for k, v in self.outcomes.items()}}


@dataclass
class Calibration:
    """Fits of every outcome on `score_key` (and on compared score keys) for one (model, method).

    `fits[score_key][outcome]` is a `LinearFit`; `skipped["key/outcome"]` says why a fit is
    absent; `score_range` is the (min, max) of `score_key` over the calibration tasks.
    """

    model: str
    pretrained: str | None
    method: str
    score_key: str
    points: list
    fits: dict
    rank_correlations: list
    skipped: dict = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    @property
    def tasks(self) -> list[str]:
        return [p.task for p in self.points]

    @property
    def score_range(self) -> tuple[float, float]:
        values = [p.scores[self.score_key] for p in self.points]
        return float(min(values)), float(max(values))

    def fit(self, outcome: str, score_key: str | None = None) -> LinearFit:
        key = score_key or self.score_key
        try:
            return self.fits[key][outcome]
        except KeyError:
            reason = self.skipped.get(f"{key}/{outcome}", "it was not part of the calibration records")
            raise InputError(f"calibration has no fit of {outcome} on {key}: {reason}") from None

    def to_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "version": self.version, "model": self.model,
                "pretrained": self.pretrained, "method": self.method, "score_key": self.score_key,
                "tasks": self.tasks, "score_range": list(self.score_range),
                "points": [asdict(p) for p in self.points],
                "fits": {k: {o: asdict(f) for o, f in by_outcome.items()} for k, by_outcome in self.fits.items()},
                "rank_correlations": [asdict(r) for r in self.rank_correlations], "skipped": dict(self.skipped)}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The calibration as JSON text; written atomically to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        if path is not None:
            write_atomic(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise InputError(f"{source} is not an iimm calibration file (no \"format\": \"{CALIBRATION_FORMAT}\"); "
                             f"create one with `iimm calibrate`")
        if data.get("version") != CALIBRATION_VERSION:
            raise InputError(f"{source} has calibration version {data.get('version')!r} but this iimm reads version "
                             f"{CALIBRATION_VERSION}; re-create it with `iimm calibrate` or use a matching iimm")
        try:
            calibration = cls(
                model=data["model"], pretrained=data.get("pretrained"), method=data["method"],
                score_key=data["score_key"], points=[TaskPoint(**p) for p in data["points"]],
                fits={k: {o: LinearFit(**f) for o, f in v.items()} for k, v in data["fits"].items()},
                rank_correlations=[RankCorrelation(**r) for r in data.get("rank_correlations", [])],
                skipped=dict(data.get("skipped", {})))
            calibration.score_range  # every point must carry the primary score
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InputError(f"{source} is a damaged calibration file ({type(exc).__name__}: {exc}); re-create it "
                             f"with `iimm calibrate`") from exc
        return calibration

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise InputError(f"cannot read calibration {path}: {exc.strerror}; pass an existing file") from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); pass a calibration written "
                             f"by `iimm calibrate`") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not a text file; pass a calibration JSON written by `iimm calibrate`") from exc
        return cls.from_dict(data, str(path))


def task_points(records: Iterable[dict], model: str | None = None, method: str | None = None,
                pretrained: str | None = None) -> list[TaskPoint]:
    """Group fine-tune records into one point per task (means over repeated runs, e.g. seeds).

    Records are those `iimm finetune` writes: `task`, `scores`, `zeroshot_acc`,
    `finetuned_acc`, `gain`, `normalized_gain`, `forgetting`, `ood` (accuracies are
    fractions). Missing outcomes are derived: gain = finetuned − zeroshot, normalized_gain =
    gain / (1 − zeroshot), forgetting = mean over `ood` of after − before. Only records
    matching the given model / method / pretrained are kept; groups are keyed by
    (model, pretrained, method, task).
    """
    groups: dict[tuple, list[dict]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(f"fine-tune record #{i + 1} is a {type(rec).__name__}, not a JSON object")
        if (model is not None and rec.get("model") != model) or (method is not None and rec.get("method") != method) \
                or (pretrained is not None and rec.get("pretrained") != pretrained):
            continue
        if not isinstance(rec.get("task"), str) or not rec["task"]:
            raise InputError(f"fine-tune record #{i + 1} has no 'task' name; every record needs the task it was "
                             f"trained on")
        key = (rec.get("model"), rec.get("pretrained"), rec.get("method"), rec["task"])
        groups.setdefault(key, []).append(rec)
    points = []
    for (_, _, _, task), recs in groups.items():
        scores = [_record_scores(r, task) for r in recs]
        outcomes = [_record_outcomes(r, task) for r in recs]
        points.append(TaskPoint(task, len(recs), _mean_common(scores), _mean_common(outcomes)))
    return points


def fit_calibration(records: Sequence[dict], model: str, method: str, score_key: str = "iimm",
                    compare_keys: Sequence[str] | None = None, pretrained: str | None = None,
                    permutations: int = 999, seed: int = 0) -> Calibration:
    """Fit every outcome on `score_key` (and on `compare_keys`) over the tasks of (model, method).

    `compare_keys=None` compares every other score present on all tasks; `[]` none.
    Rank correlations use `permutations` resamples (seeded) for the weighted-τ p-value.
    """
    pretrained_tags = {r.get("pretrained") for r in records
                       if isinstance(r, dict) and r.get("model") == model and r.get("method") == method}
    if pretrained is None and len(pretrained_tags) > 1:
        raise InputError(f"records of {model}/{method} come from several pretrained weights "
                         f"({', '.join(sorted(map(str, pretrained_tags)))}); pass the pretrained tag to calibrate")
    if pretrained is None and pretrained_tags:
        pretrained = pretrained_tags.pop()
    points = task_points(records, model, method, pretrained)
    if len(points) < MIN_TASKS:
        raise InputError(f"{len(points)} calibration task(s) for model {model!r}, method {method!r}; a fit needs at "
                         f"least {MIN_TASKS} tasks with fine-tuning results")
    for p in points:
        if score_key not in p.scores:
            raise InputError(f"task {p.task!r} has no {score_key!r} score; score every calibration task "
                             f"(`iimm score --metrics {score_key}`) before fine-tuning records are fitted")
    if len({p.scores[score_key] for p in points}) < 2:
        raise InputError(f"{score_key} is the same on every calibration task; a fit needs tasks with different scores")
    if compare_keys is None:
        common = set.intersection(*(set(p.scores) for p in points))
        compare_keys = sorted(common - {score_key})
    keys = [score_key] + [k for k in compare_keys if k != score_key]
    fits: dict[str, dict[str, LinearFit]] = {}
    skipped: dict[str, str] = {}
    constant = set()  # (key, outcome) whose outcome does not vary
    for key in keys:
        for outcome in OUTCOMES:
            try:
                fits.setdefault(key, {})[outcome] = _fit_points(points, key, outcome)
            except InputError as exc:
                skipped[f"{key}/{outcome}"] = str(exc)
                if isinstance(exc, ConstantOutcome):
                    constant.add((key, outcome))
    fits = {k: v for k, v in fits.items() if v}
    if score_key not in fits:
        why = {k.split("/", 1)[1]: v for k, v in skipped.items() if k.startswith(score_key + "/")}
        same = [o for o in why if (score_key, o) in constant]
        listed = ", ".join(same[:-1]) + (" and " if len(same) > 1 else "") + same[-1] if same else ""
        parts = [f"{listed} {'is' if len(same) == 1 else 'are each'} the same on all {len(points)} "
                 f"tasks, so there is no relation to fit"] if same else []
        parts += [v for o, v in why.items() if o not in same]
        raise InputError(f"no outcome could be fitted on {score_key} for model {model!r} with method {method!r}: "
                         + "; ".join(parts))
    ranks = rank_correlations(points, keys, OUTCOMES, permutations=permutations, seed=seed)
    return Calibration(model, pretrained, method, score_key, points, fits, ranks, skipped)


def fit_line(score: np.ndarray, outcome: np.ndarray, tasks: Sequence[str], score_key: str = "iimm",
             outcome_name: str = "gain") -> LinearFit:
    """Least-squares fit of outcome on score. score, outcome: (n,) float; tasks: n names."""
    x = np.asarray(score, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    n = len(x)
    if n < MIN_TASKS:
        raise InputError(f"{n} task(s) have both {score_key} and {outcome_name}; a fit needs at least {MIN_TASKS}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError(f"non-finite {score_key} or {outcome_name} values; every calibration value must be finite")
    if np.ptp(x) == 0:
        raise InputError(f"{score_key} is the same on all {n} tasks; a fit needs different scores")
    if np.ptp(y) == 0:
        raise ConstantOutcome(f"{outcome_name} is the same on all {n} tasks; there is no relation to fit")
    res = stats.linregress(x, y)
    fitted = res.intercept + res.slope * x
    sse = float(np.sum((y - fitted) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    sxx = float(np.sum((x - x.mean()) ** 2))
    loo = _loo_errors(x, y, sxx, fitted)
    return LinearFit(
        score_key=score_key, outcome=outcome_name, n=n, slope=float(res.slope), intercept=float(res.intercept),
        slope_stderr=float(res.stderr), intercept_stderr=float(res.intercept_stderr), r2=1.0 - sse / sst,
        pearson_r=float(res.rvalue), p_value=float(res.pvalue), residual_std=math.sqrt(sse / (n - 2)),
        score_mean=float(x.mean()), score_sxx=sxx,
        loo_rmse=None if loo is None else float(np.sqrt(np.mean(loo ** 2))),
        loo_mae=None if loo is None else float(np.mean(np.abs(loo))),
        loo_errors=None if loo is None else {t: float(e) for t, e in zip(tasks, loo)})


def predict(calibration: Calibration, score: float, level: float = 0.90,
            score_key: str | None = None) -> Prediction:
    """Predicted gain / normalized_gain / forgetting of a task whose score (IIMM) is `score`."""
    key = score_key or calibration.score_key
    if not (isinstance(score, (int, float, np.floating)) and math.isfinite(score)):
        raise InputError(f"the task's {key} is {score!r}; a prediction needs a finite score")
    if not 0 < level < 1:
        raise InputError(f"interval level {level} is not between 0 and 1; use e.g. 0.90 for a 90% interval")
    if key not in calibration.fits:
        raise InputError(f"calibration has no fits on {key}; fitted scores: {', '.join(calibration.fits)}")
    outcomes = {o: OutcomePrediction(*f.interval(float(score), level)) for o, f in calibration.fits[key].items()}
    values = [p.scores[key] for p in calibration.points if key in p.scores]
    lo, hi = float(min(values)), float(max(values))
    return Prediction(key, float(score), lo <= score <= hi, (lo, hi), level, outcomes)


def rank_correlations(records: Sequence, score_keys: Sequence[str], outcomes: Sequence[str] = OUTCOMES,
                      permutations: int = 999, seed: int = 0) -> list[RankCorrelation]:
    """Kendall τ-b and weighted τ of every score with every outcome across tasks.

    records: fine-tune record dicts (grouped into tasks by `task_points`) or `TaskPoint`s.
    The weighted-τ p-value is a two-sided permutation test (exact when n! ≤ permutations).
    """
    points = [r for r in records if isinstance(r, TaskPoint)]
    if len(points) != len(records):
        points = task_points(records)
    rows = []
    for key in score_keys:
        for outcome in outcomes:
            pairs = [(p.scores[key], p.outcomes[outcome]) for p in points if key in p.scores and outcome in p.outcomes]
            rows.append(_rank_row(key, outcome, np.array(pairs, dtype=np.float64).reshape(-1, 2), permutations, seed))
    return rows


def rank_among(value: float, known_values: Iterable[float]) -> tuple[int, int]:
    """Rank of a task's score among `known_values` (other tasks): 1 = highest; total counts the task.

    Ties share the better rank: rank = 1 + number of known values strictly greater.
    """
    known = np.asarray(list(known_values), dtype=np.float64)
    if not math.isfinite(value) or not np.all(np.isfinite(known)):
        raise InputError("cannot rank a NaN or infinite score; recompute the scores of the affected tasks")
    return int(np.sum(known > value)) + 1, len(known) + 1


def _fit_points(points: list[TaskPoint], key: str, outcome: str) -> LinearFit:
    use = [p for p in points if key in p.scores and outcome in p.outcomes]
    return fit_line(np.array([p.scores[key] for p in use]), np.array([p.outcomes[outcome] for p in use]),
                    [p.task for p in use], key, outcome)


def _loo_errors(x: np.ndarray, y: np.ndarray, sxx: float, fitted: np.ndarray) -> np.ndarray | None:
    """Leave-one-out prediction errors from the hat matrix: e_i = r_i / (1 − h_ii).

    None when dropping some task leaves a single distinct score (h_ii = 1).
    """
    _, counts = np.unique(x, return_counts=True)
    if len(counts) == 2 and counts.min() == 1:
        return None
    leverage = 1 / len(x) + (x - x.mean()) ** 2 / sxx
    return (y - fitted) / (1 - leverage)


def _rank_row(key: str, outcome: str, xy: np.ndarray, permutations: int, seed: int) -> RankCorrelation:
    x, y = xy[:, 0], xy[:, 1]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        why = f"{n} task(s)" if n < 3 else (f"{key} is constant" if np.ptp(x) == 0 else f"{outcome} is constant")
        return RankCorrelation(key, outcome, n, None, None, None, None, f"undefined: {why}")
    kendall = stats.kendalltau(x, y, variant="b")
    weighted = float(stats.weightedtau(x, y).statistic)
    weighted_p = None
    if permutations > 0:
        def statistic(y_permuted, axis):
            return stats.weightedtau(x, y_permuted, axis=axis).statistic
        test = stats.permutation_test((y,), statistic, permutation_type="pairings", vectorized=True,
                                      n_resamples=permutations, rng=np.random.default_rng(seed))
        weighted_p = float(test.pvalue)
    return RankCorrelation(key, outcome, n, float(kendall.statistic), float(kendall.pvalue), weighted, weighted_p)


def _record_scores(rec: dict, task: str) -> dict:
    scores = rec.get("scores") or {}
    if not isinstance(scores, dict):
        raise InputError(f"task {task!r}: 'scores' must be an object of score key to value")
    out = {}
    for key, value in scores.items():
        if value is None:
            continue
        out[key] = _finite(value, task, f"scores.{key}")
    return out


def _record_outcomes(rec: dict, task: str) -> dict:
    zs, ft = rec.get("zeroshot_acc"), rec.get("finetuned_acc")
    for name, acc in (("zeroshot_acc", zs), ("finetuned_acc", ft)):
        if acc is not None and not 0 <= _finite(acc, task, name) <= 1:
            raise InputError(f"task {task!r}: {name} = {acc} is outside [0, 1]; accuracies are fractions, not percent")
    out = {}
    gain = rec.get("gain")
    if gain is None and zs is not None and ft is not None:
        gain = ft - zs
    if gain is not None:
        out["gain"] = _finite(gain, task, "gain")
    norm = rec.get("normalized_gain")
    if norm is None and gain is not None and zs is not None and zs < 1:
        norm = gain / (1 - zs)
    if norm is not None:
        out["normalized_gain"] = _finite(norm, task, "normalized_gain")
    forgetting = rec.get("forgetting")
    ood = rec.get("ood") or {}
    if forgetting is None and ood:
        try:
            forgetting = float(np.mean([v["after"] - v["before"] for v in ood.values()]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"task {task!r}: 'ood' must map each probe task to "
                             f"{{\"before\", \"after\"}} accuracies") from exc
    if forgetting is not None:
        out["forgetting"] = _finite(forgetting, task, "forgetting")
    return out


def _finite(value, task: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"task {task!r}: {name} is {value!r}, not a number")
    if not math.isfinite(value):
        raise InputError(f"task {task!r}: {name} is {value}; fine-tune records must hold finite values")
    return float(value)


def _mean_common(dicts: list[dict]) -> dict:
    """Mean of each key present in every dict (a value missing from some run is not averaged)."""
    keys = [k for k in dicts[0] if all(k in d for d in dicts[1:])]
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}
