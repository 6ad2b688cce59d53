"""`iimm screen` over a catalog of tiny digit tasks with a tiny model: ranking, files, a broken dataset alone."""

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from iimm.cli.main import cli
from iimm.engine import load_catalog, score
from iimm.engine.embedding.extract import embed_dataset
from iimm.engine.calibration.screen import screen


def digit_task(root, digits_png_dir, name, classes):
    task = root / name
    for c in classes:
        shutil.copytree(digits_png_dir / c, task / c)
    return task


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, digits_png_dir):
    root = tmp_path_factory.mktemp("catalog")
    classes = sorted(p.name for p in digits_png_dir.iterdir())
    digit_task(root, digits_png_dir, "low", classes[:4])
    digit_task(root, digits_png_dir, "high", classes[4:])
    digit_task(root, digits_png_dir, "all", classes)
    digit_task(root, digits_png_dir, "broken", classes[:1])  # one class: IIMM is undefined
    (root / "catalog.toml").write_text("\n".join(
        f'[[dataset]]\nname = "{n}"\npath = "{n}"\n' for n in ("low", "high", "all", "broken")))
    return root / "catalog.toml"


def test_screen_ranks_by_iimm_and_reports_the_broken_dataset(catalog, tiny_model_dir, tmp_path):
    model = f"local-dir:{tiny_model_dir}"
    out = tmp_path / "screen.csv"
    res = CliRunner().invoke(cli, ["screen", str(catalog), "--model", model, "--format", "csv", "-o", str(out),
                                   "--backend", "torch", "--workers", "0", "--store", str(tmp_path / "store")])
    assert res.exit_code == 1, res.output
    assert "broken" in res.stderr and "needs at least 2 classes" in res.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["dataset"] for r in rows] == sorted(["low", "high", "all"],
                                                  key=lambda n: -float(next(r["iimm"] for r in rows if r["dataset"] == n)))
    assert (tmp_path / "screen.png").stat().st_size > 1000
    # each row equals scoring that dataset directly
    cat = load_catalog(catalog)
    for r in rows:
        es, _ = embed_dataset(model, str(cat.get(r["dataset"]).images), workers=0, use_cache=False)
        assert float(r["iimm"]) == pytest.approx(score(es, ["iimm"], backend="torch").scores["iimm"], rel=1e-6)


