"""A new user's first hour (issue 14, items 7-11 and 14): what the table, the records and the messages say."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import naive_scores as naive
from iimm.cli.main import cli, main
from iimm.cli.render import format_value
from iimm.engine import EmbeddingSet, score
from iimm.errors import InputError
from synthetic import structured


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


# ---- item 14: the Python API takes arrays -----------------------------------------------------------------

def test_score_takes_arrays_and_tensors_as_scikit_learn_users_pass_them():
    x, y, t = structured(1, 60, 12, 3)
    want = naive.all_scores(x, y, t)
    got = score(x, y, t, keys=["iimm", "acs"], backend="torch").scores
    assert got == pytest.approx({k: want[k] for k in ("iimm", "acs")}, rel=1e-6)
    from_tensors = score(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t), keys="iimm", backend="torch")
    assert from_tensors.scores["iimm"] == pytest.approx(want["iimm"], rel=1e-6)
    es = EmbeddingSet(x, list(y), t)  # one (N, D) array, labels as a list
    assert (es.n, es.d, es.c) == (60, 12, 3)
    assert score(es, ["iimm"], "torch").scores["iimm"] == pytest.approx(want["iimm"], rel=1e-6)
    with pytest.raises(InputError, match=r"score\(image \(N, D\), label \(N,\), text \(C, D\)"):
        score(x, y)


# ---- item 9: what the table hides ---------------------------------------------------------------------------

def test_zeroshot_top5_is_flagged_when_it_cannot_miss():
    x, y, t = structured(2, 40, 8, 5)
    assert any("zeroshot_top5 is 1 by construction" in n for n in score(x, y, t, keys="zeroshot_top5").notes)
    x, y, t = structured(2, 60, 8, 6)
    assert not any("zeroshot_top5" in n for n in score(x, y, t, keys="zeroshot_top5").notes)


def test_a_class_without_rows_is_said():
    x, _, t = structured(3, 40, 8, 4)
    y = np.where(np.arange(40) % 4 == 2, 0, np.arange(40) % 4)  # class 2 loses its rows
    es = EmbeddingSet.from_arrays(x, y, t, classnames=["a", "b", "empty one", "d"])
    notes = score(es, ["iimm"], "torch").notes
    assert any(n.startswith("1 of 4 classes have no images (empty one)") for n in notes), notes


def test_values_never_print_as_negative_zero():
    assert format_value(-1e-12) == "0.000000" and format_value(-0.0) == "0.000000"
    assert format_value(-0.25) == "-0.250000" and format_value(1e-7) == "0.000000"


@pytest.fixture
def user_images(tmp_path, digits_png_dir):
    """A copy of the digits tree the way users have it: one unreadable file and one empty class folder."""
    root = tmp_path / "imgs"
    shutil.copytree(digits_png_dir, root)
    (root / "digit_three" / "broken.png").write_bytes(b"not a png")
    (root / "no_images_yet").mkdir()
    return root


def test_table_and_json_say_skipped_images_empty_classes_and_where_the_data_is(user_images, tiny_model_dir,
                                                                              monkeypatch, one_torch_thread):
    monkeypatch.chdir(user_images.parent)
    args = ["score", "--model", f"local-dir:{tiny_model_dir}", "--data", "imgs", "--metrics", "iimm,acs",
            "--backend", "torch", "--workers", "0", "--no-progress"]
    res = CliRunner().invoke(cli, args + ["--format", "json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["data"] == "imgs" and obj["data_path"] == str(user_images)
    assert obj["pretrained"] == str(tiny_model_dir / "open_clip_model.safetensors")
    assert len(obj["skipped"]) == 1 and obj["n"] == 200
    assert any(n.startswith("1 of 11 classes have no images (no images yet)") for n in obj["notes"])
    table = CliRunner().invoke(cli, args).stdout
    assert "N=200 (1 unreadable image skipped; --format json lists them)" in table.splitlines()[0]
    assert "note: 1 of 11 classes have no images" in table


def test_one_class_is_refused_before_any_image_is_encoded(tmp_path, digits_png_dir, tiny_model_dir, capsys,
                                                          monkeypatch):
    shutil.copytree(digits_png_dir / "digit_one", tmp_path / "one" / "digit_one")
    import iimm.engine.embedding.extract as extract

    monkeypatch.setattr(extract, "embed_dataset", lambda *a, **k: pytest.fail("encoded before the class check"))
    code, _, err = run_main(["score", "--model", f"local-dir:{tiny_model_dir}", "--data", str(tmp_path / "one"),
                             "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "iimm needs at least 2 classes (as do iimm_inter_modal" in err and "the data has 1 class (digit one)" in err
    assert "work with one class: iimm_intra_image, acs, gap, zeroshot_top1" in err and "--metrics" not in err


# ---- items 7, 10, 11: models and messages -----------------------------------------------------------------

def test_models_lists_every_open_clip_architecture_marking_those_without_tags():
    import open_clip

    res = CliRunner().invoke(cli, ["models", "--format", "json"])
    rows = json.loads(res.stdout)
    assert {r["architecture"] for r in rows} >= set(open_clip.list_models())
    untagged = [r for r in rows if r["architecture"] == "ViT-S-32"]
    assert untagged == [{"alias": "", "architecture": "ViT-S-32", "pretrained": None, "cached": False}]
    table = CliRunner().invoke(cli, ["models", "--filter", "ViT-S-32"]).stdout
    assert re.search(r"\n +ViT-S-32 +\(no tag: --pretrained FILE or random\)", table), table


def test_the_offline_error_names_random_weights(monkeypatch):
    from iimm.engine.embedding import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = str(models._unavailable("eva02", "EVA02-B-16 pretrained 'merged2b_s8b_b131k'", OSError("offline")))
    assert "\n" not in message and "--pretrained random builds it with random weights" in message


def test_a_missing_pretrained_file_is_not_found(tmp_path):
    from iimm.engine.embedding.models import resolve_model

    with pytest.raises(InputError, match="--pretrained file not found: .*nowhere.safetensors; pass an existing"):
        resolve_model("ViT-S-32", str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(InputError, match="neither a weights file nor a tag"):
        resolve_model("ViT-S-32", "laion2b")  # a word is a tag that does not exist, not a missing file


def test_random_weights_are_recorded_as_random():
    from iimm.engine.embedding.models import resolve_model

    assert resolve_model("ViT-S-32", "random").pretrained == "random"


def test_the_nan_error_names_the_file(tmp_path, capsys):
    x, y, t = structured(4, 30, 8, 3)
    x[7, 1] = np.nan
    path = tmp_path / "task.npz"
    np.savez(path, image=x, label=y, text=t)
    for metrics in ("iimm", "logme"):
        code, _, err = run_main(["score", "--embeddings", str(path), "--metrics", metrics, "--backend", "torch",
                                 "--no-progress"], capsys)
        assert code == 2 and err.startswith(f"iimm: error: {path}: image embedding row 7 has NaN or Inf"), err


def test_bench_notes_name_its_own_option(monkeypatch):
    from iimm.engine.scoring.bench import run_bench

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rows = run_bench(64, 8, 3, ["torch", "triton"], device="cpu", repeats=1, naive_limit=2, sklearn_limit=2)
    notes = [r.note for r in rows if r.impl == "triton"]
    assert notes and all("--backends " in n and "--backend " not in n for n in notes), notes


def test_small_progress_bars_count_plainly():
    from tqdm import tqdm

    from iimm.cli.progress import SMALL_BAR

    line = tqdm.format_meter(0, 6, 0.0, prefix="validation", unit="it", bar_format=SMALL_BAR)
    assert "0/6" in line and "0.00" not in line and "?it/s" not in line


# ---- item 12: a calibration that cannot be fitted says why once, and what to do ---------------------------

def test_an_unfittable_method_gets_one_reason_with_advice():
    from test_predict import make_records

    from iimm.engine.calibration.runs import fit_advice, fit_method

    records = [{**r, "gain": 0.1, "normalized_gain": 0.2, "forgetting": 0.0, "zeroshot_acc": 0.5, "finetuned_acc": 0.6,
                "ood": {"p": {"before": 0.5, "after": 0.5}}} for r in make_records(n_tasks=3, model="local-dir:./tiny")]
    calibration, reason = fit_method(records, "local-dir:./tiny", "lora", permutations=0)
    assert calibration is None and "\n" not in reason
    assert reason.count("no relation to fit") == 1 and "local-dir:./tiny/lora" not in reason
    assert "for model 'local-dir:./tiny' with method 'lora'" in reason
    assert "gain, normalized_gain and forgetting are each the same on all 3 tasks" in reason
    advice = fit_advice(records)
    assert "train longer (--epochs)" in advice and "more varied, tasks" in advice
    assert "zero-shot accuracies seen: task0 0.500, task1 0.500, task2 0.500" in advice


def test_calibrate_progress_says_a_run_was_reused(capsys):
    from iimm.cli.finetune import TrainingProgress

    with TrainingProgress("lora", enabled=False) as bar:
        bar("task", 1, 3, {"task": "shapes", "method": "lora"})
        bar("reused", 1, 1, {"run_id": "abc123"})
    err = capsys.readouterr().err
    assert "iimm: shapes (lora): reused the finished run abc123 from the store" in err


# ---- item 13: screen's chart never mixes two measures on one axis ----------------------------------------

def test_screen_chart_draws_gain_and_iimm_in_separate_panels(tmp_path):
    from iimm.engine.calibration.plots import plot_screen, screen_panels
    from iimm.engine.calibration.screen import ScreenResult
    from screen_rows import screen_row

    def row(name, model, iimm, gain=None):
        return screen_row(name, model, iimm, gain, below=0.1, above=0.2)

    rows = [row("a", "m2", 0.5), row("b", "m1", 0.5, gain=0.02), row("c", "m1", 0.6, gain=0.08), row("d", "m2", 0.7)]
    gain, iimm = screen_panels(ScreenResult(rows, []).ranked)
    assert gain.labels == ["c · m1", "b · m1"] and gain.values == [0.08, 0.02]
    assert gain.errors == [pytest.approx((0.1, 0.2))] * 2 and "gain" in gain.xlabel
    assert iimm.labels == ["d · m2", "a · m2"] and iimm.values == [0.7, 0.5] and iimm.errors is None
    assert "IIMM" in iimm.xlabel
    assert [p.labels for p in screen_panels([rows[0], rows[3]])] == [["d · m2", "a · m2"]]
    assert plot_screen(rows, tmp_path / "s.png").stat().st_size > 0


# ---- item 7: a tiny model and images, one command ----------------------------------------------------------

def test_demo_writes_a_model_tasks_and_a_catalog_that_load(tmp_path):
    from iimm.engine.calibration.catalog import load_catalog
    from iimm.engine.demo import TASKS, write_demo
    from iimm.engine.embedding.data import load_image_dataset
    from iimm.engine.embedding.models import load_model

    paths = write_demo(tmp_path / "try", images_per_class=4)
    lm = load_model(f"local-dir:{paths['model']}")
    assert lm.pretrained == str(paths["model"] / "open_clip_model.safetensors")
    for task, classes in TASKS.items():
        ds = load_image_dataset(paths[task])
        assert ds.classnames == sorted(classes, key=str.lower) or set(ds.classnames) == set(classes)
        assert list(ds.class_counts()) == [4] * len(classes)
    assert [d.name for d in load_catalog(paths["catalog"]).targets] == list(TASKS)
    again = write_demo(tmp_path / "again", images_per_class=4)  # seeded: the same bytes
    assert (again["shapes"] / "circle" / "0.png").read_bytes() == (paths["shapes"] / "circle" / "0.png").read_bytes()
