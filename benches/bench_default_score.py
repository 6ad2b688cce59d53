"""The default `iimm score` (every embedding score) at N = 200 000, D = 512, C = 100 against one scikit-learn
silhouette_score(metric="euclidean", sample_size=50 000) on the same rows, in the same run.

    python -m pytest benches/bench_default_score.py --benchmark-only -s
    IIMM_BENCH_ROWS=50000 python -m pytest benches/bench_default_score.py --benchmark-only -s   # smaller

Issue-12 target: ours ≤ 0.5× the peer's time (fourteen scores in half the time the peer takes for one).
`iimm score` uses the device's default --quadratic-limit (engine.scoring.registry.DEFAULT_QUADRATIC_LIMIT).
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.metrics import silhouette_score

from iimm.engine import EmbeddingSet, score
from peers import structured_embeddings, time_once

N = int(os.environ.get("IIMM_BENCH_ROWS", 200_000))
D, C, PEER_SAMPLE = 512, 100, 50_000


def test_default_score_vs_sklearn_sampled_silhouette(benchmark):
    x, y, t = structured_embeddings(N, D, C)
    es = EmbeddingSet.from_arrays(x, y, t)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    peer_s, _ = time_once(silhouette_score, xu, y, metric="euclidean", sample_size=min(PEER_SAMPLE, N),
                          random_state=0)
    report = benchmark.pedantic(lambda: score(es), rounds=1, iterations=1)
    assert len(report.scores) == 14
    ratio = benchmark.stats.stats.median / peer_s
    benchmark.extra_info.update(peer_seconds=peer_s, time_vs_peer=ratio, sample_rows=report.sample_rows)
    print(f"\n{benchmark.name}: iimm score (14 scores, all-pairs on {report.sample_rows or N} rows) "
          f"{benchmark.stats.stats.median:.2f} s, scikit-learn silhouette (sample {min(PEER_SAMPLE, N)}) "
          f"{peer_s:.2f} s: ours / peer = {ratio:.2f} (target ≤ 0.5)")
