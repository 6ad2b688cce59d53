"""Mergeable statistics: pass 1 (class sums) and pass 2 (rows against a small matrix).

Every accumulator has `update` (one chunk, one kernel op), `merge` (addition) and
`state_dict` / `load_state_dict`, so partial statistics from chunks, files, GPUs or
machines combine by addition. All sums are float64.
"""

from __future__ import annotations

import torch

from ...kernels import Backend
from ...errors import InputError, bad_row_error


def _check_rows(first_bad: int, start: int, rows) -> None:
    if first_bad >= 0:
        raise bad_row_error(start + first_bad, rows[first_bad])


class _Mergeable:
    _fields: tuple[str, ...] = ()

    def merge(self, other: "_Mergeable") -> "_Mergeable":
        for name in self._fields:
            setattr(self, name, getattr(self, name) + getattr(other, name).to(getattr(self, name).device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().clone() for name in self._fields}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "_Mergeable":
        for name in self._fields:
            current = getattr(self, name)
            value = torch.as_tensor(state[name])
            if value.shape != current.shape:
                raise InputError(f"statistics '{name}' have shape {tuple(value.shape)}, expected "
                                 f"{tuple(current.shape)}; merge only statistics of the same task and model")
            setattr(self, name, value.to(current.device, current.dtype))
        return self


class ClassStats(_Mergeable):
    """Pass 1: per-class sums of normalised rows.

    sums: (C, D) float64 S_c; counts: (C,) int64 n_c; sq_norm_sum: () float64 Σ‖x̂_i‖².
    """

    _fields = ("sums", "counts", "sq_norm_sum")

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.sq_norm_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, backend: Backend, start: int, rows, labels) -> None:
        """rows: (n, D) float as stored; labels: (n,) int64; start: global index of the first row."""
        out = backend.class_sums(backend.tensor(rows), backend.tensor(labels), self.sums.shape[0])
        _check_rows(out.first_bad, start, rows)
        self.sums += out.sums
        self.counts += out.counts
        self.sq_norm_sum += out.sq_norm_sum

    @property
    def n(self) -> int:
        return int(self.counts.sum())


class ZeroShotStats(_Mergeable):
    """Pass 2 against the class texts: per-class top-1 / top-5 hits (C,) int64."""

    _fields = ("top1", "top5")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.top1 = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.top5 = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def update(self, backend: Backend, start: int, rows, labels, text: torch.Tensor) -> None:
        """text: (C, D) unit class texts on the backend device."""
        labels = backend.tensor(labels)
        out = backend.cross_reduce(backend.tensor(rows), labels, text)
        _check_rows(out.first_bad, start, rows)
        self.top1.index_add_(0, labels, (out.rank < 1).long())
        self.top5.index_add_(0, labels, (out.rank < 5).long())


class SilhouetteClassStats(_Mergeable):
    """Pass 2 against the class sums: Σ_i s_i of the cosine silhouette of the label clustering.

    With unit rows, Σ_{j∈c, j≠i} (1 − x̂_i·x̂_j) = (n_c − 1) − (x̂_i·S_c − ‖x̂_i‖²), so each row
    needs only x̂_i·S_{y_i} and max_{c≠y_i} x̂_i·S_c / n_c.
    """

    _fields = ("s_sum",)

    def __init__(self, device: torch.device | str = "cpu"):
        self.s_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, backend: Backend, start: int, rows, labels, class_stats: ClassStats) -> None:
        labels = backend.tensor(labels)
        counts = class_stats.counts.to(backend.device)
        nonempty = counts > 0
        scale = 1.0 / counts.clamp_min(1).double()
        out = backend.cross_reduce(backend.tensor(rows), labels, class_stats.sums.to(backend.device),
                                   col_scale=scale, col_valid=nonempty)
        _check_rows(out.first_bad, start, rows)
        n_own = counts[labels].double()
        a = ((n_own - 1.0) - (out.correct - out.sq_norm)) / (n_own - 1.0).clamp_min(1.0)
        b = 1.0 - out.best_other
        self.s_sum += silhouette_values(a, b, n_own).sum()


class SilhouetteModalityStats(_Mergeable):
    """Pass 2 against [S; T]: Σ over images of the cosine silhouette of the images-vs-texts clustering."""

    _fields = ("s_sum",)

    def __init__(self, device: torch.device | str = "cpu"):
        self.s_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, backend: Backend, start: int, rows, labels, total: torch.Tensor, text_sum: torch.Tensor,
               n: int, c: int) -> None:
        """total: (D,) S = Σ_i x̂_i over all rows; text_sum: (D,) T = Σ_c t_c."""
        rows_t = backend.tensor(rows)
        zeros = torch.zeros(rows_t.shape[0], dtype=torch.int64, device=backend.device)
        # label 0 for every row: `correct` is x̂·S and `other_sum` is x̂·T.
        out = backend.cross_reduce(rows_t, zeros, torch.stack([total, text_sum]).to(backend.device))
        _check_rows(out.first_bad, start, rows)
        a = ((n - 1.0) - (out.correct - out.sq_norm)) / (n - 1.0)
        b = 1.0 - out.other_sum / c
        self.s_sum += silhouette_values(a, b, torch.full_like(a, float(n))).sum()


def silhouette_values(a: torch.Tensor, b: torch.Tensor, own_size: torch.Tensor) -> torch.Tensor:
    """scikit-learn's convention: (b − a) / max(a, b), 0 where max is 0 or the point is alone in its cluster."""
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(a))
    return torch.where(own_size > 1, s, torch.zeros_like(s))
