"""Calibration fits, prediction intervals, rank correlations, calibration files and plots."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from iimm.errors import InputError
from iimm.engine.calibration.fit import (CALIBRATION_VERSION, Calibration, TaskPoint, fit_calibration, fit_line, predict,
                                 rank_among, rank_correlations, task_points)


def naive_fit(x, y):
    """Ordinary least squares by the textbook sums, float64."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    xm, ym = x.sum() / n, y.sum() / n
    sxx = sum((xi - xm) ** 2 for xi in x)
    sxy = sum((xi - xm) * (yi - ym) for xi, yi in zip(x, y))
    syy = sum((yi - ym) ** 2 for yi in y)
    b = sxy / sxx
    a = ym - b * xm
    sse = sum((yi - a - b * xi) ** 2 for xi, yi in zip(x, y))
    r = sxy / math.sqrt(sxx * syy)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    p = 2 * stats.t.sf(abs(t), n - 2)
    return dict(a=a, b=b, r=r, r2=1 - sse / syy, p=p, s=math.sqrt(sse / (n - 2)), xm=xm, sxx=sxx)


def naive_loo(x, y):
    errors = []
    for i in range(len(x)):
        keep = [j for j in range(len(x)) if j != i]
        f = naive_fit([x[j] for j in keep], [y[j] for j in keep])
        errors.append(y[i] - (f["a"] + f["b"] * x[i]))
    return np.array(errors)


def naive_interval(x, y, x0, level):
    f = naive_fit(x, y)
    n = len(x)
    q = stats.t.ppf(1 - (1 - level) / 2, n - 2)
    half = q * f["s"] * math.sqrt(1 + 1 / n + (x0 - f["xm"]) ** 2 / f["sxx"])
    value = f["a"] + f["b"] * x0
    return value, value - half, value + half


