"""The numba CPU backend against its PyTorch twin (kernels.reference) and naive float64 definitions.

Small awkward shapes: non-power-of-two D, n = 1, 2, 7, 1000, a class with one row, an empty
class, float16/float32/float64 rows, bfloat16 and non-contiguous tensors, a read-only memmap,
zero and NaN rows. Every output element is compared. The kernels compute in float64 from the
stored values, so against the naive float64 definitions they agree to ~1e-12 wherever they do
not call BLAS; against the reference (which normalises in float32 for float32/float16 rows)
to ~1e-6.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

import iimm.engine  # noqa: F401  (the engine package must initialise before iimm.kernels)
from iimm.errors import InputError
from iimm.kernels import get_backend, numba_class_sums, numba_cpu, numba_cross_reduce, numba_pairwise, reference
from iimm.kernels.numba_rows import HALF_BY_INSTRUCTION, half_bits_to_float
from kernel_reference import naive_class_sums, naive_cross_reduce, naive_pairwise, unit64

DTYPES = [np.float16, np.float32, np.float64]
SHAPES = [(1, 40, 3), (2, 100, 2), (7, 40, 5), (1000, 100, 6)]  # (n, D, C)


def make_rows(n: int, d: int, c: int, dtype, seed: int = 0):
    """(rows (n, d) dtype, labels (n,) int64): class c-1 empty, class c-2 one row (when n > 2, c > 2)."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(c, d))
    labels = rng.integers(0, max(1, c - 2), size=n) if c > 2 else rng.integers(0, c, size=n)
    if n > 2 and c > 2:
        labels[n // 2] = c - 2
    rows = centroids[labels] + 0.7 * rng.normal(size=(n, d))
    return rows.astype(dtype), labels.astype(np.int64)


def tol(dtype) -> float:
    return 1e-12 if dtype == np.float64 else 1e-6


@pytest.fixture
def threads():
    """Run with a given numba thread count, restored afterwards."""
    saved = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(saved)


# ---------------------------------------------------------------- class_sums

def check_class_sums(out, rows, labels, c):
    assert out.sums.dtype == torch.float64 and out.sums.shape == (c, rows.shape[1])
    assert out.counts.dtype == torch.int64 and out.sq_norm_sum.dtype == torch.float64
    assert out.sq_norm_sum.shape == () and isinstance(out.first_bad, int)
    sums, counts, sq = naive_class_sums(rows, labels, c)
    np.testing.assert_allclose(out.sums.numpy(), sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out.counts.numpy(), counts)
    assert float(out.sq_norm_sum) == pytest.approx(sq, rel=1e-12)
    ref = reference.class_sums(torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(labels), c)
    t = tol(rows.dtype)
    np.testing.assert_allclose(out.sums.numpy(), ref.sums.numpy(), rtol=t, atol=t)
    np.testing.assert_array_equal(out.counts.numpy(), ref.counts.numpy())
    assert float(out.sq_norm_sum) == pytest.approx(float(ref.sq_norm_sum), rel=t)
    assert out.first_bad == ref.first_bad == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", SHAPES)
def test_class_sums_matches_reference_and_naive(n, d, c, dtype):
    rows, labels = make_rows(n, d, c, dtype)
    check_class_sums(numba_cpu.class_sums(rows, labels, c), rows, labels, c)


def fail(*args, **kwargs):
    raise AssertionError("this route should not run")


@pytest.mark.parametrize("route", ["partials", "by_class"])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_class_sums_routes_and_thread_counts_agree(route, num_threads, threads, monkeypatch):
    threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
    monkeypatch.setattr(numba_class_sums, "BLOCK_ROWS", 37)
    monkeypatch.setattr(numba_class_sums, "CLASS_BLOCK_ROWS", 41)
    if route == "by_class":
        monkeypatch.setattr(numba_class_sums, "CLASS_GROUPED_MIN_BYTES", 0)
        monkeypatch.setattr(numba_class_sums, "sums_by_partials", fail)
    else:
        monkeypatch.setattr(numba_class_sums, "sums_by_class", fail)
    rows, labels = make_rows(1000, 100, 6, np.float32, seed=3)
    check_class_sums(numba_cpu.class_sums(rows, labels, 6), rows, labels, 6)
    sorted_labels = np.sort(labels)  # whole classes inside one block, and classes spanning blocks
    check_class_sums(numba_cpu.class_sums(rows, sorted_labels, 6), rows, sorted_labels, 6)
    assert numba.get_num_threads() == min(num_threads, numba.config.NUMBA_NUM_THREADS)  # restored


def test_partial_count_spends_threads_only_where_they_pay():
    assert numba_class_sums.partial_count(2, 1, 40, 3, 4) == 1  # one row: no second partial to zero and sum
    assert numba_class_sums.partial_count(2, 65536, 512, 1000, 4) == 2
    assert numba_class_sums.partial_count(16, 65536, 512, 1000, 4) == 9  # 1 + ¼·(rows' bytes)/(C·D·8)
    assert numba_class_sums.partial_count(64, 10**7, 512, 8000, 4) == 2  # capped at 64 MiB of partials


def test_class_sums_many_classes_few_rows(monkeypatch):
    monkeypatch.setattr(numba_class_sums, "sums_by_class", fail)
    rows, labels = make_rows(300, 40, 250, np.float32, seed=4)
    check_class_sums(numba_cpu.class_sums(rows, labels, 250), rows, labels, 250)


def test_class_sums_reads_a_readonly_memmap(tmp_path):
    rows, labels = make_rows(1000, 100, 6, np.float32, seed=1)
    np.save(tmp_path / "image.npy", rows)
    mm = np.load(tmp_path / "image.npy", mmap_mode="r")
    assert not mm.flags.writeable
    check_class_sums(numba_cpu.class_sums(mm[100:900], labels[100:900], 6), rows[100:900], labels[100:900], 6)


def test_class_sums_takes_tensors_bf16_and_noncontiguous():
    rows, labels = make_rows(200, 40, 5, np.float32, seed=2)
    check_class_sums(numba_cpu.class_sums(torch.from_numpy(rows), torch.from_numpy(labels), 5), rows, labels, 5)
    bf16 = torch.from_numpy(rows).to(torch.bfloat16)
    check_class_sums(numba_cpu.class_sums(bf16, labels, 5), bf16.float().numpy(), labels, 5)
    wide = np.asfortranarray(rows)  # column-major: not C-contiguous
    check_class_sums(numba_cpu.class_sums(wide, labels, 5), rows, labels, 5)


def test_class_sums_of_an_empty_chunk():
    out = numba_cpu.class_sums(np.zeros((0, 40), np.float32), np.zeros(0, np.int64), 3)
    assert out.sums.shape == (3, 40) and not out.sums.any() and not out.counts.any()
    assert float(out.sq_norm_sum) == 0.0 and out.first_bad == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad_rows,expected", [({3: 0.0}, 3), ({5: math.nan}, 5), ({8: math.inf}, 8),
                                               ({990: math.nan, 10: 0.0}, 10), ({700: 0.0, 600: math.nan}, 600)])
