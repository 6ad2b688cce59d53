"""The transferability baselines' statistics, streamed over row chunks.

Each is an `Accumulator` (engine.scoring.accumulator) fed `Chunk`s whose unit rows `chunk.x`
(float64, normalised once per chunk by the pass driver) it only reads. Everything is float64.
"""

from __future__ import annotations

import numpy as np

from .accumulator import Accumulator
from .chunk import Chunk, unit_rows


normalise_rows = unit_rows  # rows: (n, D) float -> (n, D) float64 unit rows, a new array


def _chan_scatter(a: "GramStats", b: "GramStats") -> np.ndarray:
    """Scatter about the mean of the union: S_a + S_b + δδᵀ·n_a n_b / (n_a + n_b), δ the difference of the means."""
    na, nb = a.n, b.n
    if not a.with_scatter or na == 0 or nb == 0:
        return a.scatter + b.scatter
    delta = b.mean - a.mean
    return a.scatter + b.scatter + np.outer(delta, delta) * (na * nb / (na + nb))


def _chan_class_sq_dev(a: "GramStats", b: "GramStats") -> np.ndarray:
    """Per-class, per-dimension Σ (x − μ_c)² of the union, by the same pairwise update per class."""
    ca, cb = a.count[:, None].astype(np.float64), b.count[:, None].astype(np.float64)
    both = (ca > 0) & (cb > 0)
    mean_a = np.divide(a.class_sum, ca, out=np.zeros_like(a.class_sum), where=ca > 0)
    mean_b = np.divide(b.class_sum, cb, out=np.zeros_like(b.class_sum), where=cb > 0)
    cross = np.where(both, np.square(mean_b - mean_a) * (ca * cb / np.maximum(ca + cb, 1.0)), 0.0)
    return a.class_sq_dev + b.class_sq_dev + cross


class GramStats(Accumulator):
    """Pass 1 of the baselines: class sums, counts, per-class per-dimension scatter, global scatter.

    count: (C,) int64 rows per class.
    class_sum: (C, D) Σ_{i∈c} x_i.
    class_sq_dev: (C, D) Σ_{i∈c} (x_i − μ_c)² per dimension (within-class scatter diagonal).
    scatter: (D, D) Σ_i (x_i − μ)(x_i − μ)ᵀ about the global mean.
    Chunks and partial statistics merge with Chan et al.'s pairwise update, so the
    centred moments never come from a difference of large raw sums. With
    `with_scatter=False` the D×D scatter (the O(N·D²) part) is skipped and stays (0, 0).
    """

    def __init__(self, num_classes: int, dim: int, with_scatter: bool = True):
        super().__init__(num_classes=int(num_classes), dim=int(dim), with_scatter=bool(with_scatter))
        self.add_state("count", np.zeros(num_classes, dtype=np.int64))
        self.add_state("class_sum", np.zeros((num_classes, dim), dtype=np.float64))
        self.add_state("class_sq_dev", np.zeros((num_classes, dim), dtype=np.float64), merge=_chan_class_sq_dev)
        self.add_state("scatter", np.zeros((dim, dim) if with_scatter else (0, 0), dtype=np.float64),
                       merge=_chan_scatter)

    @property
    def with_scatter(self) -> bool:
        return self._config["with_scatter"]

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def mean(self) -> np.ndarray:
        """(D,) global mean."""
        return self.class_sum.sum(0) / max(self.n, 1)

    @property
    def gram(self) -> np.ndarray:
        """(D, D) FᵀF of the unit rows."""
        mu = self.mean
        return self.scatter + self.n * np.outer(mu, mu)

    def class_means(self, present: np.ndarray) -> np.ndarray:
        """(K, D) means of the classes listed in `present` (each must have rows)."""
        return self.class_sum[present] / self.count[present, None]

    def between_scatter(self, present: np.ndarray) -> np.ndarray:
        """(D, D) Σ_c n_c (μ_c − μ)(μ_c − μ)ᵀ."""
        dev = self.class_means(present) - self.mean
        return (dev * self.count[present, None]).T @ dev

    def within_scatter(self, present: np.ndarray) -> np.ndarray:
        """(D, D) Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ = total scatter − between scatter."""
        sw = self.scatter - self.between_scatter(present)
        return 0.5 * (sw + sw.T)

    def update(self, chunk: Chunk) -> None:
        """The chunk's own centred statistics, merged in by the pairwise update."""
        c = len(self.count)
        part = GramStats(c, self.class_sum.shape[1], with_scatter=self.with_scatter)  # this chunk alone
        x = self.rows_of(chunk)
        part.count = np.bincount(chunk.labels, minlength=c).astype(np.int64)
        part.class_sum = chunk.class_sums(x, c)
        means = np.divide(part.class_sum, part.count[:, None], out=np.zeros_like(part.class_sum),
                          where=part.count[:, None] > 0)
        part.class_sq_dev = chunk.class_sums(np.square(x - means[chunk.labels]), c)
        if self.with_scatter:
            centred = x - x.mean(0)
            part.scatter = centred.T @ centred
        self.merge_fields(part)

    def rows_of(self, chunk: Chunk) -> np.ndarray:
        """The rows this statistic describes: the chunk's unit rows (subclasses map them first)."""
        return chunk.x


