"""Every score against the naive float64 definitions, scikit-learn and the hand-checked example."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, silhouette_score

import naive_scores as naive
from iimm.engine import SCORES, EmbeddingSet, InputError, score
from synthetic import structured

BACKENDS = ["torch", "numba"]
ALL = list(SCORES)


def scores_of(x, y, t, backend="torch", **kw):
    return score(EmbeddingSet.from_arrays(x, y, t), None, backend=backend, **kw).scores


def test_hand_checked_example():
    s = math.sqrt(0.5)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])
    got = scores_of(x, np.array([0, 1, 0]), np.eye(2))
    assert got["iimm_intra_image"] == pytest.approx(math.sqrt(2) / 3, abs=1e-12)
    assert got["iimm_inter_modal"] == pytest.approx(math.sqrt(2) / 6, abs=1e-12)
    assert got["iimm"] == pytest.approx(math.sqrt(2) / 4, abs=1e-12)
    assert got["gap"] == pytest.approx(0.097631, abs=1e-6)
    assert got["uniformity_text"] == pytest.approx(0.176777, abs=1e-6)
    assert got["inter_text"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,n,d,c", [(0, 200, 37, 6), (1, 150, 100, 3), (2, 90, 64, 12)])
def test_every_score_matches_naive_definition(backend, seed, n, d, c):
    x, y, t = structured(seed, n, d, c)
    got = scores_of(x, y, t, backend)
    want = naive.all_scores(x, y, t)
    assert set(got) == set(ALL)
    for key in ALL:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key


@pytest.mark.parametrize("p", [2.0, 0.5, 0.0, -1.0])
def test_gensil_power_means(p):
    x, y, t = structured(3, 120, 40, 5)
    got = score(EmbeddingSet.from_arrays(x, y, t), ["gensil"], backend="torch", gensil_p=p).scores["gensil"]
    assert got == pytest.approx(naive.gensil(x, y, p), rel=1e-6, abs=1e-7)


def test_gensil_p1_equals_cosine_silhouette_without_duplicates():
    x, y, t = structured(4, 150, 33, 5, duplicates=0)
    got = scores_of(x, y, t)
    assert got["gensil"] == pytest.approx(got["silhouette_class"], rel=1e-7, abs=1e-9)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_silhouettes_match_scikit_learn():
    x, y, t = structured(5, 300, 48, 7)
    got = scores_of(x, y, t)
    xu, tu = naive.unit(x), naive.unit(t)
    assert got["silhouette_class"] == pytest.approx(silhouette_score(xu, y, metric="cosine"), abs=1e-6)
    assert got["silhouette_class_euclidean"] == pytest.approx(silhouette_score(xu, y, metric="euclidean"), abs=1e-6)
    stacked = np.vstack([xu, tu])
    layout = np.r_[np.zeros(len(x)), np.ones(len(t))]
    assert got["silhouette_modality"] == pytest.approx(silhouette_score(stacked, layout, metric="cosine"), abs=1e-6)
    pred = (xu @ tu.T).argmax(1)
    assert got["zeroshot_balanced"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


def test_float16_input_matches_float64_definition():
    x, y, t = structured(6, 160, 50, 4, dtype=np.float16)
    got = scores_of(x, y, t)
    want = naive.all_scores(x.astype(np.float64), y, t)
    for key in ALL:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunk_size_invariance(chunk_rows):
    x, y, t = structured(7, 130, 24, 5)
    whole = scores_of(x, y, t, chunk_rows=10_000)
    got = scores_of(x, y, t, chunk_rows=chunk_rows)
    for key in ALL:
        assert got[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key  # fp32 gemv vs gemm rounding


def test_two_classes_one_row_each_plus_more():
    x = np.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.9, 0.1, 0.4]])
    y = np.array([0, 1, 0])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = scores_of(x, y, t)
    want = naive.all_scores(x, y, t)
    for key in ALL:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_one_class_gives_the_scores_that_need_one_and_refuses_the_rest():
    rng = np.random.default_rng(8)
    x, y, t = rng.normal(size=(20, 9)), np.zeros(20, np.int64), rng.normal(size=(1, 9))
    es = EmbeddingSet.from_arrays(x, y, t)
    got = score(es, ["iimm_intra_image", "acs", "gap", "zeroshot_top1", "silhouette_modality"], backend="torch").scores
    assert got["iimm_intra_image"] == pytest.approx(naive.intra(x), rel=1e-9)
    assert got["zeroshot_top1"] == 1.0
    assert got["silhouette_modality"] == pytest.approx(naive.silhouette_modality(x, t), rel=1e-9)
    for key in ["iimm", "iimm_inter_modal", "inter_text", "silhouette_class"]:
        with pytest.raises(InputError, match=f"{key} needs at least 2"):
            score(es, [key], backend="torch")


def test_quadratic_limit_samples_and_says_so():
    x, y, t = structured(9, 400, 20, 4)
    es = EmbeddingSet.from_arrays(x, y, t)
    report = score(es, ["silhouette_class_euclidean", "iimm"], backend="torch", quadratic_limit=150, seed=3)
    assert report.sample_rows == {"silhouette_class_euclidean": 150}
    assert any("sample of 150 of 400" in n for n in report.notes)
    idx = np.sort(np.random.default_rng(3).choice(400, 150, replace=False))
    want = silhouette_score(naive.unit(x[idx]), y[idx], metric="euclidean")
    assert report.scores["silhouette_class_euclidean"] == pytest.approx(want, abs=1e-6)
    assert report.scores["iimm"] == pytest.approx(naive.all_scores(x, y, t)["iimm"], rel=1e-6)


def test_explicit_sample_is_seeded():
    x, y, t = structured(10, 300, 16, 4)
    es = EmbeddingSet.from_arrays(x, y, t)
    a = score(es, ["gensil"], backend="torch", sample=100, seed=1).scores["gensil"]
    b = score(es, ["gensil"], backend="torch", sample=100, seed=1).scores["gensil"]
    c = score(es, ["gensil"], backend="torch", sample=100, seed=2).scores["gensil"]
    assert a == b and a != c


def test_duplicated_rows_everywhere():
    x, y, t = structured(11, 60, 12, 3, duplicates=0)
    x2, y2 = np.vstack([x, x]), np.r_[y, y]
    got = scores_of(x2, y2, t)
    want = naive.all_scores(x2, y2, t)
    for key in ALL:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key


def test_bad_rows_are_named():
    x, y, t = structured(12, 50, 8, 3)
    x[17] = 0.0
    with pytest.raises(InputError, match="row 17 is all zeros"):
        score(EmbeddingSet.from_arrays(x, y, t), ["iimm"], backend="torch", chunk_rows=8)
    x[17] = 1.0
    x[33, 2] = np.nan
    with pytest.raises(InputError, match="row 33 has NaN or Inf"):
        score(EmbeddingSet.from_arrays(x, y, t), ["iimm"], backend="torch", chunk_rows=8)


def test_baseline_keys_go_through_score_with_their_options():
    from iimm.engine.scoring.baselines import compute_transfer

    x, y, t = structured(13, 150, 24, 5)
    es = EmbeddingSet.from_arrays(x, y, t)
    report = score(es, ["iimm", "ncti", "leep", "logme"], backend="torch", logit_scale=50.0, baseline_sample=100)
    assert list(report.scores) == ["iimm", "logme", "leep", "ncti_sc", "ncti_cls", "ncti_nc"]
    direct = compute_transfer(es, ["logme", "leep", "ncti"], logit_scale=50.0, baseline_sample=100)
    for key, value in direct.scores.items():
        assert report.scores[key] == pytest.approx(value, rel=1e-12), key
    assert report.notes == direct.notes and any("100" in n for n in report.notes)
    assert report.scores["leep"] != score(es, ["leep"], backend="torch").scores["leep"]  # default scale is 100


def test_metric_groups():
    from iimm.engine.scoring.scores import resolve_keys
    from iimm.engine.scoring.baselines import TRANSFER_SCORES

    assert resolve_keys("all") == ALL
    assert resolve_keys("baselines") == list(TRANSFER_SCORES)
    assert resolve_keys("everything") == ALL + list(TRANSFER_SCORES)
    with pytest.raises(InputError, match="unknown metric 'nope'.*everything.*logme"):
        resolve_keys("iimm,nope")
    with pytest.raises(InputError, match=r"unknown metrics 'iim' \(did you mean 'iimm'\?\), "
                                         r"'silhoutte_class' \(did you mean 'silhouette_class'\?\);"):
        resolve_keys("iim,gap,silhoutte_class")
    with pytest.raises(InputError, match="no metric requested.*gensil.*logme.*ncti"):
        resolve_keys(" , ")