def test_class_sums_first_bad_row_as_reference(bad_rows, expected, dtype, monkeypatch):
    monkeypatch.setattr(numba_class_sums, "BLOCK_ROWS", 64)  # bad rows in different blocks and threads
    rows, labels = make_rows(1000, 40, 4, dtype, seed=5)
    for i, v in bad_rows.items():
        rows[i] = v if not math.isinf(v) else 0.0
        rows[i, 7] = v
    out = numba_cpu.class_sums(rows, labels, 4)
    ref = reference.class_sums(torch.from_numpy(rows), torch.from_numpy(labels), 4)
    assert out.first_bad == ref.first_bad == expected
    np.testing.assert_array_equal(np.isnan(out.sums.numpy()), np.isnan(ref.sums.numpy()))
    np.testing.assert_allclose(out.sums.numpy(), ref.sums.numpy(), rtol=tol(dtype), atol=tol(dtype))
    np.testing.assert_array_equal(out.counts.numpy(), ref.counts.numpy())
    assert math.isnan(float(out.sq_norm_sum)) == math.isnan(float(ref.sq_norm_sum))


def test_class_sums_first_bad_row_on_the_class_grouped_route(monkeypatch):
    monkeypatch.setattr(numba_class_sums, "CLASS_GROUPED_MIN_BYTES", 0)
    monkeypatch.setattr(numba_class_sums, "CLASS_BLOCK_ROWS", 50)
    rows, labels = make_rows(1000, 40, 4, np.float32, seed=6)
    rows[[870, 420, 31]] = 0.0  # visited out of row order: the smallest index must win
    assert numba_cpu.class_sums(rows, labels, 4).first_bad == 31


