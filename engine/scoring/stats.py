"""The embedding scores' statistics: pass 1 (class sums) and pass 2 (rows against a small matrix).

Each is an `Accumulator` (engine.scoring.accumulator): `update(chunk)` runs one kernel op of the
chunk's backend, fields merge by addition, `state_dict` carries the configuration. A pass-2
statistic is built against the merged pass-1 `ClassStats` of the whole set (its context), so
shards of one set give the whole set's result when merged. All sums are float64.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import bad_row_error
from .accumulator import Accumulator
from .chunk import Chunk


def _check_rows(first_bad: int, chunk: Chunk) -> None:
    if first_bad >= 0:
        raise bad_row_error(chunk.start + first_bad, chunk.rows[first_bad])


def _add_into(total: torch.Tensor, part: torch.Tensor) -> None:
    """total += part; on the CPU in NumPy (one thread: a busy core cannot stall it at a thread barrier)."""
    part = part.to(total.device)
    if total.device.type == "cpu":
        t = total.numpy()
        np.add(t, part.numpy(), out=t)
    else:
        total += part


class ClassStats(Accumulator):
    """Pass 1: per-class sums of normalised rows.

    sums: (C, D) float64 S_c; counts: (C,) int64 n_c; sq_norm_sum: () float64 Σ‖x̂_i‖².
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu"):
        super().__init__(num_classes=int(num_classes), dim=int(dim))
        self.add_state("sums", torch.zeros(num_classes, dim, dtype=torch.float64, device=device))
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self.add_state("sq_norm_sum", torch.zeros((), dtype=torch.float64, device=device))

    def update(self, chunk: Chunk) -> None:
        be = chunk.backend
        out = be.class_sums(chunk.device_rows, chunk.device_labels, self.sums.shape[0])
        _check_rows(out.first_bad, chunk)
        _add_into(self.sums, out.sums)
        _add_into(self.counts, out.counts)
        self.sq_norm_sum += out.sq_norm_sum.to(self.sq_norm_sum.device)

    @property
    def n(self) -> int:
        return int(self.counts.sum())


class ZeroShotStats(Accumulator):
    """Pass 2 against the class texts t (C, D): per-class top-1 / top-5 hits (C,) int64."""

    def __init__(self, text: torch.Tensor, device: torch.device | str = "cpu"):
        super().__init__(num_classes=int(text.shape[0]))
        self.text = torch.as_tensor(text).to(device)
        self.add_state("top1", torch.zeros(text.shape[0], dtype=torch.int64, device=device))
        self.add_state("top5", torch.zeros(text.shape[0], dtype=torch.int64, device=device))

    def update(self, chunk: Chunk) -> None:
        labels = chunk.device_labels
        out = chunk.backend.cross_reduce(chunk.device_rows, labels, self.text)
        _check_rows(out.first_bad, chunk)
        self.top1.index_add_(0, labels, (out.rank < 1).long())
        self.top5.index_add_(0, labels, (out.rank < 5).long())

    def compute(self, counts: torch.Tensor) -> dict[str, float]:
        """Top-1, top-5 and balanced accuracy given the class sizes counts (C,) of the rows seen."""
        top1, top5, counts = self.top1.cpu().double(), self.top5.cpu().double(), torch.as_tensor(counts).cpu()
        n, present = int(counts.sum()), counts > 0
        return {"top1": float(top1.sum()) / n, "top5": float(top5.sum()) / n,
                "balanced": float((top1[present] / counts[present].double()).mean())}


class SilhouetteClassStats(Accumulator):
    """Pass 2 against the class sums: Σ_i s_i of the cosine silhouette of the label clustering.

    With unit rows, Σ_{j∈c, j≠i} (1 − x̂_i·x̂_j) = (n_c − 1) − (x̂_i·S_c − ‖x̂_i‖²), so each row
    needs only x̂_i·S_{y_i} and max_{c≠y_i} x̂_i·S_c / n_c. class_stats: pass 1 of the whole set.
    """

    def __init__(self, class_stats: ClassStats, device: torch.device | str = "cpu"):
        super().__init__(num_classes=class_stats.config["num_classes"], dim=class_stats.config["dim"])
        self.counts = class_stats.counts.to(device)
        self.sums = class_stats.sums.to(device)
        self.add_state("s_sum", torch.zeros((), dtype=torch.float64, device=device))

    def update(self, chunk: Chunk) -> None:
        labels = chunk.device_labels
        counts = self.counts.to(labels.device)
        scale = 1.0 / counts.clamp_min(1).double()
        out = chunk.backend.cross_reduce(chunk.device_rows, labels, self.sums.to(labels.device),
                                         col_scale=scale, col_valid=counts > 0)
        _check_rows(out.first_bad, chunk)
        n_own = counts[labels].double()
        a = ((n_own - 1.0) - (out.correct - out.sq_norm)) / (n_own - 1.0).clamp_min(1.0)
        b = 1.0 - out.best_other
        self.s_sum += silhouette_values(a, b, n_own).sum().to(self.s_sum.device)

    def compute(self) -> float:
        """The mean cosine silhouette over the whole set's rows (once every row has been seen)."""
        return float(self.s_sum) / int(self.counts.sum())


class SilhouetteModalityStats(Accumulator):
    """Pass 2 against [S; T]: Σ over images of the cosine silhouette of the images-vs-texts clustering.

    S = Σ_i x̂_i over all rows (from the whole set's `class_stats`), T = Σ_c t_c (text: (C, D)).
    """

    def __init__(self, class_stats: ClassStats, text: torch.Tensor, device: torch.device | str = "cpu"):
        super().__init__(num_classes=int(text.shape[0]), dim=int(text.shape[1]))
        self.n_total, self.c = class_stats.n, int(text.shape[0])
        self.matrix = torch.stack([class_stats.sums.sum(0).to(device), torch.as_tensor(text).to(device).sum(0)])
        self.add_state("s_sum", torch.zeros((), dtype=torch.float64, device=device))

    def update(self, chunk: Chunk) -> None:
        rows = chunk.device_rows
        zeros = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
        # label 0 for every row: `correct` is x̂·S and `other_sum` is x̂·T.
        out = chunk.backend.cross_reduce(rows, zeros, self.matrix.to(rows.device))
        _check_rows(out.first_bad, chunk)
        n = self.n_total
        a = ((n - 1.0) - (out.correct - out.sq_norm)) / (n - 1.0)
        b = 1.0 - out.other_sum / self.c
        self.s_sum += silhouette_values(a, b, torch.full_like(a, float(n))).sum().to(self.s_sum.device)


def silhouette_values(a: torch.Tensor, b: torch.Tensor, own_size: torch.Tensor) -> torch.Tensor:
    """scikit-learn's convention: (b − a) / max(a, b), 0 where max is 0 or the point is alone in its cluster."""
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(a))
    return torch.where(own_size > 1, s, torch.zeros_like(s))
