"""The Triton kernels against their PyTorch twins (kernels.reference) and naive float64 definitions.

Without a CUDA GPU the kernels run under the Triton interpreter (`TRITON_INTERPRET=1`, set by
conftest.py before triton is imported) on small awkward shapes: non-power-of-two D, n not a multiple
of any block, a class with one row, empty classes, fp16/bf16/fp32/fp64 rows. Every buffer a
kernel writes is poisoned (NaN, or a sentinel integer) before the launch, so an element a
kernel fails to store makes the comparison fail.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from kernel_reference import naive_class_sums, naive_cross_reduce, naive_distances, naive_pairwise, unit64

HAS_GPU = torch.cuda.is_available()

triton = pytest.importorskip("triton")
from iimm.engine import EmbeddingSet  # noqa: E402
from iimm.errors import InputError  # noqa: E402
from iimm.kernels import get_backend, reference, triton_ops, triton_settings  # noqa: E402
from iimm.kernels.triton_common import kernels_interpreted  # noqa: E402
from iimm.kernels.triton_cross_reduce import matrix_parts  # noqa: E402

# Triton decides once per process, when it is imported, whether kernels are interpreted; conftest.py sets
# TRITON_INTERPRET=1 on a CPU before anything imports it. Where triton was imported compiled anyway (the
# variable set to 0), the kernels cannot run on this CPU here: the whole file runs in a fresh process instead.
RUN_IN_SUBPROCESS = not HAS_GPU and not kernels_interpreted()


@pytest.fixture(autouse=True)
def runs_here(request):
    if RUN_IN_SUBPROCESS and request.node.originalname != "test_kernels_in_a_fresh_interpreter_process":
        pytest.skip("triton was imported uninterpreted in this process; this test runs in the TRITON_INTERPRET=1 "
                    "subprocess of test_kernels_in_a_fresh_interpreter_process")


pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if HAS_GPU else "cpu")
ROW_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# fp32-level agreement; fp64 rows are computed in fp64 by both.
REL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float64: 1e-12}
POISON_INT = -7777


@pytest.fixture
def poisoned(monkeypatch):
    """Every kernel-written buffer starts as NaN / a sentinel (int8 flags start as 1 = 'bad row')."""
    calls = []

    def allocate(shape, dtype, device):
        calls.append((tuple(shape), dtype))
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, 1 if dtype == torch.int8 else POISON_INT, dtype=dtype, device=device)

    monkeypatch.setattr(triton_settings, "allocate_output", allocate)
    return calls


def make_rows(n, d, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + 0.5
    return x.to(dtype).to(DEVICE)


def labels_with_gaps(n, c, seed):
    """(n,) labels in [0, c): class 1 has exactly one row, class c-2 none, the rest random."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    y[y == 1] = 0
    y[y == c - 2] = c - 1
    y[n // 3] = 1
    return y.to(DEVICE)


def assert_within(actual, expected, tol, what):
    a = torch.as_tensor(actual).double().cpu()
    e = torch.as_tensor(expected).double().cpu()
    tol = torch.as_tensor(tol).double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values"
    err = (a - e).abs()
    assert (err <= tol).all(), f"{what}: max error {float(err.max()):.3g} > tolerance {float(tol.max()):.3g}"


# ---------------------------------------------------------------- class sums


@pytest.mark.parametrize("dtype", ROW_DTYPES)
@pytest.mark.parametrize("n, d, c, rows_per_item", [(45, 40, 6, 8), (37, 100, 4, 64)])
def test_class_sums_matches_reference_and_definition(poisoned, dtype, n, d, c, rows_per_item):
    x, y = make_rows(n, d, dtype, seed=n + d), labels_with_gaps(n, c, seed=d)
    got = triton_ops.class_sums(x, y, c, rows_per_item=rows_per_item)
    ref = reference.class_sums(x, y, c)
    sums64, counts64, sq64 = naive_class_sums(x, y, c)
    assert poisoned, "the launcher did not allocate through triton_settings.allocate_output"
    assert got.sums.dtype == torch.float64 and got.counts.dtype == torch.int64
    assert got.sq_norm_sum.dtype == torch.float64 and got.sq_norm_sum.shape == ()
    assert isinstance(got.first_bad, int) and got.first_bad == ref.first_bad == -1
    assert torch.equal(got.counts.cpu(), ref.counts.cpu()) and np.array_equal(got.counts.cpu().numpy(), counts64)
    per_class = torch.as_tensor(np.maximum(counts64, 1), dtype=torch.float64)[:, None].expand(c, d)
    assert_within(got.sums, ref.sums, REL[dtype] * per_class, "sums vs reference")
    assert_within(got.sums, sums64, 1e-5 * per_class, "sums vs float64 definition")
    assert counts64[c - 2] == 0 and counts64[1] == 1
    assert float(got.sums[c - 2].abs().sum()) == 0.0, "an empty class must sum to exactly zero"
    assert_within(got.sq_norm_sum, ref.sq_norm_sum, REL[dtype] * n, "sq_norm_sum")
    assert abs(float(got.sq_norm_sum) - sq64) <= 1e-5 * n


def test_class_sums_views_numpy_one_class_and_bitwise_repeatable(poisoned):
    base = make_rows(50, 64, torch.float32, seed=3)
    view = base[:, 5:45]  # row stride 64, D = 40
    y = torch.zeros(50, dtype=torch.int64, device=DEVICE)
    got = triton_ops.class_sums(view, y, 1, rows_per_item=16)
    ref = reference.class_sums(view.contiguous(), y, 1)
    assert_within(got.sums, ref.sums, 1e-5 * 50, "one class, strided rows")
    again = triton_ops.class_sums(view, y, 1, rows_per_item=16)
    assert torch.equal(got.sums, again.sums), "no atomics: the same input gives the same bits"
    if not HAS_GPU:
        arr = view.numpy().copy()
        from_numpy = triton_ops.class_sums(arr, y.numpy(), 1, rows_per_item=16)
        assert torch.equal(from_numpy.sums, got.sums)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bad_rows_give_the_reference_first_bad(dtype):
    x = make_rows(40, 40, dtype, seed=5)
    y = labels_with_gaps(40, 5, seed=5)
    matrix = make_rows(5, 40, torch.float64, seed=6)
    cases = {"zero row": [(23, 0.0)], "nan row": [(17, float("nan"))], "inf row": [(31, float("inf"))],
             "zero then nan": [(29, 0.0), (11, float("nan"))]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter's numpy sees the NaN/inf rows
        for what, bad in cases.items():
            xb = x.clone()
            for row, value in bad:
                xb[row] = 0.0
                xb[row, 3] = value
            expected = reference.class_sums(xb, y, 5).first_bad
            assert expected == min(r for r, _ in bad)
            assert triton_ops.class_sums(xb, y, 5, rows_per_item=8).first_bad == expected, what
            ok = reference.cross_reduce(xb, y, matrix)
            got = triton_ops.cross_reduce(xb, y, matrix)
            assert got.first_bad == ok.first_bad == expected, what
            finite = torch.isfinite(ok.correct)
            assert torch.allclose(got.correct[finite], ok.correct[finite], rtol=1e-5, atol=1e-6), what


def test_labels_out_of_range_are_input_errors():
    x = make_rows(10, 16, torch.float32, seed=1)
    y = torch.arange(10, device=DEVICE) % 3
    with pytest.raises(InputError, match="labels"):
        triton_ops.class_sums(x, y, 2)
    with pytest.raises(InputError, match="labels"):
        triton_ops.cross_reduce(x, y - 1, make_rows(3, 16, torch.float64, seed=2))
    with pytest.raises(InputError, match="key labels"):
        triton_ops.pairwise_class_sums(x, x, y, 2)
    with pytest.raises(InputError, match="metric"):
        triton_ops.pairwise_class_sums(x, x, y, 3, metric="manhattan")


def test_empty_chunks_return_empty_statistics():
    x = torch.zeros(0, 24, device=DEVICE)
    y = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    got = triton_ops.class_sums(x, y, 4)
    assert got.sums.shape == (4, 24) and float(got.sums.abs().sum()) == 0 and got.first_bad == -1
    cr = triton_ops.cross_reduce(x, y, torch.eye(4, 24, dtype=torch.float64))
    assert cr.correct.shape == (0,) and cr.rank.dtype == torch.int32 and cr.first_bad == -1
    pw = triton_ops.pairwise_class_sums(x, make_rows(5, 24, torch.float32, 1), torch.zeros(5, dtype=torch.int64), 4)
    assert pw.sums.shape == (0, 4) and pw.counts.dtype == torch.int64


# ---------------------------------------------------------------- cross reduce


def class_matrix(k, d, seed, duplicate=None):
    """(K, D) rows of very different norms (like class sums of classes of 1 to 10⁵ rows)."""
    m = make_rows(k, d, torch.float64, seed=seed, scale=1.0)
    m = m / m.norm(dim=1, keepdim=True)
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    m = m * torch.logspace(0, 5, k, dtype=torch.float64, device=DEVICE)[order.to(DEVICE)][:, None]
    if duplicate is not None:
        m[duplicate[1]] = m[duplicate[0]]
    return m


@pytest.mark.parametrize("dtype", ROW_DTYPES)
@pytest.mark.parametrize("n, d, k, with_cols, in_order", [(40, 40, 12, True, False), (33, 100, 40, False, False),
                                                           (21, 40, 24, True, True)])
def test_cross_reduce_matches_reference_and_definition(poisoned, dtype, n, d, k, with_cols, in_order):
    x = make_rows(n, d, dtype, seed=k + d)
    y = labels_with_gaps(n, k, seed=k)
    y[:4] = 2  # rows whose own text has an exact duplicate (class 2 = class 5): ties count as hits
    if in_order:  # a dataset stored class by class: no sort
        y = y.sort().values
    m = class_matrix(k, d, seed=d, duplicate=(2, 5))
    scale = valid = None
    if with_cols:
        scale = torch.rand(k, dtype=torch.float64, generator=torch.Generator().manual_seed(k)).to(DEVICE) + 0.5
        valid = torch.arange(k, device=DEVICE) % 4 != 1
        valid[k - 2] = False
    got = triton_ops.cross_reduce(x, y, m, scale, valid)
    ref = reference.cross_reduce(x, y, m, scale, valid)
    naive = naive_cross_reduce(x, y, m, scale, valid)
    assert poisoned
    for field in ("correct", "other_sum", "best_other", "sq_norm"):
        assert getattr(got, field).dtype == torch.float64 and getattr(got, field).shape == (n,), field
    assert got.rank.dtype == torch.int32 and got.first_bad == ref.first_bad == -1
    assert torch.equal(got.rank.cpu(), ref.rank.cpu()), "ranks differ from the reference"
    assert np.array_equal(got.rank.cpu().numpy(), naive["rank"]), "ranks differ from the definition"
    norms = m.norm(dim=1).cpu()
    own = norms[y.cpu()]
    scales = torch.ones(k, dtype=torch.float64) if scale is None else scale.cpu()
    assert_within(got.correct, ref.correct, REL[dtype] * own, "correct vs reference")
    assert_within(got.correct, naive["correct"], 1e-5 * own, "correct vs definition")
    assert_within(got.other_sum, ref.other_sum, REL[dtype] * norms.sum(), "other_sum vs reference")
    assert_within(got.other_sum, naive["other_sum"], 1e-5 * norms.sum(), "other_sum vs definition")
    big = float((norms * scales).max())
    expected_best = torch.as_tensor(naive["best_other"])
    assert torch.equal(torch.isinf(got.best_other.cpu()), torch.isinf(expected_best))
    finite = torch.isfinite(expected_best)
    assert_within(got.best_other.cpu()[finite], ref.best_other.cpu()[finite], REL[dtype] * big, "best_other")
    assert_within(got.best_other.cpu()[finite], expected_best[finite], 1e-5 * big, "best_other vs definition")
    assert_within(got.sq_norm, ref.sq_norm, 1e-6, "sq_norm")


def test_cross_reduce_single_column_has_no_best_other(poisoned):
    x = make_rows(19, 40, torch.float16, seed=8)
    y = torch.zeros(19, dtype=torch.int64, device=DEVICE)
    m = make_rows(1, 40, torch.float64, seed=9)
    got = triton_ops.cross_reduce(x, y, m)
    ref = reference.cross_reduce(x, y, m)
    assert torch.isinf(got.best_other).all() and (got.best_other < 0).all()
    assert (got.rank == 0).all() and float(got.other_sum.abs().sum()) == 0.0
    assert_within(got.correct, ref.correct, 2e-6 * float(m.norm()), "correct")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matrix_split_into_half_parts_recovers_fp32(dtype):
    m = class_matrix(30, 100, seed=4)
    m[7] = 0.0
    m[3, :50] *= 1e-6
    parts, unscale = matrix_parts(m, dtype)
    assert parts.dtype == dtype and parts.shape[1:] == m.shape
    rebuilt = parts.double().sum(0)
    if unscale is not None:
        rebuilt = rebuilt * unscale.double()[:, None]
    m32 = m.float().double()
    row_max = m32.abs().amax(1, keepdim=True).clamp_min(1e-300)
    assert float(((rebuilt - m32).abs() / row_max).max()) < 2 ** -21
    assert float(rebuilt[7].abs().sum()) == 0.0


# ---------------------------------------------------------------- pairwise


PAIRWISE_CASES = [  # dtype, metric, p, key_splits, zero_eps
    (torch.float32, "euclidean", 1.0, 1, 0.0),
    (torch.float16, "euclidean", 1.0, 3, 1e-3),
    (torch.bfloat16, "euclidean", 2.5, 2, 1e-3),
    (torch.float64, "euclidean", 0.5, 1, 0.0),
    (torch.float32, "cosine", 0.0, 2, 1e-4),
    (torch.float16, "cosine", 1.0, 1, 1e-4),
]


@pytest.mark.parametrize("dtype, metric, p, splits, zero_eps", PAIRWISE_CASES)
def test_pairwise_matches_reference_and_definition(poisoned, dtype, metric, p, splits, zero_eps):
    n, d, c = 37, 40, 6
    keys = make_rows(n, d, dtype, seed=11)
    keys[30] = keys[4]  # a duplicate row: distance 0, dropped by zero_eps
    labels = labels_with_gaps(n, c, seed=12)
    queries = keys[9:26]  # queries are keys 9..25: self-pairs excluded by global index
    args = dict(metric=metric, p=p, query_offset=9, key_offset=0, zero_eps=zero_eps)
    got = triton_ops.pairwise_class_sums(queries, keys, labels, c, key_splits=splits, **args)
    ref = reference.pairwise_class_sums(queries, keys, labels, c, **args)
    sums64, counts64 = naive_pairwise(queries, keys, labels, c, metric, p, 9, 0, zero_eps)
    assert poisoned
    assert got.sums.dtype == torch.float64 and got.counts.dtype == torch.int64 and got.sums.shape == (17, c)
    assert torch.equal(got.counts.cpu(), ref.counts.cpu()), "pair counts differ from the reference"
    assert np.array_equal(got.counts.cpu().numpy(), counts64), "pair counts differ from the definition"
    assert int(got.counts[:, c - 2].sum()) == 0 and float(got.sums[:, c - 2].abs().sum()) == 0.0
    per_term = 2.0 ** max(p, 1.0) + (20.0 if p == 0 else 0.0)
    tol = torch.as_tensor(counts64, dtype=torch.float64).clamp_min(1) * per_term
    assert_within(got.sums, ref.sums, REL[dtype] * 5 * tol, "sums vs reference")
    assert_within(got.sums, sums64, 1e-5 * tol, "sums vs float64 definition")


def test_pairwise_euclidean_silhouette_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    n, d, c = 48, 40, 4
    x = make_rows(n, d, torch.float32, seed=21, scale=1.0)
    y = torch.arange(n, device=DEVICE) % c
    x = x + 2.0 * torch.nn.functional.one_hot(y, d).float()  # separable-ish clusters
    pw = triton_ops.pairwise_class_sums(x, x, y, c, metric="euclidean", p=1.0, query_offset=0, key_offset=0,
                                        zero_eps=0.0, key_splits=2)
    sums, counts = pw.sums.cpu().numpy(), pw.counts.cpu().numpy()
    mean = sums / np.maximum(counts, 1)
    yy = y.cpu().numpy()
    a = mean[np.arange(n), yy]
    other = np.where(np.arange(c)[None, :] == yy[:, None], np.inf, mean)
    b = other.min(1)
    ours = float(np.mean((b - a) / np.maximum(a, b)))
    expected = metrics.silhouette_score(unit64(x), yy, metric="euclidean")
    assert abs(ours - expected) < 1e-5, (ours, expected)


# ---------------------------------------------------------------- all pairs of one row set (symmetric tiles)

ALL_PAIRS_CASES = [  # dtype, tile, cosine p
    (torch.float32, 24, 1.0),  # tiles of 24 rows in blocks of 16: part blocks on both sides of a tile pair
    (torch.float16, 16, 0.0),
    (torch.bfloat16, 40, 0.5),
    (torch.float64, 64, -1.0),  # one diagonal tile pair holds every pair
]


def all_pairs_rows(dtype, n=45, d=40, c=9):
    """Rows in label order nowhere (the launcher sorts them); several class runs per 16-row block, a one-row
    class, an empty class, an exact duplicate (cosine distance 0) and a near-duplicate (recomputed in float64)."""
    x = make_rows(n, d, torch.float64, seed=41)
    labels = labels_with_gaps(n, c, seed=42)
    x[30], labels[30] = x[4], labels[4]
    g = torch.Generator().manual_seed(43)
    x[31], labels[31] = x[5] + 3e-2 * torch.randn(d, generator=g, dtype=torch.float64).to(DEVICE), labels[5]
    return x.to(dtype), labels


@pytest.mark.parametrize("dtype, tile, p", ALL_PAIRS_CASES)
def test_all_pairs_matches_reference_and_definition(dtype, tile, p):
    c = 9
    x, labels = all_pairs_rows(dtype, c=c)
    args = dict(euclidean=True, cosine_p=p, zero_eps=1e-6, tile=tile)
    got = triton_ops.all_pairs_class_sums(x, labels, c, **args)
    ref = reference.all_pairs_class_sums(x, labels, c, **args)
    e64, pairs64 = naive_pairwise(x, x, labels, c, "euclidean", 1.0, 0, 0, 0.0)
    c64, k64 = naive_pairwise(x, x, labels, c, "cosine", p, 0, 0, 1e-6)
    assert got.euclidean.dtype == got.cosine.dtype == torch.float64 and got.cosine_pairs.dtype == torch.int64
    assert np.array_equal(got.cosine_pairs.cpu().numpy(), k64), "cosine pair counts differ from the definition"
    assert torch.equal(got.cosine_pairs.cpu(), ref.cosine_pairs.cpu()), "cosine pair counts differ from the reference"
    assert int(k64.sum()) == 45 * 44 - 2, "the duplicate pair is left out of the cosine sums, both ways"
    count = torch.as_tensor(pairs64, dtype=torch.float64).clamp_min(1)
    # float32 unit rows carry ~1e-7 in each distance: a term moves by that times |d(term)/dd|, large for
    # log d and d^p, p < 0, at the near-duplicate
    rate = 1e-7 if dtype != torch.float64 else 1e-13
    slack = rate * 4 * torch.as_tensor(cosine_term_slopes(x, labels, c, p, 1e-6)) + 1e-9 * count
    assert_within(got.euclidean, e64, 1e-6 * count, "Euclidean sums vs float64 definition")
    assert_within(got.euclidean, ref.euclidean, 1e-6 * count, "Euclidean vs reference")
    assert_within(got.cosine, c64, slack, "cosine sums vs float64 definition")
    assert_within(got.cosine, ref.cosine, slack, "cosine vs reference")


def cosine_term_slopes(x, labels, c, p, zero_eps):
    """(n, c) Σ_j |d(term)/dd| over the kept cosine pairs of each cell: how far float32 rounding moves its sum."""
    dist = naive_distances(x, x, "cosine")
    keep = dist > zero_eps
    np.fill_diagonal(keep, False)
    d = np.where(keep, dist, 1.0)
    slope = np.where(keep, 1.0 / d if p == 0 else np.abs(p) * d ** (p - 1.0), 0.0)
    return slope @ np.eye(c)[labels.cpu().numpy()]


def test_all_pairs_units_of_tile_pairs_add_up_to_the_whole():
    """The `pairs` of a distributed sweep: any partition of the tile pairs sums to the whole; each launch is told."""
    c = 9
    x, labels = all_pairs_rows(torch.float32, c=c)
    whole = triton_ops.all_pairs_class_sums(x, labels, c, euclidean=True, cosine_p=1.0, zero_eps=1e-6, tile=16)
    todo = reference.tile_pairs(45, 16)
    seen = []
    parts = [triton_ops.all_pairs_class_sums(x, labels, c, euclidean=True, cosine_p=1.0, zero_eps=1e-6, tile=16,
                                             pairs=unit, progress=lambda done, total: seen.append((done, total)))
             for unit in (todo[:2], todo[2:5], todo[5:])]
    assert seen == [(1, 2), (2, 2), (1, 3), (2, 3), (3, 3), (1, 1)]
    for field in ("euclidean", "cosine", "cosine_pairs"):
        total = sum(getattr(part, field) for part in parts)
        assert_within(total, getattr(whole, field), 1e-12 * (1 + getattr(whole, field).double().abs()), field)
    with pytest.raises(ValueError, match="is not a tile pair"):
        triton_ops.all_pairs_class_sums(x, labels, c, tile=16, pairs=[(8, 16)])


def test_all_pairs_euclidean_only_and_empty_rows():
    x, labels = all_pairs_rows(torch.float32, c=9)
    got = triton_ops.all_pairs_class_sums(x, labels, 9, euclidean=True, cosine_p=None, tile=32)
    assert got.cosine is None and got.cosine_pairs is None
    e64, _ = naive_pairwise(x, x, labels, 9, "euclidean", 1.0, 0, 0, 0.0)
    assert_within(got.euclidean, e64, 1e-6 * (1 + np.abs(e64)), "Euclidean sums")
    empty = triton_ops.all_pairs_class_sums(x[:0], labels[:0], 9, euclidean=False, cosine_p=1.0)
    assert empty.euclidean is None and empty.cosine.shape == (0, 9) and empty.cosine_pairs.shape == (0, 9)


# ---------------------------------------------------------------- dispatch and the engine


def test_get_backend_triton_binds_these_launchers():
    be = get_backend("triton", DEVICE)
    assert be.name == "triton"
    assert be.class_sums is triton_ops.class_sums
    assert be.cross_reduce is triton_ops.cross_reduce
    assert be.pairwise_class_sums is triton_ops.pairwise_class_sums
    assert be.all_pairs_class_sums is triton_ops.all_pairs_class_sums
    assert be.all_pairs_class_sums.__wrapped__ is not reference.all_pairs_class_sums


def test_every_score_on_triton_equals_torch():
    scores = pytest.importorskip("iimm.engine.scoring.scores")
    g = np.random.default_rng(0)
    n, d, c = 90, 40, 7
    labels = np.arange(n) % c
    labels[labels == 5] = 4  # an empty class
    labels[7] = 5  # ... now with one row
    image = (g.normal(size=(n, d)) + 1.5 * np.eye(c, d)[labels]).astype(np.float16)
    text = g.normal(size=(c, d)) + np.eye(c, d)
    es = EmbeddingSet.from_arrays(image, labels, text)
    keys = [k for k in scores.SCORES]
    torch_report = scores.score(es, keys, backend="torch", chunk_rows=32, device=str(DEVICE))
    triton_report = scores.score(es, keys, backend="triton", chunk_rows=32, device=str(DEVICE))
    assert set(triton_report.scores) == set(keys)
    for key in keys:
        a, b = triton_report.scores[key], torch_report.scores[key]
        assert math.isfinite(a) and math.isfinite(b), key
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (key, a, b)


def test_kernels_in_a_fresh_interpreter_process():
    """When triton was imported before this file could set TRITON_INTERPRET, run every test above in a fresh process."""
    if not RUN_IN_SUBPROCESS:
        return  # the tests above ran in this process
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-k", "not fresh_interpreter_process"], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter accepts code the GPU compiler rejects: build one variant of each kernel for sm_90."""
    if HAS_GPU:
        return  # every test above already compiled and ran the kernels on this GPU
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import iimm.engine\nfrom iimm.kernels import triton_ops\n"
            "print('\\n'.join(triton_ops.compile_for(90, quick=True)))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    built = done.stdout.splitlines()
    for kernel in ("_class_sums_kernel", "_merge_items_kernel", "_cross_reduce_kernel", "_pairwise_kernel",
                   "_row_norms_kernel", "_all_pairs_kernel"):
        assert any(line.startswith(kernel) for line in built), (kernel, built)


def test_pairwise_euclidean_near_duplicates_match_float64(poisoned):
    """d² from dot products loses ~1e-7 absolute; near-duplicate pairs are recomputed from their rows."""
    n, d, c = 40, 40, 3
    base = make_rows(n, d, torch.float32, seed=31)
    g = torch.Generator().manual_seed(32)
    base[20:30] = base[:10] + 1e-3 * torch.randn(10, d, generator=g).to(DEVICE)  # d ≈ 1e-3 · √D / ‖x‖
    base[30:35] = base[10:15]  # exact duplicates: distance 0
    labels = torch.arange(n, device=DEVICE) % c
    args = dict(metric="euclidean", p=1.0, query_offset=0, key_offset=0, zero_eps=1e-7)
    got = triton_ops.pairwise_class_sums(base, base, labels, c, key_splits=2, **args)
    ref = reference.pairwise_class_sums(base, base, labels, c, **args)
    sums64, counts64 = naive_pairwise(base, base, labels, c, "euclidean", 1.0, 0, 0, 1e-7)
    assert np.array_equal(got.counts.cpu().numpy(), counts64) and torch.equal(got.counts.cpu(), ref.counts.cpu())
    assert_within(got.sums, sums64, 1e-6 * torch.as_tensor(counts64).double().clamp_min(1), "sums vs float64")
    assert_within(got.sums, ref.sums, 1e-6 * torch.as_tensor(counts64).double().clamp_min(1), "sums vs reference")


def test_interpreter_switched_after_import_is_a_one_line_error(monkeypatch):
    """Triton fixes interpreted-or-compiled at import; TRITON_INTERPRET changed later is refused, not misread."""
    if HAS_GPU:
        return  # compiled kernels on a GPU: nothing was interpreted
    from iimm.errors import BackendUnavailable

    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET is unset now but was set when triton was imported"):
        triton_ops.class_sums(make_rows(4, 16, torch.float32, seed=1), torch.zeros(4, dtype=torch.int64), 1)
