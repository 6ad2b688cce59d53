"""`--metrics everything` (every embedding score and every baseline) at N = 200 000, D = 512, C = 100 against
the slowest baseline scored alone, on the same rows in the same run; the rows are read once per pass (counted).

    python -m pytest benches/bench_everything.py --benchmark-only -s -p no:cacheprovider
    IIMM_BENCH_ROWS=50000 python -m pytest benches/bench_everything.py --benchmark-only -s   # smaller

Each baseline alone is one `score(es, [key])` (NCTI's three parts as one); `everything` adds the embedding
scores and the all-pairs sample on top, so its time over the slowest alone says what sharing the passes saves.
"""

from __future__ import annotations

import os

from iimm.engine import EmbeddingSet, score
from iimm.engine.scoring.baselines import TRANSFER_SCORES
from peers import structured_embeddings, time_once

N = int(os.environ.get("IIMM_BENCH_ROWS", 200_000))
D, C = 512, 100
BASELINES = [[k] for k in TRANSFER_SCORES if not k.startswith("ncti_")] + [
    [k for k in TRANSFER_SCORES if k.startswith("ncti_")]]


def count_reads(es: EmbeddingSet) -> list[int]:
    """Rows yielded by each pass over `es` from now on (one entry per `iter_chunks` call)."""
    reads, read_chunks = [], es.iter_chunks

    def iter_chunks(chunk_rows):
        reads.append(0)
        for start, rows, labels in read_chunks(chunk_rows):
            reads[-1] += len(rows)
            yield start, rows, labels

    object.__setattr__(es, "iter_chunks", iter_chunks)
    return reads


def test_everything_vs_the_slowest_baseline_alone(benchmark):
    x, y, t = structured_embeddings(N, D, C)
    es = EmbeddingSet.from_arrays(x, y, t)
    score(EmbeddingSet.from_arrays(x[:2000], y[:2000], t), "everything")  # compile and load once, untimed
    alone = {"+".join(keys): time_once(score, es, keys)[0] for keys in BASELINES}
    slowest = max(alone, key=alone.get)
    reads = count_reads(es)
    report = benchmark.pedantic(lambda: score(es, "everything"), rounds=1, iterations=1)
    ours = benchmark.stats.stats.median
    assert reads == [N] * len(reads), reads
    benchmark.extra_info.update(passes=len(reads), alone_seconds=alone, slowest=slowest,
                                time_vs_slowest_alone=ours / alone[slowest])
    print(f"\n{benchmark.name}: everything ({len(report.scores)} scores) {ours:.2f} s in {len(reads)} reads of "
          f"{N:,} rows; slowest baseline alone {slowest} {alone[slowest]:.2f} s: ×{ours / alone[slowest]:.2f}; "
          f"each alone: {', '.join(f'{k} {v:.2f} s' for k, v in sorted(alone.items(), key=lambda kv: -kv[1]))}")
