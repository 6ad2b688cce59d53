"""The pass driver: read the rows once per pass and feed every statistic that pass needs.

`ScorePlan` lays the statistics of the requested keys out in passes (a statistic measured
against merged statistics of pass k runs in pass k + 1), the embedding scores' and the
baselines' together, so `keys="everything"` reads the rows once per pass. The per-unit API,
which a local loop and a distributed executor use alike:

    plan = ScorePlan(es, keys, options, device)        # on the driver; small, picklable
    for k in range(plan.num_passes):
        parts = [run_pass(plan, k, es, backend, rows=(lo, hi)).state_dicts()  # one per unit, anywhere
                 for lo, hi in units]
        plan.add_pass(k, parts)                         # merge (any order, any tree), keep for pass k + 1
    values = plan.finalise(es, backend)                 # {key: float}; the row-sample scores read `es` here

A unit is a row range `rows=(lo, hi)` of the set (or an `EmbeddingSet` of its own rows: a shard);
`run_pass` returns the unit's accumulators (`PassResult`), `.state_dicts()` what travels. Merging is
exact up to float64 rounding whatever the split, so partial states can also be saved and resumed.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ...errors import InputError
from ...kernels import Backend
from ..embedding.embedding_set import EmbeddingSet
from .accumulator import Accumulator
from .chunk import Chunk, unit_rows
from .options import ScoreOptions
from .registry import REGISTRY, STATISTICS


class PassResult(dict):
    """{statistic name: Accumulator} of one unit and one pass."""

    def state_dicts(self) -> dict[str, dict]:
        return {name: acc.state_dict() for name, acc in self.items()}


class ScorePlan:
    """The statistics of `keys` laid out in passes, their merged values so far, and the finalisation.

    es: the embedding set (only its shape, labels and class texts are read here; rows are read by
    `run_pass` and, for the row-sample scores, by `finalise`). keys: resolved output keys.
    device: where the embedding scores' statistics live (the backend's device).
    """

    def __init__(self, es: EmbeddingSet, keys: Iterable[str], options: ScoreOptions | None = None,
                 device: torch.device | str = "cpu", chunk_rows: int | None = None):
        self._init(np.bincount(es.label, minlength=es.c), es.text, keys, options, device, chunk_rows)

    @classmethod
    def from_shape(cls, counts, text, keys: Iterable[str], options: ScoreOptions | None = None,
                   device: torch.device | str = "cpu", chunk_rows: int | None = None) -> "ScorePlan":
        """A plan from the class sizes counts (C,) and class texts text (C, D) alone (N = Σ counts)."""
        plan = cls.__new__(cls)
        plan._init(counts, text, keys, options, device, chunk_rows)
        return plan

    def _init(self, counts, text, keys, options, device, chunk_rows) -> None:
        self.keys = list(keys)
        self.options = options or ScoreOptions()
        self.device = torch.device(device)
        self.text = np.asarray(text, dtype=np.float64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.n, self.c, self.d = int(self.counts.sum()), self.text.shape[0], self.text.shape[1]
        self.present = np.flatnonzero(self.counts)
        self.chunk_rows = chunk_rows
        self.notes: list[str] = []
        self.sample_rows: dict[str, int] = {}
        self._stats: dict[str, Accumulator | list[Accumulator]] = {}
        self._memo: dict = {}
        self._es: EmbeddingSet | None = None
        self._backend: Backend | None = None
        self.aliases, self.layout = self._lay_out()

    # ---- layout ------------------------------------------------------------------------------------

    def _lay_out(self) -> tuple[dict[str, str], list[list[tuple[str, int]]]]:
        wanted: list[str] = []

        def need(name: str) -> None:
            if name in wanted:
                return
            if name not in STATISTICS:
                raise ValueError(f"unknown statistic {name!r}; known: {', '.join(STATISTICS)}")
            for dep in STATISTICS[name].after:
                need(dep)
            wanted.append(name)

        for key in self.keys:
            for name in REGISTRY[key].passes_for(self):
                need(name)
        aliases = {n: STATISTICS[n].provided_by for n in wanted if STATISTICS[n].provided_by in wanted}
        first: dict[str, int] = {}
        end: dict[str, int] = {}
        layout: list[list[tuple[str, int]]] = []
        for name in wanted:
            if name in aliases:
                continue
            spec = STATISTICS[name]
            first[name] = max((end[aliases.get(d, d)] for d in spec.after), default=0)
            end[name] = first[name] + spec.pass_count(self)
            for index in range(end[name] - first[name]):
                while len(layout) <= first[name] + index:
                    layout.append([])
                layout[first[name] + index].append((name, index))
        return aliases, layout

    def stage(self, k: int) -> str:
        """The progress name of pass k: "pass k+1" ("baselines pass k+1" when only baselines are planned)."""
        baselines_only = self.keys and all(REGISTRY[key].family == "baseline" for key in self.keys)
        return f"{'baselines ' if baselines_only else ''}pass {k + 1}"

    @property
    def num_passes(self) -> int:
        return len(self.layout)

    def describe(self) -> list[list[str]]:
        """The statistics read in each pass, e.g. [["class", "gram_scatter"], ["silhouette_class", "leep"]]."""
        return [[f"{name}[{i}]" if STATISTICS[name].multi_pass else name for name, i in p]
                for p in self.layout]

    # ---- statistics ----------------------------------------------------------------------------------

    def stat(self, name: str):
        """The merged statistic `name` of the whole set (a list of them for a multi-pass statistic)."""
        name = self.aliases.get(name, name)
        if name not in self._stats:
            raise KeyError(f"statistic {name!r} is not merged yet (planned: {self.describe()})")
        return self._stats[name]

    def text_tensor(self) -> torch.Tensor:
        """(C, D) float64 class texts on the plan's device."""
        return self.memo(("text", str(self.device)),
                         lambda: torch.as_tensor(self.text, dtype=torch.float64, device=self.device))

    def new_accumulators(self, k: int) -> PassResult:
        """Empty accumulators of pass k, built against the merged statistics of passes < k."""
        if not 0 <= k < self.num_passes:
            raise InputError(f"pass {k} does not exist; this plan has passes 0..{self.num_passes - 1}")
        return PassResult({name: STATISTICS[name].build(self, index) for name, index in self.layout[k]})

    def add_pass(self, k: int, parts: Iterable[dict]) -> None:
        """Merge the units' results of pass k (`PassResult`s or their `state_dicts()`) and keep them."""
        parts = list(parts)
        if len(parts) == 1 and all(isinstance(a, Accumulator) for a in parts[0].values()):
            merged = parts[0]
        else:
            merged = self.new_accumulators(k)
            for part in parts:
                for name, acc in part.items():
                    if not isinstance(acc, Accumulator):
                        acc = self.new_accumulators_of(k, name).load_state_dict(acc)
                    merged[name].merge(acc)
        missing = [name for name, _ in self.layout[k] if name not in merged]
        if missing:
            raise InputError(f"pass {k} results lack {', '.join(missing)}; run every statistic of the pass")
        for name, index in self.layout[k]:
            if STATISTICS[name].multi_pass:
                self._stats.setdefault(name, []).append(merged[name])
            else:
                self._stats[name] = merged[name]

    def new_accumulators_of(self, k: int, name: str) -> Accumulator:
        index = dict(self.layout[k])[name]
        return STATISTICS[name].build(self, index)

    # ---- finalisation ---------------------------------------------------------------------------------

    def memo(self, name, compute: Callable | None):
        """compute() once per plan, then its value (a quantity several finalisers share)."""
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def finalise(self, es: EmbeddingSet | None = None, backend: Backend | None = None) -> dict[str, float]:
        """{key: value} of every planned key, in plan order. es / backend: for the row-sample scores
        (all-pairs silhouettes, NCTI, LogME with N < D), which read a seeded sample of rows here."""
        if len(self._stats) < len({name for p in self.layout for name, _ in p}):
            raise InputError(f"finalise needs every pass merged first ({self.num_passes} passes)")
        self._es, self._backend = es, backend
        if self.keys and any(REGISTRY[k].family == "baseline" for k in self.keys) and len(self.present) < self.c:
            self.note(f"baselines: {self.c - len(self.present)} class(es) without rows are left out "
                      f"(K = {len(self.present)})")
        return {key: float(REGISTRY[key].finalise(self)) for key in self.keys}

    def _rows_source(self) -> EmbeddingSet:
        if self._es is None:
            raise InputError(f"{', '.join(self.keys)}: some of these scores read a row sample; pass the "
                             f"embedding set to finalise()")
        return self._es

    def baseline_rows(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The in-memory baselines' seeded sample: (x (m, D) float64 unit rows, compact labels (m,), K)."""
        def load():
            es, o = self._rows_source(), self.options
            sub = es.sample(o.baseline_sample, o.seed)
            names = [k for k in self.keys if REGISTRY[k].family == "baseline" and not REGISTRY[k].passes_for(self)]
            if sub.n < es.n:
                self.note(f"{', '.join(names)}: in memory on a seeded sample of {sub.n} of {es.n} rows "
                          f"(seed {o.seed}); raise --baseline-sample to use more")
            x = unit_rows(np.concatenate(sub.image_blocks) if len(sub.image_blocks) > 1 else sub.image_blocks[0])
            present, labels = np.unique(sub.label, return_inverse=True)
            if len(present) < 2:
                raise InputError(f"the sample of {sub.n} rows has {len(present)} class; {', '.join(names)} need at "
                                 f"least 2: raise --baseline-sample")
            return x, labels, len(present)
        return self.memo("baseline_rows", load)

    def all_pairs(self) -> dict[str, float]:
        """Every planned all-pairs score, from one sweep over one seeded row sample (`pairwise.all_pairs_scores`)."""
        from .pairwise import all_pairs_scores

        def compute():
            if self._backend is None:
                raise InputError("the all-pairs scores need a backend; pass it to finalise()")
            o = self.options
            keys = [k for k in self.keys if REGISTRY[k].all_pairs]
            es = self._rows_source()
            values, rows, notes = all_pairs_scores(es, self._backend, keys, gensil_p=o.gensil_p, sample=o.sample,
                                                   seed=o.seed, quadratic_limit=o.quadratic_limit,
                                                   on_estimate=self.on_estimate, progress=self.progress,
                                                   sums=self.all_pairs_sums)
            for note in notes:
                self.note(note)
            if rows < es.n:
                self.sample_rows.update({key: rows for key in keys})
            return values
        return self.memo("all_pairs", compute)

    progress: Callable[[str, int, int], None] | None = None
    on_estimate: Callable | None = None
    all_pairs_sums: Callable | None = None  # None: the backend's op on the driver (see pairwise.all_pairs_scores)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_es"] = state["_backend"] = None   # a unit gets its rows from its own description
        state.pop("progress", None)
        state.pop("on_estimate", None)
        state.pop("all_pairs_sums", None)
        return state


def chunks(es: EmbeddingSet, chunk_rows: int, rows: tuple[int, int] | None = None
           ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`es.iter_chunks`, limited to the global row range rows = (lo, hi) when given (chunks cut at its ends)."""
    if rows is None:
        yield from es.iter_chunks(chunk_rows)
        return
    lo, hi = rows
    if not 0 <= lo <= hi <= es.n:
        raise InputError(f"row range {lo}..{hi} is outside the set's rows 0..{es.n}; give 0 ≤ lo ≤ hi ≤ N")
    for start, block, labels in es.iter_chunks(chunk_rows):
        a, b = max(lo, start), min(hi, start + len(block))
        if a < b:
            yield a, block[a - start:b - start], labels[a - start:b - start]


def run_pass(plan: ScorePlan, k: int, es: EmbeddingSet, backend: Backend, chunk_rows: int | None = None, *,
             rows: tuple[int, int] | None = None, progress: Callable[[str, int, int], None] | None = None
             ) -> PassResult:
    """Pass k over one unit (all of `es`, or its rows [lo, hi)): each chunk is read once and fed to every
    accumulator of the pass. Returns the unit's accumulators (`.state_dicts()` to ship them)."""
    accs = plan.new_accumulators(k)
    return feed(accs, es, backend, chunk_rows or plan.chunk_rows or 16_384, rows=rows, progress=progress,
                stage=plan.stage(k))


def feed(accs: PassResult, es: EmbeddingSet, backend: Backend, chunk_rows: int, *, rows: tuple[int, int] | None = None,
         progress: Callable[[str, int, int], None] | None = None, stage: str = "pass") -> PassResult:
    """Read `es` (or its rows [lo, hi)) once, chunk by chunk, into every accumulator of `accs`; returns `accs`."""
    total = es.n if rows is None else rows[1] - rows[0]
    done = 0
    for start, block, labels in chunks(es, chunk_rows, rows):
        chunk = Chunk(None, labels, start, rows=block, backend=backend)
        for acc in accs.values():
            acc.update(chunk)
        done += len(block)
        if progress:
            progress(stage, done, total)
    return accs


def run_plan(plan: ScorePlan, es: EmbeddingSet, backend: Backend, chunk_rows: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """Every pass of `plan` over all of `es` in this process, then the finalisers."""
    plan.progress = progress
    for k in range(plan.num_passes):
        plan.add_pass(k, [run_pass(plan, k, es, backend, chunk_rows, progress=progress)])
    return plan.finalise(es, backend)