@pytest.mark.parametrize("labels,match", [([0, 3], r"\[0, 3\)"), ([-1, 0], r"\[0, 3\)"), ([0], "one label per row")])
def test_class_sums_rejects_bad_labels(labels, match):
    with pytest.raises(InputError, match=match):
        numba_cpu.class_sums(np.ones((2, 4), np.float32), np.array(labels), 3)


@pytest.mark.parametrize("rows,match", [(np.ones(4, np.float32), "2-D"), (np.ones((2, 4), np.int32), "float"),
                                        (torch.ones(2, 4, dtype=torch.int64), "float")])
def test_class_sums_rejects_bad_rows(rows, match):
    with pytest.raises(InputError, match=match):
        numba_cpu.class_sums(rows, np.zeros(2, np.int64), 3)


# ---------------------------------------------------------------- cross_reduce

def assert_rank(rank, sims, labels, margin):
    """rank counts k with s_k > s_y; allow flips only for |s_k - s_y| <= margin."""
    s_y = sims[np.arange(len(labels)), labels][:, None]
    lo, hi = (sims > s_y + margin).sum(1), (sims > s_y - margin).sum(1)
    assert np.all((lo <= rank) & (rank <= hi))


def check_cross_reduce(out, rows, labels, matrix, col_scale, col_valid, naive_tol):
    n, k = len(labels), len(matrix)
    scale = np.ones(k) if col_scale is None else col_scale
    valid = np.ones(k, bool) if col_valid is None else col_valid
    naive = naive_cross_reduce(rows, labels, matrix, scale, valid)
    sims, correct, other, best = naive["sims"], naive["correct"], naive["other_sum"], naive["best_other"]
    assert [a.dtype for a in out[:5]] == [torch.float64, torch.float64, torch.int32, torch.float64, torch.float64]
    assert all(a.shape == (n,) for a in out[:5]) and out.first_bad == -1
    np.testing.assert_allclose(out.correct.numpy(), correct, rtol=naive_tol, atol=naive_tol)
    np.testing.assert_allclose(out.other_sum.numpy(), other, rtol=naive_tol, atol=naive_tol * k)
    np.testing.assert_allclose(out.best_other.numpy(), best, rtol=naive_tol, atol=naive_tol)
    np.testing.assert_allclose(out.sq_norm.numpy(), 1.0, rtol=0, atol=1e-6)
    assert_rank(out.rank.numpy(), sims, labels, 10 * naive_tol)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) if a is not None else None
               for a in (rows, labels, matrix, col_scale, col_valid)]
    ref = reference.cross_reduce(*tensors)
    t = tol(rows.dtype)
    for got, want in [(out.correct, ref.correct), (out.best_other, ref.best_other), (out.sq_norm, ref.sq_norm)]:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=t, atol=t)
    np.testing.assert_allclose(out.other_sum.numpy(), ref.other_sum.numpy(), rtol=t, atol=t * k)
    assert_rank(out.rank.numpy(), sims, labels, 10 * t)
    assert_rank(ref.rank.numpy(), sims, labels, 10 * t)


