"""What each transferability baseline costs beside IIMM, on the same data, in one table.

Run: python -m pytest benches/bench_transfer.py --benchmark-group-by=group --benchmark-columns=min,median,rounds
N = 50 000 rows, D = 512, C = 100 classes (float32, class centroids plus noise). Every row
of the table carries `x_iimm` in its extra info: its median time over IIMM's median, both
measured in this run (a ratio, so the figure travels across machines).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from iimm.engine.embedding.embedding_set import EmbeddingSet
from iimm.engine.scoring.baselines import TRANSFER_SCORES, compute_transfer

N, D, C = 50_000, 512, 100
GROUP = f"transfer N={N} D={D} C={C}"
BASELINES = [k for k in TRANSFER_SCORES if not k.startswith("ncti_")] + ["ncti"]


@pytest.fixture(scope="module")
def embeddings() -> EmbeddingSet:
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(C, D))
    label = rng.integers(0, C, size=N)
    image = (centroids[label] + 2.0 * rng.normal(size=(N, D))).astype(np.float32)
    text = centroids + 0.8 * rng.normal(size=(C, D))
    return EmbeddingSet.from_arrays(image, label, text, source="bench")


def _iimm_backend() -> str:
    """The backend `score` picks by default, or the pure-PyTorch path where that one cannot run here."""
    from iimm.errors import BackendUnavailable
    from iimm.kernels import get_backend
    try:
        return get_backend("auto").name
    except BackendUnavailable:
        return "torch"


def _iimm(es: EmbeddingSet, backend: str) -> None:
    from iimm.engine.scoring.scores import score
    score(es, ["iimm"], backend=backend)


@pytest.fixture(scope="module")
def iimm_seconds(embeddings) -> float:
    backend = _iimm_backend()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        _iimm(embeddings, backend)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_iimm(benchmark, embeddings, iimm_seconds):
    benchmark.group = GROUP
    backend = _iimm_backend()
    benchmark.pedantic(_iimm, (embeddings, backend), rounds=3, iterations=1)
    benchmark.extra_info["backend"] = backend
    benchmark.extra_info["x_iimm"] = round(benchmark.stats.stats.median / iimm_seconds, 2)


@pytest.mark.parametrize("key", BASELINES)
def test_baseline(benchmark, embeddings, iimm_seconds, key):
    benchmark.group = GROUP
    result = benchmark.pedantic(compute_transfer, (embeddings, [key]), rounds=2, iterations=1)
    assert all(np.isfinite(v) for v in result.scores.values())
    benchmark.extra_info["x_iimm"] = round(benchmark.stats.stats.median / iimm_seconds, 2)


def test_all_baselines_in_shared_passes(benchmark, embeddings, iimm_seconds):
    benchmark.group = GROUP
    result = benchmark.pedantic(compute_transfer, (embeddings, None), rounds=1, iterations=1)
    assert len(result.scores) == len(TRANSFER_SCORES)
    benchmark.extra_info["x_iimm"] = round(benchmark.stats.stats.median / iimm_seconds, 2)
