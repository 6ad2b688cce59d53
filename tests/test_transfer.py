"""Transferability baselines against their published formulas written plainly (dense, float64),
scikit-learn / scipy where they have the same thing, and properties where no oracle is exact."""

import math

import numpy as np
import pytest
from scipy import linalg, optimize, stats
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mutual_info_score

from iimm.engine import EmbeddingSet, load_embeddings
from iimm.errors import InputError
from iimm.engine.scoring.baselines import (TRANSFER_SCORES, combine_ncti, compute_transfer, resolve_transfer_keys)
from iimm.engine.scoring.baseline_formulas import logme_rows, logme_streamed
from iimm.engine.scoring.baseline_stats import Chunk, GramStats, normalise_rows
from synthetic import structured

ALL = list(TRANSFER_SCORES)


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def compact(y):
    return np.unique(y, return_inverse=True)[1]


def run(x, y, t, keys=None, **kw):
    return compute_transfer(EmbeddingSet.from_arrays(x, y, t), keys, **kw).scores


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# --- plain implementations of the published formulas --------------------------------------------

def logme_evidence(f, y, alpha, beta):
    """log p(y | F, α, β) / N of the Bayesian linear model (You et al. 2021, eq. 2), dense."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * np.linalg.slogdet(a)[1]
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - n / 2 * math.log(2 * math.pi)) / n


def logme_by_optimiser(x, y):
    f, yc = unit(x), compact(y)
    values = []
    for c in range(yc.max() + 1):
        target = (yc == c).astype(float)
        res = optimize.minimize(lambda p: -logme_evidence(f, target, math.exp(p[0]), math.exp(p[1])), [0.0, 0.0],
                                method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-15, "maxiter": 20000})
        values.append(-res.fun)
    return float(np.mean(values))


def logme_fixed_point_dense(x, y):
    """The thuml/LogME fixed-point algorithm on a full SVD of F, iterated to convergence, exact log det."""
    f, yc = unit(x), compact(y)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-7
    u, sigma = u[:, keep], s[keep] ** 2
    out = []
    for c in range(yc.max() + 1):
        t_ = (yc == c).astype(float)
        z2 = (u.T @ t_) ** 2
        rest = t_ @ t_ - z2.sum()
        alpha = beta = 1.0
        for _ in range(100000):
            t = alpha / beta
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * z2 / (t + sigma) ** 2)
            r2 = np.sum(z2 / (1 + sigma / t) ** 2) + rest
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (r2 + 1e-5)
            if abs(alpha / beta - t) <= 1e-12 * t:
                break
        t = alpha / beta
        m2 = np.sum(sigma * z2 / (t + sigma) ** 2)
        r2 = np.sum(z2 / (1 + sigma / t) ** 2) + rest
        logdet = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * math.log(alpha)
        out.append((d / 2 * math.log(alpha) + n / 2 * math.log(beta) - logdet / 2 - beta / 2 * r2 - alpha / 2 * m2
                    - n / 2 * math.log(2 * math.pi)) / n)
    return float(np.mean(out))


def leep_dense(x, y, t, scale):
    theta = softmax(scale * unit(x) @ unit(t).T)
    n, c = theta.shape
    joint = np.zeros((c, c))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(0, keepdims=True)
    return float(np.mean([math.log(sum(cond[y[i], z] * theta[i, z] for z in range(c))) for i in range(n)]))


def nce_dense(x, y, t, scale):
    z = np.argmax(unit(x) @ unit(t).T * scale, axis=1)
    total = 0.0
    for zz in np.unique(z):
        pz = np.mean(z == zz)
        for yy in np.unique(y):
            pyz = np.mean((z == zz) & (y == yy))
            if pyz > 0:
                total += pyz * math.log(pyz / pz)
    return total


def hscore_dense(x, y):
    f = unit(x)

    def cov(a):
        a = a - a.mean(0)
        return a.T @ a / (len(a) - 1)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return float(np.trace(linalg.pinvh(cov(f)) @ cov(g)))


def gbc_dense(x, y, kind):
    f = unit(x)
    classes = np.unique(y)
    mean = {c: f[y == c].mean(0) for c in classes}
    var = {c: np.maximum(f[y == c].var(0), 1e-4) for c in classes}
    total = 0.0
    for c1 in classes:
        for c2 in classes:
            if c1 == c2:
                continue
            s1, s2 = var[c1], var[c2]
            if kind == "spherical":
                s1, s2 = s1.mean(), s2.mean()
            avg = (s1 + s2) / 2
            bd = np.sum((mean[c1] - mean[c2]) ** 2 / avg) / 8 + 0.5 * (
                np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2)))
            total += math.exp(-bd)
    return -total


def transrate_dense(x, y, eps=1e-4):
    def rate(z):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]
    z = unit(x)
    z = z - z.mean(0)
    classes = np.unique(y)
    return rate(z) - np.mean([rate(z[y == c]) for c in classes])


def sfda_reference(x, y):
    """TencentARC/SFDA's SFDA_Score, dense, including its in-place ConfMix write into X."""
    X, yc = unit(x), compact(y)
    n, d = X.shape
    k = yc.max() + 1
    priors = np.bincount(yc) / n

    def fit(X, shrinkage):
        means = np.stack([X[yc == c].mean(0) for c in range(k)])
        sw = sum(priors[c] * np.cov(X[yc == c].T, bias=True).reshape(d, d) for c in range(k))
        if shrinkage is None:
            v = sw.sum(1)
            for _ in range(3):
                w = sw @ v
                w /= np.linalg.norm(w)
                v = sw @ w
                v /= np.linalg.norm(v)
            shrinkage = max(math.exp(-5 * (v @ sw @ w)), 1e-10)
        shrink = lambda m: (1 - shrinkage) * m + shrinkage * np.trace(m) / d * np.eye(d)
        st = shrink(np.cov(X.T, bias=True))
        evals, evecs = linalg.eigh(st - shrink(sw), shrink(sw))
        evecs = evecs[:, np.argsort(evals)[::-1]]
        coef = means @ evecs @ evecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        return softmax(X @ coef.T + intercept), means, shrinkage

    prob, means, shrinkage = fit(X, None)
    prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
    others = (means.sum(0) - means) / (k - 1)
    for c in range(k):
        idx = np.where(yc == c)[0]
        p = prob[idx, c][:, None]
        X[idx] = p * X[idx] + (1 - p) * others[c]
    prob, _, _ = fit(X, shrinkage)
    return float(prob[np.arange(n), yc].mean())


