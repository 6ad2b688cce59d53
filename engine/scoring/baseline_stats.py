"""Mergeable statistics for the transferability baselines, streamed over row chunks.

Every accumulator has `update` (one chunk of unit rows), `merge` and `state_dict` /
`load_state_dict`, so partial statistics from chunks, files or machines combine
exactly. Everything is float64. Rows are L2-normalised here (x / ‖x‖ in float64)
before any statistic sees them; the caller's arrays are only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

import numpy as np
from scipy import sparse

from ..embedding.embedding_set import EmbeddingSet
from ...errors import InputError, bad_row_error


def normalise_rows(rows: np.ndarray, first_row: int = 0) -> np.ndarray:
    """rows: (n, D) float -> (n, D) float64 unit rows, a new array; `first_row` names rows in errors."""
    x = np.array(rows, dtype=np.float64, copy=True)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norm) | (norm == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise bad_row_error(first_row + i, x[i])
    x /= norm[:, None]
    return x


@dataclass
class Chunk:
    """One chunk of unit rows with its labels; the grouping by label is computed once and shared.

    x: (n, D) float64 unit rows; labels: (n,) int64 in [0, C); start: global index of row 0.
    """

    x: np.ndarray
    labels: np.ndarray
    start: int
    _onehot: dict = field(default_factory=dict, repr=False)  # (C, n) sparse one-hot by C, built once

    @cached_property
    def order(self) -> np.ndarray:
        """(n,) row order that sorts the chunk by label (stable)."""
        return np.argsort(self.labels, kind="stable")

    @cached_property
    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(classes present (k,), segment starts (k,), segment ends (k,)) into `order`."""
        sorted_labels = self.labels[self.order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(sorted_labels) \
            else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(sorted_labels)].astype(np.int64)
        return sorted_labels[starts], starts, ends

    def class_sums(self, values: np.ndarray, num_classes: int) -> np.ndarray:
        """values: (n, m) -> (C, m) float64 sums of the rows of each class."""
        if num_classes not in self._onehot:
            n = len(self.labels)
            self._onehot[num_classes] = sparse.csr_array((np.ones(n), (self.labels, np.arange(n))),
                                                         shape=(num_classes, n))
        return np.asarray(self._onehot[num_classes] @ np.asarray(values, dtype=np.float64))


def stream_rows(es: EmbeddingSet, chunk_rows: int, consumers: Iterable[Callable[[Chunk], None]],
                stage: str = "transfer", progress: Callable[[str, int, int], None] | None = None) -> None:
    """One read of every row: normalise each chunk once and hand it to every consumer."""
    consumers = list(consumers)
    if not consumers:
        return
    for start, rows, labels in es.iter_chunks(chunk_rows):
        chunk = Chunk(normalise_rows(rows, start), np.asarray(labels, dtype=np.int64), start)
        for consume in consumers:
            consume(chunk)
        if progress:
            progress(stage, start + len(rows), es.n)


class _State:
    _fields: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: np.array(getattr(self, name), copy=True) for name in self._fields}

    def load_state_dict(self, state: dict) -> "_State":
        for name in self._fields:
            current = np.asarray(getattr(self, name))
            value = np.asarray(state[name], dtype=current.dtype)
            if value.shape != current.shape:
                raise InputError(f"statistics '{name}' have shape {value.shape}, expected {current.shape}; "
                                 f"merge only statistics of the same task and model")
            setattr(self, name, value.copy())
        return self


class GramStats(_State):
    """Pass 1 of the baselines: class sums, counts, per-class per-dimension scatter, global scatter.

    count: (C,) int64 rows per class.
    class_sum: (C, D) Σ_{i∈c} x_i.
    class_sq_dev: (C, D) Σ_{i∈c} (x_i − μ_c)² per dimension (within-class scatter diagonal).
    scatter: (D, D) Σ_i (x_i − μ)(x_i − μ)ᵀ about the global mean.
    Chunks and partial statistics merge with Chan et al.'s pairwise update, so the
    centred moments never come from a difference of large raw sums. With
    `with_scatter=False` the D×D scatter (the O(N·D²) part) is skipped and stays (0, 0).
    """

    _fields = ("count", "class_sum", "class_sq_dev", "scatter")

    def __init__(self, num_classes: int, dim: int, with_scatter: bool = True):
        self.count = np.zeros(num_classes, dtype=np.int64)
        self.class_sum = np.zeros((num_classes, dim), dtype=np.float64)
        self.class_sq_dev = np.zeros((num_classes, dim), dtype=np.float64)
        self.scatter = np.zeros((dim, dim) if with_scatter else (0, 0), dtype=np.float64)

    @property
    def with_scatter(self) -> bool:
        return self.scatter.shape[0] == self.class_sum.shape[1]

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
        part = GramStats(len(self.count), self.class_sum.shape[1], with_scatter=False)  # scatter set below
        x = chunk.x
        part.count = np.bincount(chunk.labels, minlength=len(self.count)).astype(np.int64)
        part.class_sum = chunk.class_sums(x, len(self.count))
        means = np.divide(part.class_sum, part.count[:, None], out=np.zeros_like(part.class_sum),
                          where=part.count[:, None] > 0)
        part.class_sq_dev = chunk.class_sums(np.square(x - means[chunk.labels]), len(self.count))
        if self.with_scatter:
            part.scatter = gram_matrix(x - x.mean(0))
        self.merge(part)

    def merge(self, other: "GramStats") -> "GramStats":
        na, nb = self.n, other.n
        if nb == 0:
            return self
        if na == 0:
            self.load_state_dict(other.state_dict())
            return self
        if self.with_scatter:
            delta = other.mean - self.mean
            self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (na * nb / (na + nb))
        ca, cb = self.count[:, None].astype(np.float64), other.count[:, None].astype(np.float64)
        both = (ca > 0) & (cb > 0)
        mean_a = np.divide(self.class_sum, ca, out=np.zeros_like(self.class_sum), where=ca > 0)
        mean_b = np.divide(other.class_sum, cb, out=np.zeros_like(other.class_sum), where=cb > 0)
        cross = np.where(both, np.square(mean_b - mean_a) * (ca * cb / np.maximum(ca + cb, 1.0)), 0.0)
        self.class_sq_dev = self.class_sq_dev + other.class_sq_dev + cross
        self.class_sum = self.class_sum + other.class_sum
        self.count = self.count + other.count
        return self