def test_screen_second_run_uses_cached_embeddings(catalog, tiny_model_dir, tmp_path, monkeypatch):
    import iimm.engine.embedding.models as models_mod

    loads, real_load = [], models_mod.load_model
    monkeypatch.setattr(models_mod, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    cat = load_catalog(catalog)
    kw = dict(backend="torch", embed_options={"workers": 0, "store": tmp_path / "store"})
    first = screen(cat, [f"local-dir:{tiny_model_dir}"], **kw)
    assert len(loads) == 1  # four datasets to encode, one model load
    second = screen(cat, [f"local-dir:{tiny_model_dir}"], **kw)
    assert len(first.rows) == 3 and len(first.failures) == 1
    assert not any(r.cached for r in first.rows) and all(r.cached for r in second.rows)
    assert [r.iimm for r in first.rows] == [r.iimm for r in second.rows]


def test_screen_json(catalog, tiny_model_dir, tmp_path):
    res = CliRunner().invoke(cli, ["screen", str(catalog), "--model", f"local-dir:{tiny_model_dir}", "--format",
                                   "json", "--backend", "torch", "--workers", "0", "--store", str(tmp_path / "s"),
                                   "--metrics", "acs,gap"])
    obj = json.loads(res.stdout)
    assert [f["dataset"] for f in obj["failures"]] == ["broken"]
    assert all({"iimm", "acs", "gap"} <= set(r["scores"]) for r in obj["rows"])
    assert np.all(np.diff([r["iimm"] for r in obj["rows"]]) <= 0)


def test_ncti_is_combined_across_models_only():
    from iimm.engine.calibration.screen import ScreenRow, add_combined_ncti
    from iimm.engine.scoring.baselines import combine_ncti

    parts = [{"ncti_sc": 1.0, "ncti_cls": 0.5, "ncti_nc": 2.0}, {"ncti_sc": 3.0, "ncti_cls": 0.7, "ncti_nc": 1.0}]
    rows = [ScreenRow("a", f"m{i}", {"iimm": 0.1, **p}, 10, False) for i, p in enumerate(parts)]
    rows.append(ScreenRow("b", "m0", {"iimm": 0.2, **parts[0]}, 10, False))
    add_combined_ncti(rows)
    want = combine_ncti({"m0": parts[0], "m1": parts[1]})
    assert rows[0].scores["ncti"] == want["m0"] and rows[1].scores["ncti"] == want["m1"]
    assert "ncti" not in rows[2].scores


def test_a_model_that_cannot_be_found_fails_once(catalog, tiny_model_dir, tmp_path):
    from iimm.engine.calibration.screen import ALL_DATASETS

    seen = []
    result = screen(load_catalog(catalog), [str(tmp_path / "no-such-model"), f"local-dir:{tiny_model_dir}"],
                    backend="torch", embed_options={"workers": 0, "store": tmp_path / "store"},
                    on_failure=lambda d, m, e: seen.append((d, m)))
    assert seen.count((ALL_DATASETS, str(tmp_path / "no-such-model"))) == 1
    assert [f[:2] for f in result.failures if f[1] == str(tmp_path / "no-such-model")] == \
        [(ALL_DATASETS, str(tmp_path / "no-such-model"))]
    assert sorted(r.dataset for r in result.rows) == ["all", "high", "low"]


def test_calibrated_rows_rank_before_uncalibrated_ones():
    from iimm.engine.calibration.screen import ScreenResult
    from screen_rows import screen_row as row

    rows = [row("a", "m2", 0.9), row("b", "m1", 0.5, gain=0.02), row("c", "m1", 0.6, gain=0.08), row("d", "m2", 0.7)]
    assert [r.dataset for r in ScreenResult(rows, []).ranked] == ["c", "b", "a", "d"]


def test_unmatched_calibrations_and_uncalibrated_models_are_noted(catalog, tiny_model_dir, tmp_path):
    from test_predict import make_records

    from iimm.engine.calibration.fit import fit_calibration

    model = f"local-dir:{tiny_model_dir}"
    other = fit_calibration(make_records(model="some-other-model"), "some-other-model", "lora", permutations=0)
    result = screen(load_catalog(catalog), [model], calibrations=[other], backend="torch",
                    embed_options={"workers": 0, "store": tmp_path / "store"})
    assert result.notes == ["calibration some-other-model/lora matches no --model; it was not used",
                            f"{model} has no calibration: its rows are ranked by IIMM, after the calibrated ones"]
    assert all(not r.predictions for r in result.rows)


def test_screen_reads_scores_the_store_keeps_and_recompute_forces(catalog, tiny_model_dir, tmp_path, monkeypatch):
    """A second screen reads the kept scores (any backend: the key names the embeddings and the version);
    --recompute computes them again; scores kept by a calibration's zero-shot pass serve screen too."""
    import iimm.engine.scoring.stored as stored
    from iimm.engine.embedding.store import open_store
    from iimm.engine.scoring.stored import RESULT_KIND, stored_key

    calls, real_score = [], stored.score
    monkeypatch.setattr(stored, "score", lambda es, keys, **kw: calls.append(list(keys)) or real_score(es, keys, **kw))
    model, store = f"local-dir:{tiny_model_dir}", tmp_path / "store"
    args = ["screen", str(catalog), "--model", model, "--format", "json", "--workers", "0", "--store", str(store),
            "--metrics", "iimm,acs"]
    first = CliRunner().invoke(cli, [*args, "--backend", "torch"])
    assert len(calls) == 4                                  # low, high, all and the broken one (which fails)
    second = CliRunner().invoke(cli, [*args, "--backend", "numba"])
    assert calls[4:] == [["iimm", "acs"]]                   # only the broken dataset, whose scoring failed
    rows = {r["dataset"]: r["scores"] for r in json.loads(first.stdout)["rows"]}
    assert {r["dataset"]: r["scores"] for r in json.loads(second.stdout)["rows"]} == rows
    third = CliRunner().invoke(cli, [*args, "--backend", "torch", "--recompute"])
    assert len(calls) == 9 and third.exit_code == 1
    for r in json.loads(third.stdout)["rows"]:
        assert r["scores"] == pytest.approx(rows[r["dataset"]], rel=1e-6)



def test_scores_kept_for_a_set_serve_other_keys_and_backends(tmp_path, monkeypatch):
    """What finetune/calibrate keep (every embedding score of a set) serves screen's keys; only missing keys
    are computed, and added to what the store keeps."""
    import iimm.engine.scoring.stored as stored
    from iimm.engine import EmbeddingSet
    from iimm.engine.embedding.store import open_store
    from synthetic import structured

    calls, real_score = [], stored.score
    monkeypatch.setattr(stored, "score", lambda es, keys, **kw: calls.append(list(keys)) or real_score(es, keys, **kw))
    es = EmbeddingSet.from_arrays(*structured(2, 90, 8, 3))
    st = open_store(tmp_path / "store")
    kept, cached = stored.stored_scores(es, "set1", st, "all", backend="torch")
    assert not cached and calls == [list(kept)] and len(kept) == 14
    got, cached = stored.stored_scores(es, "set1", st, ["iimm", "gap"], backend="numba")
    assert cached and got == {"iimm": kept["iimm"], "gap": kept["gap"]} and len(calls) == 1
    got, cached = stored.stored_scores(es, "set1", st, ["iimm", "leep"], backend="torch")
    assert not cached and calls[1:] == [["leep"]] and got["iimm"] == kept["iimm"]
    assert stored.stored_scores(es, "set1", st, ["leep"])[1]                  # leep is kept now
    assert stored.stored_scores(es, "set2", st, ["iimm"])[1] is False         # another set computes
    assert stored.stored_scores(es, None, st, ["iimm"])[1] is False           # no set id: nothing kept
    assert len(calls) == 4