@pytest.mark.parametrize("route", ["fused", "blocked"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,c", SHAPES)
def test_cross_reduce_matches_reference_and_naive(n, d, c, dtype, route, monkeypatch):
    if route == "blocked":
        monkeypatch.setattr(numba_cross_reduce, "FUSED_MAX_VALUES", 0)
        monkeypatch.setattr(numba_cross_reduce, "SIMS_BLOCK_VALUES", 64 * c + 1)  # several row blocks
    rows, labels = make_rows(n, d, c, dtype, seed=7)
    rng = np.random.default_rng(8)
    matrix = rng.normal(size=(c, d))
    scale, valid = rng.uniform(0.5, 2.0, size=c), rng.random(c) > 0.3
    naive_tol = 1e-12 if route == "fused" or dtype == np.float64 else 1e-5
    for col_scale, col_valid in [(None, None), (scale, valid)]:
        out = numba_cpu.cross_reduce(rows, labels, matrix, col_scale, col_valid)
        check_cross_reduce(out, rows, labels, matrix, col_scale, col_valid, naive_tol)


def test_cross_reduce_large_matrix_from_tensors_and_memmap(tmp_path):
    rows, labels = make_rows(300, 100, 400, np.float32, seed=9)  # K·D above the fused limit
    assert 400 * 100 > numba_cross_reduce.FUSED_MAX_VALUES
    np.save(tmp_path / "rows.npy", rows)
    mm = np.load(tmp_path / "rows.npy", mmap_mode="r")
    matrix = np.random.default_rng(10).normal(size=(400, 100))
    out = numba_cpu.cross_reduce(mm, torch.from_numpy(labels), torch.from_numpy(matrix))
    check_cross_reduce(out, rows, labels, matrix, None, None, 1e-5)


def test_cross_reduce_ties_count_as_hits_and_no_other_class_gives_minus_inf():
    rows, labels = make_rows(50, 40, 4, np.float32, seed=11)
    matrix = np.random.default_rng(12).normal(size=(4, 40))
    matrix[3] = matrix[0]  # column 3 ties column 0 exactly
    out = numba_cpu.cross_reduce(rows, labels * 0, matrix, None, np.array([True, True, True, False]))
    sims = unit64(rows) @ matrix.T
    np.testing.assert_array_equal(out.rank.numpy(), (sims[:, 1:3] > sims[:, :1]).sum(1))
    np.testing.assert_allclose(out.best_other.numpy(), sims[:, 1:3].max(1), rtol=1e-12)
    single = numba_cpu.cross_reduce(rows, labels * 0, matrix[:1])
    assert np.all(single.best_other.numpy() == -math.inf) and not single.rank.numpy().any()
    assert not single.other_sum.numpy().any()
    none_valid = numba_cpu.cross_reduce(rows, labels, matrix, None, np.zeros(4, bool))
    assert np.all(none_valid.best_other.numpy() == -math.inf)


@pytest.mark.parametrize("route", ["fused", "blocked"])
def test_cross_reduce_first_bad_row_as_reference(route, monkeypatch):
    if route == "blocked":
        monkeypatch.setattr(numba_cross_reduce, "FUSED_MAX_VALUES", 0)
        monkeypatch.setattr(numba_cross_reduce, "SIMS_BLOCK_VALUES", 300)
    rows, labels = make_rows(1000, 40, 5, np.float32, seed=13)
    rows[940] = np.nan
    rows[610] = 0.0
    matrix = np.random.default_rng(14).normal(size=(5, 40))
    out = numba_cpu.cross_reduce(rows, labels, matrix)
    ref = reference.cross_reduce(torch.from_numpy(rows), torch.from_numpy(labels), torch.from_numpy(matrix))
    assert out.first_bad == ref.first_bad == 610
    good = np.ones(1000, bool)
    good[[610, 940]] = False
    np.testing.assert_allclose(out.correct.numpy()[good], ref.correct.numpy()[good], rtol=1e-6, atol=1e-6)


def test_cross_reduce_of_an_empty_chunk():
    out = numba_cpu.cross_reduce(np.zeros((0, 40), np.float32), np.zeros(0, np.int64), np.ones((3, 40)))
    assert all(a.shape == (0,) for a in out[:5]) and out.first_bad == -1
    assert out.rank.dtype == torch.int32


def test_cross_reduce_rejects_mismatched_shapes():
    rows, labels = make_rows(10, 40, 3, np.float32)
    with pytest.raises(InputError, match="matrix"):
        numba_cpu.cross_reduce(rows, labels, np.ones((3, 41)))
    with pytest.raises(InputError, match="col_scale"):
        numba_cpu.cross_reduce(rows, labels, np.ones((3, 40)), np.ones(2))
    with pytest.raises(InputError, match=r"\[0, 2\)"):
        numba_cpu.cross_reduce(rows, np.arange(10) % 3, np.ones((2, 40)))


# ---------------------------------------------------------------- pairwise_class_sums

def assert_sums_close(got, want, counts, rel):
    """|got - want| <= rel·(|want| + pair count): each summed term carries at most ~rel of error."""
    assert np.all(np.abs(got - want) <= rel * (np.abs(want) + counts)), np.abs(got - want).max()


def check_pairwise(queries, keys, key_labels, c, naive_tol, **kw):
    out = numba_cpu.pairwise_class_sums(queries, keys, key_labels, c, **kw)
    assert out.sums.dtype == torch.float64 and out.counts.dtype == torch.int64
    assert out.sums.shape == out.counts.shape == (len(queries), c)
    sums, counts = naive_pairwise(queries, keys, key_labels, c, kw["metric"], kw["p"], kw["query_offset"],
                                  kw["key_offset"], kw["zero_eps"])
    np.testing.assert_array_equal(out.counts.numpy(), counts)
    assert_sums_close(out.sums.numpy(), sums, counts, naive_tol)
    ref = reference.pairwise_class_sums(torch.from_numpy(queries), torch.from_numpy(keys),
                                        torch.from_numpy(key_labels), c, **kw)
    np.testing.assert_array_equal(out.counts.numpy(), ref.counts.numpy())
    assert_sums_close(out.sums.numpy(), ref.sums.numpy(), counts, 1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("p", [1.0, 2.0, 0.5, 0.0, -1.0, 1.7])
def test_pairwise_matches_reference_and_naive(metric, p, monkeypatch):
    monkeypatch.setattr(numba_pairwise, "QUERY_BLOCK", 16)  # tiles cut through the self pairs
    monkeypatch.setattr(numba_pairwise, "KEY_BLOCK", 23)
    rows, labels = make_rows(60, 40, 5, np.float32, seed=15)
    kw = dict(metric=metric, p=p, zero_eps=0.0)
    check_pairwise(rows, rows, labels, 5, 1e-5, query_offset=0, key_offset=0, **kw)
    check_pairwise(rows[20:35], rows[:50], labels[:50], 5, 1e-5, query_offset=20, key_offset=0, **kw)
    check_pairwise(rows[:15], rows[30:], labels[30:], 5, 1e-5, query_offset=0, key_offset=30, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pairwise_duplicates_are_dropped_by_zero_eps(dtype, metric, monkeypatch):
    monkeypatch.setattr(numba_pairwise, "KEY_BLOCK", 16)
    rows, labels = make_rows(45, 100, 4, dtype, seed=16)
    rows[[40, 41, 42]] = rows[[3, 3, 17]]
    labels[[40, 41, 42]] = labels[[3, 3, 17]]
    naive_tol = 1e-9 if dtype == np.float64 else 1e-5
    check_pairwise(rows, rows, labels, 4, naive_tol, metric=metric, p=1.0, query_offset=0, key_offset=0,
                   zero_eps=1e-3)
    out = numba_cpu.pairwise_class_sums(rows, rows, labels, 4, metric=metric, p=1.0, zero_eps=1e-3)
    assert out.counts.numpy()[3].sum() == 45 - 1 - 2  # neither itself nor its two copies


def test_pairwise_edge_cases():
    rows, labels = make_rows(1, 40, 3, np.float32)
    single = numba_cpu.pairwise_class_sums(rows, rows, labels, 3, metric="cosine")
    assert not single.sums.numpy().any() and not single.counts.numpy().any()  # only a self pair
    empty = numba_cpu.pairwise_class_sums(rows[:0], rows, labels, 3)
    assert empty.sums.shape == (0, 3)
    no_keys = numba_cpu.pairwise_class_sums(rows, rows[:0], labels[:0], 3)
    assert no_keys.sums.shape == (1, 3) and not no_keys.counts.numpy().any()
    with pytest.raises(InputError, match="metric"):
        numba_cpu.pairwise_class_sums(rows, rows, labels, 3, metric="manhattan")
    with pytest.raises(InputError, match="D="):
        numba_cpu.pairwise_class_sums(rows, np.ones((2, 41), np.float32), np.zeros(2, np.int64), 3)


# ---------------------------------------------------------------- plumbing

@pytest.mark.skipif(not HALF_BY_INSTRUCTION, reason="this CPU converts float16 through the lookup table")
def test_half_conversion_instruction_is_exact_for_all_65536_patterns():
    bits = np.arange(65536, dtype=np.uint16)

    @numba.njit
    def convert(b):
        out = np.empty(b.shape[0], np.float32)
        for i in range(b.shape[0]):
            out[i] = half_bits_to_float(b[i])
        return out

    got, want = convert(bits), bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
    assert np.isnan(got[np.isnan(want)]).all()


def test_get_backend_numba_uses_these_ops():
    backend = get_backend("numba", "cpu")
    assert backend.name == "numba"
    assert backend.class_sums is numba_cpu.class_sums
    assert backend.cross_reduce is numba_cpu.cross_reduce
    assert backend.pairwise_class_sums is numba_cpu.pairwise_class_sums


# ---------------------------------------------------------------- thread limits

def test_entry_points_keep_to_torchs_thread_limit_and_give_it_back(threads, monkeypatch):
    """numba's OpenMP launch used to raise torch's thread count to every core (under OMP_NUM_THREADS=1 too)."""
    threads(numba.config.NUMBA_NUM_THREADS)
    saved = torch.get_num_threads()
    seen = []
    real = numba_class_sums.partial_count
    monkeypatch.setattr(numba_class_sums, "partial_count", lambda t, *a: seen.append(t) or real(t, *a))
    rows, labels = make_rows(3000, 40, 4, np.float32, seed=5)
    try:
        torch.set_num_threads(1)
        numba_cpu.class_sums(rows, labels, 4)
        assert torch.get_num_threads() == 1 and seen == [1]  # numba ran on torch's one thread
        numba_cpu.cross_reduce(rows, labels, rows[:4])
        assert torch.get_num_threads() == 1
        numba_cpu.pairwise_class_sums(rows[:50], rows, labels, 4)
        assert torch.get_num_threads() == 1
        numba_cpu.all_pairs_class_sums(rows[:200], labels[:200], 4, cosine_p=1.0)
        assert torch.get_num_threads() == 1
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # numba's own setting restored
    finally:
        torch.set_num_threads(saved)


def test_thread_choice_follows_the_faster_reading_and_probes_the_other():
    """Large chunks go to whichever of one thread / all partials read faster lately; every probe_every-th the other."""
    choice = numba_class_sums.ThreadChoice(min_bytes=100, probe_every=4)
    assert choice.pick(2, 99) == 2 and choice.pick(1, 10**6) == 1  # small chunks / one partial: untouched
    assert choice.pick(2, 1000) == 2
    choice.record(2, 1000, 5.0)            # the first timed chunk may include loading the kernel: not kept
    assert choice.seconds_per_byte == {}
    choice.record(2, 1000, 2.0)            # all threads: 2 ms per kB
    assert choice.pick(2, 1000) == 1       # one thread not measured yet
    choice.record(1, 1000, 1.0)            # one thread faster (a busy core)
    picks = [choice.pick(2, 1000) for _ in range(8)]
    assert picks.count(2) == 2 and picks.count(1) == 6, picks  # every 4th call probes the other choice
    choice.record(2, 1000, 0.5)            # the load went away: all threads again
    assert choice.pick(2, 1000) == 2


def test_all_pairs_keeps_a_process_started_with_omp_num_threads_1_on_one_thread():
    """Under OMP_NUM_THREADS=1 numba's OpenMP launch raised torch's thread count to every core."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np, torch\nfrom iimm.kernels import numba_cpu\n"
            "x = np.random.default_rng(0).standard_normal((200, 40)).astype(np.float32)\n"
            "numba_cpu.all_pairs_class_sums(x, np.arange(200) % 4, 4, cosine_p=1.0)\n"
            "print(torch.get_num_threads())\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"
