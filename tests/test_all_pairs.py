"""all_pairs_class_sums (symmetric float32 tiles) on every backend against the float64 O(N²) definitions."""

import time

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

import naive_scores as naive
from iimm.engine.scoring import pairwise
from iimm.engine.scoring.pairwise import mean_silhouette_of_power_sums, mean_silhouette_of_sums, pairwise_silhouette
from iimm.kernels import get_backend
from synthetic import structured

BACKENDS = ["torch", "numba", "triton"]


def naive_class_sums(x, y, c, metric, p=1.0, zero_eps=0.0):
    """(n, C) Σ_{j≠i, class c} d_ij^p (log for p = 0) over pairs with d > zero_eps, and their counts."""
    dist = naive.euclidean_distances(x) if metric == "euclidean" else np.maximum(naive.cosine_distances(x), 0.0)
    keep = dist > zero_eps
    np.fill_diagonal(keep, False)
    term = np.log(np.maximum(dist, 1e-300)) if p == 0 else np.maximum(dist, 1e-300) ** p
    onehot = np.eye(c)[y]
    return np.where(keep, term, 0.0) @ onehot, keep.astype(float) @ onehot


def device_of(backend):
    """Triton runs on the GPU where there is one (else on the CPU, interpreted); the others on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def sums_of(backend, x, y, c, tile, **kw):
    be = get_backend(backend, device_of(backend))
    out = be.all_pairs_class_sums(be.tensor(x), be.tensor(y), c, tile=tile, **kw)
    return [None if a is None else a.cpu().numpy() for a in out]


def awkward(seed, n=53, d=37, c=5, dtype=np.float32):
    """A one-row class, an empty class, duplicated rows, near-duplicates (distance ~1e-4), D not a power of 2."""
    x, y, _ = structured(seed, n, d, c, duplicates=4, dtype=np.float64)
    x[5] = x[6] + 1e-4 * np.abs(x[6]).mean() * np.random.default_rng(seed).normal(size=d)
    y[5] = y[6]
    return x.astype(dtype), y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", [16, 53, 64])
def test_sums_match_the_float64_definition(backend, tile):
    x, y = awkward(0)
    e, cs, cp = sums_of(backend, x, y, 5, tile, euclidean=True, cosine_p=1.0, zero_eps=1e-6)
    want_e, _ = naive_class_sums(x, y, 5, "euclidean")
    want_c, want_k = naive_class_sums(x, y, 5, "cosine", 1.0, 1e-6)
    np.testing.assert_allclose(e, want_e, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cs, want_c, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cp, want_k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_duplicates_are_recomputed_in_float64(backend):
    """Rows 5 and 6, alone in class 0, at distance ~1e-4: from a float32 dot product the distance would be
    off by ~1e-3; recomputed from the two rows it is exact to float32 normalisation (~1e-8)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 37))
    x[5] = x[6] + 2e-5 * rng.normal(size=37)
    y = np.r_[np.ones(5, np.int64), 0, 0, np.full(13, 2)]
    e, cs, _ = sums_of(backend, x.astype(np.float32), y, 3, 8, euclidean=True, cosine_p=1.0, zero_eps=0.0)
    xu = naive.unit(x.astype(np.float32))
    pair = np.linalg.norm(xu[5] - xu[6])
    assert 1e-5 < pair < 1e-3
    assert e[5, 0] == pytest.approx(pair, abs=1e-8) and e[6, 0] == pytest.approx(pair, abs=1e-8)
    assert cs[5, 0] == pytest.approx(1.0 - xu[5] @ xu[6], abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.0, 0.5, 2.0, -1.0, 1.5])
