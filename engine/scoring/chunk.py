"""One chunk of rows as read once by the pass driver and handed to every accumulator of the pass."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from scipy import sparse

from ...errors import bad_row_error
from ...kernels import Backend
from ...kernels.reference import as_tensor, normalise_rows


def unit_rows(rows, first_row: int = 0) -> np.ndarray:
    """rows: (n, D) float as stored -> (n, D) float64 unit rows, a new array; `first_row` names rows in errors.

    The reference normaliser (`kernels.reference.normalise_rows`) in float64; the caller's rows are only read.
    """
    x, _, first_bad = normalise_rows(as_tensor(rows), torch.float64)
    if first_bad >= 0:
        raise bad_row_error(first_row + first_bad, np.asarray(rows[first_bad]))
    return x.numpy()


class Chunk:
    """Rows [start, start + n) with their labels, and what the accumulators derive from them, each once.

    x: (n, D) float64 unit rows (given, or normalised from `rows` on first use);
    rows: (n, D) float as stored (what the backend kernels read); labels: (n,) int64 in [0, C);
    device_rows / device_labels: the rows and labels on the backend's device, copied there once.
    """

    def __init__(self, x: np.ndarray | None, labels, start: int = 0, *, rows=None, backend: Backend | None = None):
        if x is None and rows is None:
            raise ValueError("a chunk needs its unit rows x or its stored rows")
        if x is not None:
            self.__dict__["x"] = x
        self.rows = rows if rows is not None else x
        self._labels = labels
        self.start = int(start)
        self.backend = backend
        self._onehot: dict[int, sparse.csr_array] = {}

    def __len__(self) -> int:
        return len(self._labels)

    @cached_property
    def labels(self) -> np.ndarray:
        labels = self._labels
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        return np.asarray(labels, dtype=np.int64)

    @cached_property
    def x(self) -> np.ndarray:
        return unit_rows(self.rows, self.start)

    @cached_property
    def device_rows(self) -> torch.Tensor:
        return self.backend.tensor(self.rows)

    @cached_property
    def device_labels(self) -> torch.Tensor:
        return self.backend.tensor(self._labels)

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

    def with_rows(self, x: np.ndarray) -> "Chunk":
        """The same labels (and their grouping) with other unit rows x (n, D)."""
        other = Chunk(x, self.labels, self.start, backend=self.backend)
        other._onehot = self._onehot
        return other