class ZeroShotJointStats(_State):
    """Target label × zero-shot source label statistics for LEEP and NCE.

    The source classifier is the dual encoder's zero-shot softmax over the task's class
    prompts: θ_i = softmax(logit_scale · x_i · tᵀ), t: (C, D) unit class texts.
    soft_joint: (C, C) Σ_{i: y_i = y} θ_i(z), rows y (target), columns z (source).
    hard_joint: (C, C) int64 count of rows with y_i = y and argmax_z θ_i(z) = z.
    """

    _fields = ("soft_joint", "hard_joint")

    def __init__(self, text: np.ndarray, logit_scale: float):
        self.text = np.asarray(text, dtype=np.float64)
        self.logit_scale = float(logit_scale)
        c = self.text.shape[0]
        self.soft_joint = np.zeros((c, c), dtype=np.float64)
        self.hard_joint = np.zeros((c, c), dtype=np.int64)

    def source_probabilities(self, x: np.ndarray) -> np.ndarray:
        """x: (n, D) unit rows -> θ (n, C) float64."""
        return softmax(self.logit_scale * (x @ self.text.T))

    def update(self, chunk: Chunk) -> None:
        c = self.text.shape[0]
        theta = self.source_probabilities(chunk.x)
        self.soft_joint += chunk.class_sums(theta, c)
        hard = np.argmax(theta, axis=1)
        self.hard_joint += np.bincount(chunk.labels * c + hard, minlength=c * c).reshape(c, c)

    def merge(self, other: "ZeroShotJointStats") -> "ZeroShotJointStats":
        self.soft_joint = self.soft_joint + other.soft_joint
        self.hard_joint = self.hard_joint + other.hard_joint
        return self


class LeepSum(_State):
    """Pass 2 of LEEP: Σ_i log Σ_z P̂(y_i | z) θ_i(z), given the empirical conditional (C, C)."""

    _fields = ("log_sum", "rows")

    def __init__(self, joint: ZeroShotJointStats, conditional: np.ndarray):
        self.joint, self.conditional = joint, conditional
        self.log_sum, self.rows = np.float64(0.0), np.int64(0)

    def update(self, chunk: Chunk) -> None:
        theta = self.joint.source_probabilities(chunk.x)
        expected = np.einsum("ij,ij->i", theta, self.conditional[chunk.labels])
        self.log_sum = self.log_sum + np.log(expected).sum()
        self.rows = self.rows + len(chunk.labels)

    def merge(self, other: "LeepSum") -> "LeepSum":
        self.log_sum, self.rows = self.log_sum + other.log_sum, self.rows + other.rows
        return self


class ClassScatterStats(_State):
    """Per-class Gram matrices about a fixed centre, for a group of classes (TransRate).

    classes: (g,) class indices of this group; center: (D,) the global mean.
    scatter: (g, D, D) Σ_{i∈c} (x_i − center)(x_i − center)ᵀ. Merges by addition (same centre).
    """

    _fields = ("scatter",)

    def __init__(self, classes: np.ndarray, center: np.ndarray):
        self.classes = np.asarray(classes, dtype=np.int64)
        self.center = np.asarray(center, dtype=np.float64)
        d = self.center.shape[0]
        self.scatter = np.zeros((len(self.classes), d, d), dtype=np.float64)
        self._slot = {int(c): k for k, c in enumerate(self.classes)}

    def update(self, chunk: Chunk) -> None:
        present, starts, ends = chunk.segments
        for cls, lo, hi in zip(present, starts, ends):
            slot = self._slot.get(int(cls))
            if slot is None:
                continue
            self.scatter[slot] += gram_matrix(chunk.x[chunk.order[lo:hi]] - self.center)

    def merge(self, other: "ClassScatterStats") -> "ClassScatterStats":
        self.scatter = self.scatter + other.scatter
        return self


def gram_matrix(a: np.ndarray) -> np.ndarray:
    """a: (n, D) float64 -> aᵀa (D, D) float64."""
    return a.T @ a


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n, K) -> (n, K) row-wise softmax, a new array."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