class ZeroShotJointStats(Accumulator):
    """Target label × zero-shot source label statistics for LEEP and NCE.

    The source classifier is the dual encoder's zero-shot softmax over the task's class
    prompts: θ_i = softmax(logit_scale · x_i · tᵀ), t: (C, D) unit class texts.
    soft_joint: (C, C) Σ_{i: y_i = y} θ_i(z), rows y (target), columns z (source).
    hard_joint: (C, C) int64 count of rows with y_i = y and argmax_z θ_i(z) = z.
    """

    def __init__(self, text: np.ndarray, logit_scale: float):
        self.text = np.asarray(text, dtype=np.float64)
        self.logit_scale = float(logit_scale)
        c = self.text.shape[0]
        super().__init__(num_classes=c, logit_scale=self.logit_scale)
        self.add_state("soft_joint", np.zeros((c, c), dtype=np.float64))
        self.add_state("hard_joint", np.zeros((c, c), dtype=np.int64))

    def source_probabilities(self, x: np.ndarray) -> np.ndarray:
        """x: (n, D) unit rows -> θ (n, C) float64."""
        return softmax(self.logit_scale * (x @ self.text.T))

    def update(self, chunk: Chunk) -> None:
        c = self.text.shape[0]
        theta = self.source_probabilities(chunk.x)
        self.soft_joint += chunk.class_sums(theta, c)
        hard = np.argmax(theta, axis=1)
        self.hard_joint += np.bincount(chunk.labels * c + hard, minlength=c * c).reshape(c, c)


class LeepSum(Accumulator):
    """Pass 2 of LEEP: Σ_i log Σ_z P̂(y_i | z) θ_i(z), given the whole set's joint and conditional (C, C)."""

    def __init__(self, joint: ZeroShotJointStats, conditional: np.ndarray):
        super().__init__(**joint.config)
        self.joint, self.conditional = joint, conditional
        self.add_state("log_sum", np.float64(0.0))
        self.add_state("rows", np.int64(0))

    def update(self, chunk: Chunk) -> None:
        theta = self.joint.source_probabilities(chunk.x)
        expected = np.einsum("ij,ij->i", theta, self.conditional[chunk.labels])
        self.log_sum = self.log_sum + np.log(expected).sum()
        self.rows = self.rows + len(chunk.labels)

    def compute(self) -> float:
        """LEEP: the mean log expected empirical prediction over the rows seen."""
        return float(self.log_sum / self.rows)


class ClassScatterStats(Accumulator):
    """Per-class Gram matrices about a fixed centre, for a group of classes (TransRate).

    classes: (g,) class indices of this group; center: (D,) the global mean.
    scatter: (g, D, D) Σ_{i∈c} (x_i − center)(x_i − center)ᵀ. Merges by addition (same centre).
    """

    def __init__(self, classes: np.ndarray, center: np.ndarray):
        self.classes = np.asarray(classes, dtype=np.int64)
        self.center = np.asarray(center, dtype=np.float64)
        d = self.center.shape[0]
        super().__init__(classes=[int(c) for c in self.classes], dim=d)
        self.add_state("scatter", np.zeros((len(self.classes), d, d), dtype=np.float64))
        self._slot = {int(c): k for k, c in enumerate(self.classes)}

    def update(self, chunk: Chunk) -> None:
        present, starts, ends = chunk.segments
        for cls, lo, hi in zip(present, starts, ends):
            slot = self._slot.get(int(cls))
            if slot is None:
                continue
            centred = chunk.x[chunk.order[lo:hi]] - self.center
            self.scatter[slot] += centred.T @ centred


class SfdaMixedStats(GramStats):
    """SFDA's pass 2: `GramStats` of the ConfMix rows x' = p·x + (1 − p)·m̄_y, built from the first fit.

    p: the softened first-fit probability of the true class, m̄_y: the mean of the other classes' means
    (`coef` (K, D), `intercept` (K,), `other_means` (K, D) over the K classes in `present`).
    The caller's rows are never written (the reference overwrites them).
    """

    def __init__(self, num_classes: int, present: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 other_means: np.ndarray, shrinkage: float):
        super().__init__(num_classes, coef.shape[1], with_scatter=True)
        self.shrinkage = shrinkage  # of the first fit; the refit keeps it
        self.compact = np.full(num_classes, -1, dtype=np.int64)
        self.compact[present] = np.arange(len(present))
        self.coef, self.intercept, self.other_means = coef, intercept, other_means

    def mixed_rows(self, chunk: Chunk) -> np.ndarray:
        """(n, D) the chunk's ConfMix rows."""
        y = self.compact[chunk.labels]
        soft = softmax(softmax(chunk.x @ self.coef.T + self.intercept))
        p = soft[np.arange(len(y)), y][:, None]
        return p * chunk.x + (1.0 - p) * self.other_means[y]

    rows_of = mixed_rows


class SfdaProbabilitySum(Accumulator):
    """SFDA's pass 3: Σ_i of the refit's probability of the true class on the ConfMix rows."""

    def __init__(self, mixer: SfdaMixedStats, coef: np.ndarray, intercept: np.ndarray):
        super().__init__(num_classes=len(mixer.compact), dim=coef.shape[1])
        self.mixer, self.coef, self.intercept = mixer, coef, intercept
        self.add_state("true_prob_sum", np.float64(0.0))
        self.add_state("rows", np.int64(0))

    def update(self, chunk: Chunk) -> None:
        y = self.mixer.compact[chunk.labels]
        prob = softmax(self.mixer.mixed_rows(chunk) @ self.coef.T + self.intercept)
        self.true_prob_sum = self.true_prob_sum + prob[np.arange(len(y)), y].sum()
        self.rows = self.rows + len(y)

    def compute(self) -> float:
        """SFDA: the refit's mean probability of the true class."""
        return float(self.true_prob_sum / self.rows)


def gram_matrix(a: np.ndarray) -> np.ndarray:
    """a: (n, D) float64 -> aᵀa (D, D) float64."""
    return a.T @ a


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n, K) -> (n, K) row-wise softmax, a new array."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
