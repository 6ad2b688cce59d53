"""Embedding sets: image rows (in memory or memory-mapped, possibly in shards), labels, class texts.

Image rows are never loaded whole: `EmbeddingSet.iter_chunks` yields row chunks that
the statistics consume one at a time, so memory stays O(chunk + C·D) for any N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ...errors import InputError

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class EmbeddingSet:
    """Zero-shot embeddings of one task.

    `EmbeddingSet(image, label, text)` takes arrays as scikit-learn users pass them: one (N, D)
    array (or tensor) of image rows, labels and texts as any array-like (`from_arrays` is the same).

    Attributes:
        image_blocks: row blocks that stack to the image matrix `(N, D)`; each block is a
            NumPy array (possibly a `np.memmap`) of float16/float32/float64.
        label: `(N,)` int64 class index of every row, in `0..C-1`.
        text: `(C, D)` float64 class text embeddings, L2-normalised.
        classnames: C names, or None.
        source: where the set came from (a path or a description).
    """

    image_blocks: list
    label: np.ndarray
    text: np.ndarray
    classnames: list[str] | None = None
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if hasattr(self.image_blocks, "ndim") or hasattr(self.image_blocks, "detach"):  # one array, not a list
            self.image_blocks = [_to_numpy(self.image_blocks)]
        self.image_blocks = [b if isinstance(b, np.ndarray) else _to_numpy(b) for b in self.image_blocks]
        if not isinstance(self.label, np.ndarray) or self.label.dtype != np.int64:
            self.label = labels_int64(_to_numpy(self.label), self.source)
        self.text = _to_numpy(self.text)
        self.image_blocks = [b for b in self.image_blocks if len(b) > 0] or list(self.image_blocks[:1])
        _validate(self)
        self.text = _normalise_text(np.asarray(self.text, dtype=np.float64))

    @classmethod
    def from_arrays(cls, image, label, text, classnames=None, source="<memory>") -> "EmbeddingSet":
        """image: (N, D) float; label: (N,) int; text: (C, D) float (torch tensors accepted)."""
        return cls([_to_numpy(image)], labels_int64(_to_numpy(label)), _to_numpy(text),
                   list(classnames) if classnames is not None else None, source)

    @property
    def n(self) -> int:
        return int(sum(len(b) for b in self.image_blocks))

    @property
    def d(self) -> int:
        return int(self.text.shape[1])

    @property
    def c(self) -> int:
        return int(self.text.shape[0])

    @property
    def image_dtype(self) -> np.dtype:
        return self.image_blocks[0].dtype

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield `(start, rows (n, D), labels (n,) int64)` covering all rows in order.

        Chunks never cross a block boundary, so rows are zero-copy views of the
        (memory-mapped) blocks.
        """
        if chunk_rows < 1:
            raise InputError(f"chunk size must be at least 1 row, got {chunk_rows}; pass a positive --chunk-rows")
        start = 0
        for block in self.image_blocks:
            for lo in range(0, len(block), chunk_rows):
                rows = block[lo:lo + chunk_rows]
                yield start + lo, rows, self.label[start + lo:start + lo + len(rows)]
            start += len(block)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Gather rows by global index: indices (k,) sorted int64 -> (k, D) array."""
        out = np.empty((len(indices), self.d), dtype=self.image_dtype)
        start = 0
        for block in self.image_blocks:
            lo, hi = np.searchsorted(indices, [start, start + len(block)])
            if hi > lo:
                out[lo:hi] = block[indices[lo:hi] - start]
            start += len(block)
        return out

    def subset(self, indices: np.ndarray) -> "EmbeddingSet":
        """A new in-memory set of the rows at the given (sorted, unique) global indices."""
        indices = np.asarray(indices, dtype=np.int64)
        return EmbeddingSet([self.rows(indices)], self.label[indices], self.text, self.classnames,
                            f"{self.source}[sample of {len(indices)}]", dict(self.meta))

    def sample(self, size: int, seed: int = 0) -> "EmbeddingSet":
        """A seeded uniform random sample of `size` rows without replacement (sorted order)."""
        if size >= self.n:
            return self
        rng = np.random.default_rng(seed)
        return self.subset(np.sort(rng.choice(self.n, size=size, replace=False)))


def names_by_index(listed: list | dict | None) -> list[str] | None:
    """Class names of integer labels from a classnames JSON: a list in class order, or a mapping that names
    every index 0..C-1 (a partial mapping cannot say how many classes there are)."""
    if isinstance(listed, dict):
        if sorted(map(str, listed)) != sorted(str(i) for i in range(len(listed))):
            raise InputError(f"class names {sorted(listed)} for integer labels: a mapping must name every "
                             f"class index 0..C-1 (or give a JSON list in class order)")
        return [str(listed[k]) for k in sorted(listed, key=int)]
    return [str(n) for n in listed] if listed is not None else None


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def labels_int64(label: np.ndarray, where: object = "labels") -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 1:
        raise InputError(f"{where}: labels must be one integer per row (shape (N,)), got shape {label.shape}")
    if label.dtype.kind == "f":
        if label.size and not np.all(np.isfinite(label) & (label == np.round(label))):
            bad = int(np.flatnonzero(~(np.isfinite(label) & (label == np.round(label))))[0])
            raise InputError(f"{where}: label of row {bad} is {label[bad].item()!r}, not an integer; labels must be "
                             f"class indices 0..C-1")
    elif label.dtype.kind not in "iub":
        raise InputError(f"{where}: labels have dtype {label.dtype}; they must be integer class indices 0..C-1")
    return label.astype(np.int64)


def _validate(es: EmbeddingSet) -> None:
    src = es.source
    blocks: Sequence[np.ndarray] = es.image_blocks
    for b in blocks:
        if b.ndim != 2:
            raise InputError(f"{src}: image embeddings must be a 2-D array (N×D), got shape {b.shape}")
        if b.dtype.type not in FLOAT_DTYPES:
            raise InputError(f"{src}: image embeddings have dtype {b.dtype}; use float16, float32 or float64")
    text = np.asarray(es.text)
    if text.ndim != 2:
        raise InputError(f"{src}: text embeddings must be a 2-D array (C×D), got shape {text.shape}")
    d_img = {b.shape[1] for b in blocks}
    if len(d_img) > 1:
        raise InputError(f"{src}: image shards have different widths {sorted(d_img)}")
    if d_img and d_img.pop() != text.shape[1]:
        raise InputError(f"{src}: image embeddings have D={blocks[0].shape[1]} but text embeddings have "
                         f"D={text.shape[1]}; both must come from the same model")
    n = sum(len(b) for b in blocks)
    if len(es.label) != n:
        raise InputError(f"{src}: {n} image rows but {len(es.label)} labels; give one label per row")
    if n < 2:
        raise InputError(f"{src}: {n} image row(s); the scores need at least 2 rows")
    c = text.shape[0]
    if c < 1:
        raise InputError(f"{src}: no class text embeddings; text must have one row per class")
    if es.label.size:
        lo, hi = int(es.label.min()), int(es.label.max())
        if lo < 0:
            row = int(np.argmax(es.label < 0))
            raise InputError(f"{src}: label of row {row} is {lo}; labels must be class indices 0..{c - 1}")
        if hi >= c:
            row = int(np.argmax(es.label >= c))
            raise InputError(f"{src}: label of row {row} is {hi} but there are only {c} class texts; labels must "
                             f"be 0..{c - 1} (one text row per class)")
    if es.classnames is not None and len(es.classnames) != c:
        raise InputError(f"{src}: {len(es.classnames)} class names for {c} class texts; give one name per class")
    if not np.all(np.isfinite(text)):
        row = int(np.flatnonzero(~np.all(np.isfinite(text), axis=1))[0])
        raise InputError(f"{src}: text embedding of class {row} has NaN or Inf values; recompute the text embeddings")


def _normalise_text(text: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(text, axis=1)
    if np.any(norms == 0):
        row = int(np.flatnonzero(norms == 0)[0])
        raise InputError(f"text embedding of class {row} is all zeros; every class needs a non-zero text embedding")
    return text / norms[:, None]