def test_gensil_power_sums_and_score(backend, p):
    x, y = awkward(2)
    _, cs, cp = sums_of(backend, x, y, 5, 16, euclidean=False, cosine_p=p, zero_eps=1e-6)
    want_c, want_k = naive_class_sums(x, y, 5, "cosine", p, 1e-6)
    np.testing.assert_allclose(cs, want_c, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cp, want_k)
    y_t = torch.as_tensor(y)
    got = mean_silhouette_of_power_sums(torch.as_tensor(cs), torch.as_tensor(cp), y_t, torch.bincount(y_t, minlength=5),
                                        p)
    assert got == pytest.approx(naive.gensil(x, y, p), abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_product_feeds_both_scores(backend):
    x, y = awkward(3)
    both = sums_of(backend, x, y, 5, 16, euclidean=True, cosine_p=1.0, zero_eps=1e-6)
    alone_e = sums_of(backend, x, y, 5, 16, euclidean=True)
    alone_c = sums_of(backend, x, y, 5, 16, euclidean=False, cosine_p=1.0, zero_eps=1e-6)
    assert alone_e[1] is None and alone_c[0] is None
    np.testing.assert_allclose(both[0], alone_e[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(both[1], alone_c[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(both[2], alone_c[2])


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_silhouettes_match_naive_and_scikit_learn(backend, dtype):
    x, y, _ = structured(4, 300, 48, 7, dtype=dtype)
    be = get_backend(backend, "cpu")
    x64 = naive.unit(x.astype(np.float64))
    got_e = pairwise_silhouette(be, x, y, 7, "euclidean")
    assert got_e == pytest.approx(naive.silhouette_class_euclidean(x, y), abs=1e-6)
    assert got_e == pytest.approx(silhouette_score(x64, y, metric="euclidean"), abs=1e-6)
    got_g = pairwise_silhouette(be, x, y, 7, "cosine", p=1.0)
    assert got_g == pytest.approx(naive.gensil(x, y, 1.0), abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_in_any_label_order_and_a_single_row_class(backend):
    """Rows are sorted by label inside the op; the sums come back in the caller's order."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(23, 9)).astype(np.float32)
    y = rng.integers(0, 3, 23)
    y[7] = 3  # the only row of class 3
    e = sums_of(backend, x, y, 4, 5, euclidean=True)[0]
    want, _ = naive_class_sums(x, y, 4, "euclidean")
    np.testing.assert_allclose(e, want, rtol=1e-6, atol=1e-6)
    y_t = torch.as_tensor(y)
    got = mean_silhouette_of_sums(torch.as_tensor(e), y_t, torch.bincount(y_t, minlength=4))
    assert got == pytest.approx(naive.silhouette_class_euclidean(x, y), abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_counts_tile_pairs_and_empty_input(backend):
    x, y = awkward(6, n=40)
    seen = []
    sums_of(backend, x, y, 5, 16, euclidean=True, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 6) for k in range(1, 7)]  # 3 tiles: 3 diagonal + 3 off-diagonal pairs
    e = sums_of(backend, x[:0], y[:0], 5, 16, euclidean=True)[0]
    assert e.shape == (0, 5)


def test_estimate_is_one_timed_tile_times_the_tile_pairs(monkeypatch):
    monkeypatch.setattr(pairwise, "ALL_PAIRS_TILE", 100)
    calls = []

    def run(rows, labels, tick=None):
        calls.append(len(rows))
        time.sleep(0.05 if len(rows) == 100 else 0.0)

    seconds = pairwise.estimate_seconds(run, torch.zeros(450, 3), torch.zeros(450, dtype=torch.int64), 450)
    assert calls == [64, 100]  # a warm-up call, then one whole tile of the real rows
    assert 15 * 0.05 <= seconds < 15 * 0.05 * 3  # 5 tiles: 15 unordered tile pairs


@pytest.mark.parametrize("backend", BACKENDS)
def test_units_of_tile_pairs_add_up_to_the_whole_sweep_without_ray(backend):
    """The unit worker of the sharded sweep (engine/scoring/sharded_pairs.py), called as a plain function: its
    per-group sums over a partition of the tile pairs add up to the whole op's sums, counts exactly."""
    from iimm.engine.scoring.sharded_pairs import AllPairsJob, ShardedAllPairs, tile_pair_groups

    x, y = awkward(11, n=70)
    order = np.argsort(y, kind="stable")  # the sharded sweep's rows are label-sorted
    x, y = x[order], y[order]
    whole = sums_of(backend, x, y, 5, 16, euclidean=True, cosine_p=0.5, zero_eps=1e-6)
    groups = tile_pair_groups(70, 16, 4)
    assert [len(g.pairs) for g in groups] == [4, 4, 4, 3]  # 5 tiles: 15 unordered pairs
    assert sorted(p for g in groups for p in g.pairs) == sorted((i, j) for i in range(0, 70, 16)
                                                                for j in range(i, 70, 16))
    job = AllPairsJob((x, y), 5, True, 0.5, 1e-6, backend, device_of(backend), 16)
    total = [np.zeros((70, 5)) for _ in range(3)]
    for g in groups:
        part = job(g)
        assert set(part["rows"]) == {r for pair in g.pairs for s in pair for r in range(s, min(70, s + 16))}
        for t, field in zip(total, ("euclidean", "cosine", "cosine_pairs")):
            t[part["rows"]] += part[field]
    np.testing.assert_allclose(total[0], whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total[1], whole[1], rtol=1e-12, atol=1e-12)
    assert np.array_equal(total[2], whole[2])
    driven = ShardedAllPairs("local", backend, device_of(backend), tile=16, pairs_per_unit=4)(
        torch.from_numpy(x), torch.from_numpy(y), 5, euclidean=True, cosine_p=0.5, zero_eps=1e-6)
    np.testing.assert_allclose(driven.euclidean.numpy(), whole[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(driven.cosine_pairs, torch.from_numpy(whole[2]))