def make_records(n_tasks=10, seed=0, model="clip", method="lora", slope=1.0, intercept=-0.1, noise=0.02):
    """Records following gain = intercept + slope·iimm + noise, with accuracies and OOD results."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n_tasks):
        iimm = 0.2 + 0.25 * k / (n_tasks - 1) + 0.01 * rng.standard_normal()
        zs = 0.2 + 0.2 * rng.random()
        gain = intercept + slope * iimm + noise * rng.standard_normal()
        ood = {f"probe{j}": {"before": 0.6, "after": 0.6 - 0.5 * iimm + 0.01 * rng.standard_normal()}
               for j in range(3)}
        forgetting = float(np.mean([v["after"] - v["before"] for v in ood.values()]))
        records.append({"model": model, "pretrained": "openai", "method": method, "task": f"task{k}",
                        "hparams": {"lr": 1e-5}, "trainable_params": 1000, "zeroshot_acc": zs,
                        "finetuned_acc": zs + gain, "gain": gain, "normalized_gain": gain / (1 - zs),
                        "ood": ood, "forgetting": forgetting,
                        "scores": {"iimm": iimm, "acs": 0.3 - 0.2 * iimm + 0.05 * rng.standard_normal(),
                                   "gap": float(rng.random())},
                        "seconds": 1.0, "checkpoint": None})
    return records


# ---- least-squares fits -------------------------------------------------------------------------

def test_fit_line_matches_naive_scipy_linregress_and_pearsonr():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 0.5, 9)
    y = 0.7 * x - 0.1 + 0.03 * rng.standard_normal(9)
    tasks = [f"t{i}" for i in range(9)]
    fit = fit_line(x, y, tasks)
    ref, lin, pear = naive_fit(x, y), stats.linregress(x, y), stats.pearsonr(x, y)
    assert fit.slope == pytest.approx(ref["b"], rel=1e-12) == pytest.approx(lin.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref["a"], rel=1e-12, abs=1e-15)
    assert fit.pearson_r == pytest.approx(pear.statistic, rel=1e-12)
    assert fit.p_value == pytest.approx(pear.pvalue, rel=1e-9) == pytest.approx(ref["p"], rel=1e-9)
    assert fit.r2 == pytest.approx(ref["r2"], rel=1e-12) == pytest.approx(pear.statistic ** 2, rel=1e-12)
    assert fit.residual_std == pytest.approx(ref["s"], rel=1e-12)
    assert fit.slope_stderr == pytest.approx(lin.stderr, rel=1e-12)
    assert fit.n == 9


def test_fit_recovers_known_linear_relation():
    rng = np.random.default_rng(2)
    x = np.linspace(0.1, 0.6, 200)
    y = 1.5 * x - 0.2 + 0.001 * rng.standard_normal(200)
    fit = fit_line(x, y, [str(i) for i in range(200)])
    assert fit.slope == pytest.approx(1.5, abs=0.005)
    assert fit.intercept == pytest.approx(-0.2, abs=0.003)
    assert fit.r2 > 0.999 and fit.p_value < 1e-100


def test_fit_negative_relation_sign_and_exact_line():
    x = np.array([0.1, 0.2, 0.4, 0.7])
    fit = fit_line(x, 0.5 - 2 * x, list("abcd"))
    assert fit.slope == pytest.approx(-2) and fit.pearson_r == pytest.approx(-1)
    assert fit.r2 == pytest.approx(1) and fit.p_value == pytest.approx(0, abs=1e-12)
    assert fit.residual_std == pytest.approx(0, abs=1e-12)
    assert max(abs(e) for e in fit.loo_errors.values()) < 1e-12


def test_loo_errors_equal_naive_loop():
    rng = np.random.default_rng(3)
    x = np.array([0.1, 0.15, 0.15, 0.3, 0.42, 0.5, 0.9])  # a duplicated score, a high-leverage point
    y = 0.2 + x + 0.05 * rng.standard_normal(7)
    tasks = [f"t{i}" for i in range(7)]
    fit = fit_line(x, y, tasks)
    ref = naive_loo(x, y)
    got = np.array([fit.loo_errors[t] for t in tasks])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)
    assert fit.loo_rmse == pytest.approx(math.sqrt(np.mean(ref ** 2)), rel=1e-10)
    assert fit.loo_mae == pytest.approx(np.mean(np.abs(ref)), rel=1e-10)


def test_loo_undefined_when_leaving_out_leaves_one_score():
    fit = fit_line([0.1, 0.1, 0.5], [0.0, 0.1, 0.3], ["a", "b", "c"])
    assert fit.loo_errors is None and fit.loo_rmse is None and fit.loo_mae is None
    assert fit.slope == pytest.approx(naive_fit([0.1, 0.1, 0.5], [0.0, 0.1, 0.3])["b"])


@pytest.mark.parametrize("x, y, match", [
    ([0.1, 0.2], [0.0, 0.1], "at least 3"),
    ([0.3, 0.3, 0.3], [0.0, 0.1, 0.2], "same on all"),
    ([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], "no relation"),
    ([0.1, float("nan"), 0.3], [0.0, 0.1, 0.2], "non-finite"),
])
def test_fit_line_rejects_degenerate_input(x, y, match):
    with pytest.raises(InputError, match=match):
        fit_line(x, y, ["a", "b", "c"][:len(x)])


# ---- prediction intervals -----------------------------------------------------------------------

def test_interval_equals_textbook_formula():
    x = [0.12, 0.2, 0.25, 0.31, 0.4]
    y = [0.01, 0.05, 0.04, 0.09, 0.12]
    fit = fit_line(x, y, list("abcde"))
    for x0, level in [(0.22, 0.9), (0.6, 0.9), (0.05, 0.5), (0.3, 0.99)]:
        np.testing.assert_allclose(fit.interval(x0, level), naive_interval(x, y, x0, level), rtol=1e-12)


@pytest.mark.parametrize("level, x0", [(0.90, 0.35), (0.90, 0.75), (0.50, 0.35)])
def test_interval_covers_at_stated_rate(level, x0):
    """Many calibration sets from a true line with Gaussian noise: coverage of a new task ≈ level."""
    rng = np.random.default_rng(int(level * 100 + x0 * 1000))
    x = np.array([0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55])  # x0 = 0.75 extrapolates
    trials, a, b, sigma = 2000, -0.1, 0.8, 0.03
    tasks = [str(i) for i in range(len(x))]
    covered = 0
    for _ in range(trials):
        y = a + b * x + sigma * rng.standard_normal(len(x))
        y_new = a + b * x0 + sigma * rng.standard_normal()
        _, low, high = fit_line(x, y, tasks).interval(x0, level)
        covered += low <= y_new <= high
    tolerance = 4 * math.sqrt(level * (1 - level) / trials)
    assert abs(covered / trials - level) < tolerance


# ---- rank correlations --------------------------------------------------------------------------

def naive_kendall_tau_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


def points_from(xs, ys, key="iimm", outcome="gain"):
    return [TaskPoint(f"t{i}", 1, {key: float(a)}, {outcome: float(b)}) for i, (a, b) in enumerate(zip(xs, ys))]


def test_kendall_and_weighted_tau_equal_scipy_and_naive():
    x = [0.3, 0.1, 0.4, 0.4, 0.2, 0.9, 0.5, 0.1]  # ties in both
    y = [0.1, 0.0, 0.3, 0.2, 0.2, 0.5, 0.1, 0.05]
    (row,) = rank_correlations(points_from(x, y), ["iimm"], ["gain"], permutations=0)
    ref = stats.kendalltau(x, y)
    assert row.kendall_tau_b == pytest.approx(ref.statistic, rel=1e-12)
    assert row.kendall_tau_b == pytest.approx(naive_kendall_tau_b(x, y), rel=1e-12)
    assert row.kendall_p == pytest.approx(ref.pvalue, rel=1e-12)
    assert row.weighted_tau == pytest.approx(stats.weightedtau(x, y).statistic, rel=1e-12)
    assert row.weighted_tau_p is None and row.n == 8


def test_weighted_tau_p_value_equals_exact_enumeration():
    x = np.array([0.31, 0.12, 0.44, 0.27, 0.2, 0.9])
    y = np.array([0.1, 0.02, 0.3, 0.15, 0.2, 0.4])
    (row,) = rank_correlations(points_from(x, y), ["iimm"], ["gain"], permutations=999)  # 6! = 720 <= 999
    observed = stats.weightedtau(x, y).statistic
    null = np.array([stats.weightedtau(x, y[list(p)]).statistic for p in itertools.permutations(range(6))])
    eps = 1e-12
    expected = min(1.0, 2 * min(np.mean(null <= observed + eps), np.mean(null >= observed - eps)))
    assert row.weighted_tau_p == pytest.approx(expected, rel=1e-12)
    assert row.weighted_tau == pytest.approx(observed)


def test_rank_correlations_undefined_cases_are_none_with_note():
    rows = rank_correlations(points_from([0.1, 0.2], [0.0, 0.1]), ["iimm"], ["gain"], permutations=0)
    assert rows[0].kendall_tau_b is None and "2 task" in rows[0].note
    rows = rank_correlations(points_from([0.2, 0.2, 0.2], [0.0, 0.1, 0.2]), ["iimm"], ["gain"], permutations=0)
    assert rows[0].weighted_tau is None and "iimm is constant" in rows[0].note


def test_rank_correlations_from_records_cover_every_key_and_outcome():
    records = make_records(8)
    rows = rank_correlations(records, ["iimm", "acs"], permutations=0)
    assert [(r.score_key, r.outcome) for r in rows] == [
        (k, o) for k in ("iimm", "acs") for o in ("gain", "normalized_gain", "forgetting")]
    x = [r["scores"]["acs"] for r in records]
    y = [r["forgetting"] for r in records]
    acs_forgetting = rows[5]
    assert acs_forgetting.kendall_tau_b == pytest.approx(stats.kendalltau(x, y).statistic, rel=1e-12)


# ---- calibration from records -------------------------------------------------------------------

def test_fit_calibration_fits_each_outcome_like_linregress():
    records = make_records(10) + make_records(10, model="siglip") + make_records(10, method="full", seed=5)
    cal = fit_calibration(records, "clip", "lora", permutations=0)
    mine = [r for r in records if r["model"] == "clip" and r["method"] == "lora"]
    x = [r["scores"]["iimm"] for r in mine]
    assert cal.tasks == [r["task"] for r in mine] and cal.pretrained == "openai"
    assert cal.score_range == (min(x), max(x))
    for outcome in ("gain", "normalized_gain", "forgetting"):
        ref = stats.linregress(x, [r[outcome] for r in mine])
        fit = cal.fit(outcome)
        assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
        assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12)
        assert fit.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert cal.fit("gain").slope == pytest.approx(1.0, abs=0.3)
    assert cal.fit("forgetting").slope < 0
    assert set(cal.fits) == {"iimm", "acs", "gap"}  # compare_keys=None: every other common score
    assert len(cal.rank_correlations) == 9


def test_fit_calibration_derives_outcomes_and_averages_runs():
    records = []
    for k, (iimm, zs, ft) in enumerate([(0.2, 0.5, 0.55), (0.3, 0.4, 0.6), (0.4, 0.8, 0.9), (0.5, 0.3, 0.7)]):
        ood = {"a": {"before": 0.5, "after": 0.5 - iimm / 2}, "b": {"before": 0.7, "after": 0.7 - iimm / 4}}
        base = {"model": "m", "method": "bitfit", "task": f"t{k}", "scores": {"iimm": iimm}, "ood": ood}
        records.append({**base, "zeroshot_acc": zs, "finetuned_acc": ft})
        records.append({**base, "zeroshot_acc": zs, "finetuned_acc": ft + 0.02})  # a second seed
    cal = fit_calibration(records, "m", "bitfit", compare_keys=[], permutations=0)
    assert [p.n_runs for p in cal.points] == [2, 2, 2, 2]
    gains = [0.06, 0.21, 0.11, 0.41]
    norms = [g / (1 - zs) for g, zs in zip(gains, [0.5, 0.4, 0.8, 0.3])]
    forgetting = [-(0.5 * x + 0.25 * x) / 2 for x in (0.2, 0.3, 0.4, 0.5)]
    np.testing.assert_allclose([p.outcomes["gain"] for p in cal.points], gains, rtol=1e-12)
    np.testing.assert_allclose([p.outcomes["normalized_gain"] for p in cal.points], norms, rtol=1e-12)
    np.testing.assert_allclose([p.outcomes["forgetting"] for p in cal.points], forgetting, rtol=1e-12)
    assert cal.fit("forgetting").slope == pytest.approx(-0.375)


def test_fit_calibration_skips_unfittable_outcomes_with_reason():
    records = make_records(5)
    for r in records:
        del r["forgetting"], r["ood"]
        r["scores"]["gap"] = 0.5
    cal = fit_calibration(records, "clip", "lora", permutations=0)
    assert "forgetting" not in cal.fits["iimm"] and "gap" not in cal.fits
    assert "at least 3" in cal.skipped["iimm/forgetting"]
    assert "same on all" in cal.skipped["gap/gain"]
    with pytest.raises(InputError, match="no fit of forgetting on iimm: 0 task"):
        cal.fit("forgetting")


@pytest.mark.parametrize("mutate, match", [
    (lambda rs: rs[:2], "2 calibration task"),
    (lambda rs: [{**r, "scores": {"acs": 0.1}} for r in rs], "has no 'iimm' score"),
    (lambda rs: [{**r, "scores": {"iimm": 0.3}} for r in rs], "same on every calibration task"),
    (lambda rs: [{**r, "zeroshot_acc": 55.0} for r in rs], "fractions, not percent"),
    (lambda rs: rs[:-1] + [{**rs[-1], "gain": float("nan")}], "gain is nan"),
    (lambda rs: rs[:-1] + [{**rs[-1], "gain": "0.1"}], "not a number"),
    (lambda rs: rs[:-1] + [{**rs[-1], "pretrained": "laion2b"}], "several pretrained"),
    (lambda rs: rs[:-1] + [{k: v for k, v in rs[-1].items() if k != "task"}], "no 'task'"),
])
def test_fit_calibration_rejects_bad_records(mutate, match):
    with pytest.raises(InputError, match=match):
        fit_calibration(mutate(make_records(5)), "clip", "lora", permutations=0)


def test_task_points_keeps_only_requested_model_and_method():
    records = make_records(4) + make_records(4, model="coca")
    assert [p.task for p in task_points(records, model="coca")] == ["task0", "task1", "task2", "task3"]
    assert len(task_points(records)) == 8


# ---- predictions ---------------------------------------------------------------------------------

def test_predict_values_intervals_and_range():
    records = make_records(8)
    cal = fit_calibration(records, "clip", "lora", compare_keys=[], permutations=0)
    x = [r["scores"]["iimm"] for r in records]
    lo, hi = min(x), max(x)
    inside = (lo + hi) / 2
    pred = predict(cal, inside)
    assert pred.in_range and pred.score_range == (lo, hi)
    for outcome in ("gain", "normalized_gain", "forgetting"):
        expected = naive_interval(x, [r[outcome] for r in records], inside, 0.90)
        got = pred.outcomes[outcome]
        np.testing.assert_allclose((got.value, got.low, got.high), expected, rtol=1e-10)
    assert not predict(cal, hi + 0.01).in_range and not predict(cal, lo - 1e-9).in_range
    assert predict(cal, hi).in_range
    wide = predict(cal, inside, level=0.99).outcomes["gain"]
    assert wide.high - wide.low > pred.outcomes["gain"].high - pred.outcomes["gain"].low
    d = pred.to_dict()
    assert d["iimm"] == inside and d["in_range"] is True
    assert set(d["predictions"]) == {"gain", "normalized_gain", "forgetting"}
    assert set(d["predictions"]["gain"]) == {"value", "low", "high"}


@pytest.mark.parametrize("value, level, match", [
    (float("nan"), 0.9, "finite"), (0.3, 1.0, "between 0 and 1"), (0.3, 0.0, "between 0 and 1")])
def test_predict_rejects_bad_value_or_level(value, level, match):
    cal = fit_calibration(make_records(5), "clip", "lora", compare_keys=[], permutations=0)
    with pytest.raises(InputError, match=match):
        predict(cal, value, level)


def test_rank_among():
    assert rank_among(0.5, [0.1, 0.9, 0.5, 0.7]) == (3, 5)
    assert rank_among(0.95, [0.1, 0.9]) == (1, 3)
    assert rank_among(0.0, [0.1, 0.9]) == (3, 3)
    assert rank_among(0.3, []) == (1, 1)
    with pytest.raises(InputError, match="NaN"):
        rank_among(0.3, [0.1, float("nan")])


# ---- calibration files ---------------------------------------------------------------------------

def test_calibration_json_round_trip(tmp_path):
    cal = fit_calibration(make_records(6), "clip", "lora", permutations=99)
    path = tmp_path / "cal.json"
    text = cal.to_json(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json"]  # no temp file left behind
    data = json.loads(path.read_text())
    assert data["version"] == CALIBRATION_VERSION and data["model"] == "clip" and data["method"] == "lora"
    assert data["tasks"] == cal.tasks and data["score_range"] == list(cal.score_range)
    assert json.loads(text) == data
    back = Calibration.from_json(path)
    assert back.to_dict() == cal.to_dict()
    assert predict(back, 0.3) == predict(cal, 0.3)


def test_calibration_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text("old")
    fit_calibration(make_records(5), "clip", "lora", compare_keys=[], permutations=0).to_json(path)
    assert Calibration.from_json(path).model == "clip"
    with pytest.raises(InputError, match="does not exist"):
        Calibration.to_json(Calibration.from_json(path), tmp_path / "missing" / "cal.json")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not an iimm calibration"),
    ('{"format": "iimm-calibration", "version": 99}', "version 99"),
    ('{"format": "iimm-calibration", "version": 1, "model": "m"}', "damaged calibration"),
])
def test_calibration_from_json_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        Calibration.from_json(path)
    with pytest.raises(InputError, match="cannot read calibration"):
        Calibration.from_json(tmp_path / "absent.json")


# ---- plots ---------------------------------------------------------------------------------------

def test_plot_calibration_writes_png_atomically(tmp_path):
    from iimm.engine.calibration.plots import plot_calibration
    records = make_records(6)
    cal = fit_calibration(records, "clip", "lora", compare_keys=[], permutations=0)
    out = plot_calibration(cal, records + make_records(3, seed=9, method="full"), tmp_path / "cal.png",
                           highlight=("new", 0.5))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.png"]
    plot_calibration(cal, None, tmp_path / "own.png", outcomes=("gain", "normalized_gain", "forgetting"))
    assert (tmp_path / "own.png").stat().st_size > 1000
    with pytest.raises(InputError, match="does not exist"):
        plot_calibration(cal, None, tmp_path / "nowhere" / "x.png")


# ---- the `iimm predict` command ------------------------------------------------------------------

HAND_IIMM = math.sqrt(2) / 4  # docs/scores.md's hand-checked example


@pytest.fixture()
def hand_npz(tmp_path):
    path = tmp_path / "hand.npz"
    s = 1 / math.sqrt(2)
    np.savez(path, image=np.array([[1.0, 0.0], [0.0, 1.0], [s, s]]), label=np.array([0, 1, 0]),
             text=np.array([[1.0, 0.0], [0.0, 1.0]]))
    return path


def run_predict(args):
    from click.testing import CliRunner
    from iimm.cli.predict import predict as predict_command
    return CliRunner().invoke(predict_command, args + ["--no-progress", "--backend", "torch"])


def test_predict_command_json_matches_hand_computed_iimm(tmp_path, hand_npz):
    records = make_records(8)
    cal_path = tmp_path / "cal.json"
    fit_calibration(records, "clip", "lora", compare_keys=[], permutations=0).to_json(cal_path)
    result = run_predict(["--calibration", str(cal_path), "--embeddings", str(hand_npz), "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["iimm"] == pytest.approx(HAND_IIMM, rel=1e-12) and out["in_range"] is True
    x = [r["scores"]["iimm"] for r in records]
    for outcome in ("gain", "normalized_gain", "forgetting"):
        value, low, high = naive_interval(x, [r[outcome] for r in records], HAND_IIMM, 0.90)
        assert out["predictions"][outcome] == pytest.approx({"value": value, "low": low, "high": high}, rel=1e-9)
    assert "warning" not in result.stderr


def test_predict_command_warns_outside_range_and_writes_table_and_plot(tmp_path, hand_npz):
    records = make_records(6)
    for r in records:
        r["scores"]["iimm"] += 0.3  # calibration range ≈ 0.5 .. 0.75, the task's IIMM is 0.354
    cal_path = tmp_path / "cal.json"
    fit_calibration(records, "clip", "lora", compare_keys=[], permutations=0).to_json(cal_path)
    out, png = tmp_path / "pred.txt", tmp_path / "pred.png"
    result = run_predict(["--calibration", str(cal_path), "--embeddings", str(hand_npz), "-o", str(out),
                          "--plot", str(png), "--level", "0.8"])
    assert result.exit_code == 0, result.output
    assert "lies outside the calibration range" in result.stderr
    text = out.read_text()
    assert "OUTSIDE the calibration range" in text and "80% interval" in text
    assert [line.split()[0] for line in text.splitlines()[4:7]] == ["gain", "normalized_gain", "forgetting"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_predict_command_without_calibration_reports_iimm(hand_npz, tmp_path):
    from iimm.engine.embedding.store import Store

    store = Store(tmp_path / "store")
    for i, value in enumerate((0.1, 0.5, 0.2)):  # IIMMs of tasks scored earlier
        store.record_score_run({"iimm": value}, input=f"earlier-{i}")
    store.record_score_run({"iimm": 0.9}, input="earlier-1")  # task 1 rescored: only its latest value counts
    store.record_score_run({"iimm": 0.0}, input=str(hand_npz))  # the task itself is not ranked against itself
    result = run_predict(["--embeddings", str(hand_npz), "--format", "json", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"iimm": pytest.approx(HAND_IIMM, rel=1e-12), "rank": 2, "of": 4}  # 0.9, [0.354], 0.2, 0.1
    table = run_predict(["--embeddings", str(hand_npz)])
    assert table.stdout.startswith("iimm = 0.353553") and "no calibration given" in table.stdout


def test_prediction_report_ranks_among_known_tasks():
    from iimm.cli.predict import prediction_report, report_table
    report = prediction_report(0.3, None, known_scores=[0.1, 0.5, 0.4])
    assert report == {"iimm": 0.3, "rank": 3, "of": 4}
    assert "rank 3 of 4 known tasks" in report_table(report)


def test_predict_command_usage_errors(tmp_path, hand_npz):
    assert run_predict([]).exit_code == 2
    assert run_predict(["--embeddings", str(hand_npz), "--plot", str(tmp_path / "x.png")]).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = run_predict(["--calibration", str(bad), "--embeddings", str(hand_npz)])
    assert isinstance(result.exception, InputError) and "not an iimm calibration" in str(result.exception)


def test_predict_command_notes_outcomes_the_calibration_could_not_fit(tmp_path, hand_npz):
    records = make_records(5)
    for r in records:
        del r["forgetting"], r["ood"]
    cal_path = tmp_path / "cal.json"
    fit_calibration(records, "clip", "lora", compare_keys=[], permutations=0).to_json(cal_path)
    result = run_predict(["--calibration", str(cal_path), "--embeddings", str(hand_npz), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["predictions"]) == {"gain", "normalized_gain"}
    assert "note: no forgetting prediction: 0 task(s) have both iimm and forgetting" in result.stderr


def test_a_binary_file_as_calibration_is_a_one_line_error(tmp_path):
    (tmp_path / "task.npz").write_bytes(b"PK\x03\x04\xff\xfe binary")
    with pytest.raises(InputError, match="is not a text file; pass a calibration JSON"):
        Calibration.from_json(tmp_path / "task.npz")


def test_predictions_stay_within_what_an_outcome_can_be():
    """Far out on the fit line a gain would pass 1 and a forgetting -1: both are cut to the possible range."""
    cal = fit_calibration(make_records(), "clip", "lora", permutations=0)
    far = predict(cal, 5.0)
    gain_fit = cal.fit("gain")
    assert gain_fit.intercept + gain_fit.slope * 5.0 > 1.0  # the raw line is impossible there
    assert far.outcomes["gain"].value == far.outcomes["gain"].high == 1.0 and far.outcomes["gain"].low <= 1.0
    assert far.outcomes["forgetting"].low == -1.0 and far.outcomes["normalized_gain"].high == 1.0
    near = predict(cal, 0.3)
    raw = gain_fit.interval(0.3, 0.90)
    assert (near.outcomes["gain"].value, near.outcomes["gain"].low, near.outcomes["gain"].high) == raw
