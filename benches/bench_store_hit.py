"""What a cache hit of a stored embedding set costs to verify: every shard's sha256 (the first hit, or a file
whose size, mtime or inode changed) against the stat signatures kept from the last check (every later hit).

A store with one set of IIMM_BENCH_STORE_MIB (default 1 024) MiB of float16 rows in shards of 1 024 × 512
rows is written once; the peer is the full check, measured in the same run.

    python -m pytest benches/bench_store_hit.py --benchmark-only -s -p no:cacheprovider
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from iimm.engine.embedding.store import Store, write_shard

D, SHARD_ROWS = 512, 1024


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    mib = int(os.environ.get("IIMM_BENCH_STORE_MIB", "1024"))
    shards = max(1, mib * 2**20 // (SHARD_ROWS * D * 2))
    st = Store(tmp_path_factory.mktemp("store"))
    set_id = "benchset0000000000000000"
    st.record_dataset("dataset", "bench", shards * SHARD_ROWS, [])
    st.open_set(set_id, "key", "dataset", dict(model="m", architecture="a", pretrained=None, model_fingerprint="f",
                                               preprocess="p", classnames="[]", templates="[]", dtype="fp16",
                                               shard_rows=SHARD_ROWS))
    folder = st.set_dir(set_id)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((SHARD_ROWS, D)).astype(np.float16)
    labels = np.zeros(SHARD_ROWS, np.int64)
    for idx in range(shards):
        rows[0, 0] = idx  # every shard's bytes differ
        st.record_shard(set_id, idx, SHARD_ROWS, [], write_shard(folder, idx, rows, labels))
    for path in folder.iterdir():  # a set written a while ago (a fresh file's signature is not trusted)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 60 * 10**9))
    return st, set_id, shards


def forget_signatures(st, set_id):
    with st.connect() as con:
        con.execute("UPDATE shards SET verified=NULL WHERE set_id=?", (set_id,))


def test_cache_hit_verification(benchmark, stored):
    import time

    st, set_id, shards = stored
    full = []
    for _ in range(3):  # the peer: every byte hashed (page cache warm after the first round)
        forget_signatures(st, set_id)
        started = time.perf_counter()
        assert len(st.finished_shards(set_id)) == shards
        full.append(time.perf_counter() - started)
    hit = benchmark(lambda: st.finished_shards(set_id))
    assert len(hit) == shards
    kept = benchmark.stats.stats.median
    peer = sorted(full)[1]
    benchmark.extra_info.update(shards=shards, full_check_s=peer, signature_check_s=kept, speedup=peer / kept)
    print(f"\n{shards} shards ({shards * SHARD_ROWS * D * 2 / 2**30:.2f} GiB of rows): full sha256 check "
          f"{peer:.3f} s, check against kept signatures {kept * 1e3:.1f} ms (×{peer / kept:.0f})")