def ncti_reference(x, y):
    """BUserName/NCTI's NCTI_Score with scikit-learn's PCA and LDA (exact PCA solver)."""
    X, yc = unit(x), compact(y)
    pca = PCA(n_components=min(64, *X.shape), svd_solver="full")
    X = pca.fit_transform(X)
    temp = max(math.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    clf = LinearDiscriminantAnalysis(solver="eigen", shrinkage=temp)
    low = clf.fit_transform(X, yc)
    low = low - low.mean(0)
    pred = clf.predict_proba(X)
    nuc = sum(np.linalg.norm(pred[yc == c], ord="nuc") for c in range(yc.max() + 1))
    return {"ncti_sc": np.linalg.norm(low, ord="nuc"), "ncti_cls": pred[np.arange(len(yc)), yc].mean(),
            "ncti_nc": math.log(nuc)}


def sparsemax(z):
    zs = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    kz = k[1 + k * zs > np.cumsum(zs)].max()
    return np.maximum(z - (zs[:kz].sum() - 1) / kz, 0)


def emms_dense(x, y, label_sets, rounds=100):
    """EMMS's alternating weighted least squares on the dense (N, D) and (N, L, K) arrays."""
    f = unit(x)
    xs = (f - f.mean(0)) / (f.std(0) + 1e-8)
    ys = np.stack([np.asarray(ls, float)[y] for ls in label_sets], axis=2)
    ys = (ys - ys.mean(0)) / (ys.std(0) + 1e-8)
    n, width, k = ys.shape
    lam = np.full(k, 1.0 / k)
    for _ in range(rounds):
        w = np.linalg.lstsq(xs, ys @ lam, rcond=None)[0]
        new = sparsemax(np.linalg.lstsq(ys.reshape(n * width, k), (xs @ w).reshape(-1), rcond=None)[0])
        moved = np.max(np.abs(new - lam))
        lam = new
        if moved <= 1e-12:
            break
    w = np.linalg.lstsq(xs, ys @ lam, rcond=None)[0]
    return -np.sum((xs @ w - ys @ lam) ** 2) / (n * width)


# --- data -----------------------------------------------------------------------------------------

CASES = {"n>d": (0, 240, 37, 6), "n<d": (1, 40, 57, 5), "many-classes": (2, 300, 20, 12),
         "anisotropic": (3, 260, 24, 5)}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    seed, n, d, c = CASES[request.param]
    x, y, t = structured(seed, n, d, c, noise=2.0, dtype=np.float64)
    if request.param == "anisotropic":      # per-dimension scales over 4 decades: Cov f spans 8
        x = x * np.logspace(0, -4, d)
    return request.param, x, y, t, run(x, y, t)


def test_registry_keys_and_aliases():
    assert ALL == ["logme", "leep", "nce", "hscore", "gbc_spherical", "gbc_diagonal", "sfda", "transrate",
                   "ncti_sc", "ncti_cls", "ncti_nc", "emms"]
    assert resolve_transfer_keys("ncti,leep") == ["leep", "ncti_sc", "ncti_cls", "ncti_nc"]
    assert all(s.description and "\n" not in s.description for s in TRANSFER_SCORES.values())
    with pytest.raises(InputError, match="unknown baseline 'logmee'"):
        resolve_transfer_keys(["logmee"])


def test_logme_follows_the_fixed_point_algorithm(case):
    _, x, y, t, got = case
    assert got["logme"] == pytest.approx(logme_fixed_point_dense(x, y), rel=1e-8, abs=1e-9)


def test_logme_maximises_the_evidence():
    # No one-row class: there the evidence grows as α → ∞ and the reference's ε = 1e-5 caps α.
    x, y, t = structured(15, 240, 29, 5, noise=2.0, singleton=False)
    assert run(x, y, t, ["logme"])["logme"] == pytest.approx(logme_by_optimiser(x, y), rel=1e-9)


@pytest.mark.parametrize("seed,n,d", [(3, 300, 24), (4, 20, 48), (5, 48, 48)])
def test_logme_streamed_and_in_memory_paths_agree(seed, n, d):
    x, y, _ = structured(seed, n, d, 4, noise=1.5)
    f = unit(x)
    present, yc = np.unique(y, return_inverse=True)
    stats = GramStats(4, d)
    stats.update(Chunk(f, y, 0))
    assert logme_streamed(stats, present) == pytest.approx(logme_rows(f, yc, len(present)), rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("scale", [100.0, 7.5])
def test_leep_and_nce_match_dense_formulas_and_scikit_learn(case, scale):
    _, x, y, t, _ = case
    got = run(x, y, t, ["leep", "nce"], logit_scale=scale)
    assert got["leep"] == pytest.approx(leep_dense(x, y, t, scale), rel=1e-10)
    assert got["nce"] == pytest.approx(nce_dense(x, y, t, scale), rel=1e-10, abs=1e-12)
    z = np.argmax(unit(x) @ unit(t).T, axis=1)
    h_y = stats.entropy(np.bincount(y) / len(y))
    assert got["nce"] == pytest.approx(mutual_info_score(y, z) - h_y, rel=1e-9, abs=1e-12)


def test_leep_of_a_uniform_classifier_is_the_mean_log_class_frequency():
    x, y, t = structured(6, 150, 16, 5)
    same = np.tile(t[:1], (5, 1))                   # identical prompts: θ = 1/C for every row
    got = run(x, y, same, ["leep"])["leep"]
    freq = np.bincount(y) / len(y)
    assert got == pytest.approx(np.mean(np.log(freq[y])), rel=1e-12)
    y_bal = np.repeat(np.arange(4), 30)
    x_bal = np.random.default_rng(0).normal(size=(120, 16))
    assert run(x_bal, y_bal, np.tile(t[:1], (4, 1)), ["leep"])["leep"] == pytest.approx(math.log(1 / 4), rel=1e-12)


def test_hscore_gbc_transrate_match_reference_code(case):
    _, x, y, t, got = case
    assert got["hscore"] == pytest.approx(hscore_dense(x, y), rel=1e-7)
    assert got["gbc_spherical"] == pytest.approx(gbc_dense(x, y, "spherical"), rel=1e-9, abs=1e-14)
    assert got["gbc_diagonal"] == pytest.approx(gbc_dense(x, y, "diagonal"), rel=1e-9, abs=1e-14)
    assert got["transrate"] == pytest.approx(transrate_dense(x, y), rel=1e-9)


def test_sfda_matches_reference_code(case):
    _, x, y, t, got = case
    assert got["sfda"] == pytest.approx(sfda_reference(x, y), rel=1e-8)


@pytest.mark.filterwarnings("ignore:Only one sample available")
def test_ncti_parts_match_scikit_learn_pipeline(case):
    _, x, y, t, got = case
    want = ncti_reference(x, y)
    for key in ("ncti_sc", "ncti_cls", "ncti_nc"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_emms_matches_alternating_least_squares(case):
    _, x, y, t, got = case
    assert got["emms"] == pytest.approx(emms_dense(x, y, [unit(t)]), rel=1e-7, abs=1e-10)
    xs = unit(x)
    xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-8)
    ys = unit(t)[y]
    ys = (ys - ys.mean(0)) / (ys.std(0) + 1e-8)
    fit = LinearRegression(fit_intercept=False).fit(xs, ys)
    assert got["emms"] == pytest.approx(-np.mean((fit.predict(xs) - ys) ** 2), rel=1e-6, abs=1e-10)


def test_emms_with_several_encoders():
    x, y, t = structured(7, 260, 30, 6, noise=2.0)
    rng = np.random.default_rng(1)
    extra = [t @ rng.normal(size=(30, 30)), rng.normal(size=(6, 30))]
    es = EmbeddingSet.from_arrays(x, y, t)
    got = compute_transfer(es, ["emms"], text_encoders=extra).scores["emms"]
    assert got == pytest.approx(emms_dense(x, y, [unit(t)] + extra), rel=1e-7)
    with pytest.raises(InputError, match="30"):
        compute_transfer(es, ["emms"], text_encoders=[rng.normal(size=(6, 12))])


def test_separable_features_beat_random_ones_on_every_score():
    rng = np.random.default_rng(8)
    c, d, per = 5, 24, 40
    y = np.repeat(np.arange(c), per)
    centres = np.eye(d)[:c] * 3.0
    sep = centres[y] + 0.15 * rng.normal(size=(len(y), d))
    rnd = rng.normal(size=(len(y), d))
    t = centres + 0.3 * rng.normal(size=(c, d))
    good, bad = run(sep, y, t), run(rnd, y, t)
    for key in ALL:
        if key == "ncti_nc":     # enters NCTI with a minus sign: lower is better
            assert good[key] < bad[key], key
        else:
            assert good[key] > bad[key], key
    ncti = combine_ncti({"sep": good, "rnd": bad})
    assert ncti["sep"] > ncti["rnd"]


def test_scores_are_invariant_to_row_order_and_chunking(case):
    _, x, y, t, got = case
    perm = np.random.default_rng(9).permutation(len(y))
    for kw in ({"chunk_rows": 7}, {"chunk_rows": 64}, {"chunk_rows": 10 ** 6}):
        again = run(x[perm], y[perm], t, **kw)
        for key in ALL:
            assert again[key] == pytest.approx(got[key], rel=1e-8, abs=1e-11), (key, kw)


def test_sharded_rows_equal_one_block(case):
    _, x, y, t, got = case
    cut = len(y) // 3
    sharded = EmbeddingSet([x[:cut], x[cut:]], y, t)
    again = compute_transfer(sharded, chunk_rows=50).scores
    for key in ALL:
        assert again[key] == pytest.approx(got[key], rel=1e-8, abs=1e-11), key


def test_gram_stats_merge_and_state_dict():
    x, y, _ = structured(10, 200, 19, 5, dtype=np.float16)
    f = normalise_rows(x)
    whole, a, b = GramStats(5, 19), GramStats(5, 19), GramStats(5, 19)
    whole.update(Chunk(f, y, 0))
    a.update(Chunk(f[:77], y[:77], 0))
    b.update(Chunk(f[77:], y[77:], 77))
    merged = GramStats(5, 19).load_state_dict(a.state_dict()).merge(b)
    for name, value in whole.state_dict().items():
        np.testing.assert_allclose(merged.state_dict()[name], value, rtol=1e-10, atol=1e-12)
    centred = f - f.mean(0)
    np.testing.assert_allclose(whole.scatter, centred.T @ centred, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.class_sq_dev[2], ((f[y == 2] - f[y == 2].mean(0)) ** 2).sum(0), atol=1e-12)
    light = GramStats(5, 19, with_scatter=False)
    light.update(Chunk(f[:50], y[:50], 0))
    light.update(Chunk(f[50:], y[50:], 50))
    assert light.scatter.shape == (0, 0)
    for name in ("count", "class_sum", "class_sq_dev"):
        np.testing.assert_allclose(getattr(light, name), getattr(whole, name), rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="same task"):
        GramStats(4, 19).load_state_dict(whole.state_dict())


def test_transrate_in_several_class_groups_equals_one_group():
    x, y, t = structured(11, 200, 16, 6)
    es = EmbeddingSet.from_arrays(x, y, t)
    one = compute_transfer(es, ["transrate"])
    split = compute_transfer(es, ["transrate"], gram_budget_bytes=2 * 8 * 16 * 16)
    assert split.scores["transrate"] == pytest.approx(one.scores["transrate"], rel=1e-12)
    assert any("3 groups" in note for note in split.notes)


def test_no_score_mutates_its_inputs(tmp_path):
    x, y, t = structured(12, 180, 21, 5)
    extra = [np.random.default_rng(2).normal(size=(5, 21))]
    copies = [a.copy() for a in (x, y, t, extra[0])]
    es = EmbeddingSet.from_arrays(x, y, t)
    text_before = es.text.copy()
    compute_transfer(es, text_encoders=extra)
    for before, after in zip(copies, (x, y, t, extra[0])):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(es.text, text_before)
    folder = tmp_path / "emb"
    folder.mkdir()
    for name, arr in (("image", x), ("label", y), ("text", t)):
        np.save(folder / f"{name}.npy", arr)
    mapped = load_embeddings(folder)            # read-only memory map: a write would raise
    assert compute_transfer(mapped).scores == pytest.approx(compute_transfer(es).scores, rel=1e-9)


@pytest.mark.filterwarnings("ignore:Only one sample available")
def test_sample_is_seeded_and_reported():
    x, y, t = structured(13, 400, 18, 4)
    es = EmbeddingSet.from_arrays(x, y, t)
    res = compute_transfer(es, ["ncti", "logme"], baseline_sample=150, seed=3)
    assert any("sample of 150 of 400 rows (seed 3)" in note for note in res.notes)
    sub = es.sample(150, 3)
    want = ncti_reference(np.asarray(sub.image_blocks[0]), sub.label)
    for key in ("ncti_sc", "ncti_cls", "ncti_nc"):
        assert res.scores[key] == pytest.approx(want[key], rel=1e-6)
    assert res.scores["logme"] == pytest.approx(logme_fixed_point_dense(x, y), rel=1e-8)   # N ≥ D: all rows
    again = compute_transfer(es, ["ncti"], baseline_sample=150, seed=3)
    assert again.scores["ncti_sc"] == res.scores["ncti_sc"]


def test_single_key_compute_and_progress_stages():
    x, y, t = structured(16, 120, 10, 4)
    es = EmbeddingSet.from_arrays(x, y, t)
    value, notes = TRANSFER_SCORES["sfda"].compute(es, chunk_rows=50)
    assert value == pytest.approx(sfda_reference(x, y), rel=1e-8)
    stages = []
    compute_transfer(es, ["sfda", "leep"], chunk_rows=50, progress=lambda *a: stages.append(a))
    assert [s for s in stages if s[1] == s[2]] == [(f"baselines pass {k}", 120, 120) for k in (1, 2, 3)]
    assert not any("logit_scale" in note for note in notes)      # no LEEP/NCE, no note on them


def test_combine_ncti_min_max_normalises_across_models():
    parts = {"a": {"ncti_sc": 10.0, "ncti_cls": 0.5, "ncti_nc": 2.0},
             "b": {"ncti_sc": 20.0, "ncti_cls": 0.9, "ncti_nc": 3.0},
             "c": {"ncti_sc": 15.0, "ncti_cls": 0.7, "ncti_nc": 2.0}}
    got = combine_ncti(parts)
    assert got["a"] == pytest.approx(0.0 + 0.0 - 0.0)
    assert got["b"] == pytest.approx(1.0 + 1.0 - 1.0)
    assert got["c"] == pytest.approx(0.5 + 0.5 - 0.0)
    flat = combine_ncti({"a": {**parts["a"], "ncti_nc": 1.0}, "b": {**parts["b"], "ncti_nc": 1.0}})
    assert flat == {"a": 0.0, "b": 2.0}
    with pytest.raises(InputError, match="at least 2"):
        combine_ncti({"a": parts["a"]})
    with pytest.raises(InputError, match="ncti_nc"):
        combine_ncti({"a": parts["a"], "b": {"ncti_sc": 1.0, "ncti_cls": 1.0}})


def test_bad_inputs_are_one_line_input_errors():
    x, y, t = structured(14, 60, 8, 3, singleton=False, empty=False)
    with pytest.raises(InputError, match="at least 2 classes with rows") as one_class:
        run(x, np.zeros_like(y), t)
    assert "\n" not in str(one_class.value)
    bad = x.copy()
    bad[17] = 0
    with pytest.raises(InputError, match="row 17 is all zeros"):
        run(bad, y, t, ["hscore"], chunk_rows=5)
    bad[17] = np.nan
    with pytest.raises(InputError, match="row 17 has NaN"):
        run(bad, y, t, ["ncti"])
    with pytest.raises(InputError, match="logit scale"):
        run(x, y, t, ["leep"], logit_scale=0.0)
    with pytest.raises(InputError, match="baseline-sample"):
        run(x, y, t, ["ncti"], baseline_sample=1)


def test_collapsed_classes():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(3, 9))[y]                  # every class one repeated point
    t = rng.normal(size=(3, 9))
    for key in ("sfda", "ncti"):
        with pytest.raises(InputError, match=f"{key} needs rows that vary within their class"):
            run(x, y, t, [key])
    got = run(x, y, t, ["gbc_diagonal", "transrate", "hscore"])
    assert got["gbc_diagonal"] == pytest.approx(gbc_dense(x, y, "diagonal"), rel=1e-9, abs=1e-300)
    assert got["transrate"] == pytest.approx(transrate_dense(x, y), rel=1e-9)
    assert got["hscore"] == pytest.approx(2.0, rel=1e-9)          # Cov f = Cov(E[f|y]), rank 2


def test_single_class_sample_asks_for_a_larger_sample():
    y = np.r_[np.zeros(200, int), 1]
    x = np.random.default_rng(3).normal(size=(201, 6))
    with pytest.raises(InputError, match="raise --baseline-sample"):
        run(x, y, np.eye(6)[:2], ["ncti"], baseline_sample=5, seed=0)
