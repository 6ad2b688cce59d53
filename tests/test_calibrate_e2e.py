"""calibrate → predict → screen on three tiny digit tasks with a tiny model: the JSON, CSV and PNG files."""

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from fixtures_finetune import one_patch_clip_config
from fixtures_tiny import write_local_dir
from iimm.cli.main import cli
from iimm.engine import Calibration, load_embeddings, score


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_png_dir):
    root = tmp_path_factory.mktemp("e2e")
    classes = sorted(p.name for p in digits_png_dir.iterdir())
    groups = {"first": classes[:3], "middle": classes[3:7], "last": classes[7:], "probe": classes[::3]}
    for name, members in groups.items():
        for c in members:
            shutil.copytree(digits_png_dir / c, root / name / c)
    (root / "catalog.toml").write_text(
        '[[dataset]]\nname = "first"\npath = "first"\n\n[[dataset]]\nname = "middle"\npath = "middle"\n\n'
        '[[dataset]]\nname = "last"\npath = "last"\n\n[[dataset]]\nname = "probe"\npath = "probe"\nprobe_only = true\n')
    model = f"local-dir:{write_local_dir(root / 'model', one_patch_clip_config())}"
    return root, model


def invoke(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def test_calibrate_predict_screen(setup, tmp_path):
    root, model = setup
    store = str(tmp_path / "store")
    common = ["--store", store, "--workers", "0", "--no-progress"]
    out = tmp_path / "cal" / "clip-full.json"
    out.parent.mkdir()
    train = ["--method", "full", "--epochs", "2", "--lr", "1e-4", "--batch-size", "16", "--optimizer", "adamw",
             "--backend", "torch", "--permutations", "0"]
    res = invoke(["calibrate", str(root / "catalog.toml"), "--model", model, *train, "-o", str(out), *common])
    assert res.exit_code == 0, res.output
    assert "iimm: run 1/3: first with full" in res.stderr and "iimm: run 3/3: last with full" in res.stderr
    assert "iimm: middle (full): " in res.stderr  # the parameter-count line names the task being trained
    cal = Calibration.from_json(out)
    assert cal.model == model and cal.method == "full" and sorted(cal.tasks) == ["first", "last", "middle"]
    assert (tmp_path / "cal" / "clip-full.png").read_bytes()[:4] == b"\x89PNG"
    tau = list(csv.DictReader((tmp_path / "cal" / "clip-full-tau.csv").open()))
    assert {"iimm", "acs"} <= {r["score"] for r in tau}
    for point in cal.points:
        assert point.n_runs == 1
    from iimm.engine.embedding.store import Store
    with Store(store).connect() as con:
        rows = con.execute("SELECT model, method, path FROM calibrations").fetchall()
    assert [tuple(r) for r in rows] == [(model, "full", str(out))]
    from iimm.engine.finetune import list_finetune_records
    for record in list_finetune_records(store):  # forgetting: the other catalog tasks, the probe included
        assert sorted(record["ood"]) == sorted({"first", "middle", "last", "probe"} - {record["task"]})

    # a second calibration reuses every finished run from the store (no training)
    again = invoke(["calibrate", str(root / "catalog.toml"), "--model", model, *train,
                    "-o", str(tmp_path / "cal" / "again.json"), *common])
    assert again.exit_code == 0
    assert json.loads((tmp_path / "cal" / "again.json").read_text())["points"] == json.loads(out.read_text())["points"]

    # predict a task from its embeddings
    embedded = invoke(["embed", "--model", model, "--data", str(root / "middle"), "--template",
                       "a photo of a {}.", *common])
    folder = embedded.stdout.strip().splitlines()[-1]
    res = invoke(["predict", "--calibration", str(out), "--embeddings", folder, "--format", "json",
                  "--backend", "torch", "--no-progress"])
    pred = json.loads(res.stdout)
    iimm = score(load_embeddings(folder), ["iimm"], backend="torch").scores["iimm"]
    assert pred["iimm"] == pytest.approx(iimm, rel=1e-9)
    gain_fit = cal.fit("gain")
    assert pred["predictions"]["gain"]["value"] == pytest.approx(gain_fit.intercept + gain_fit.slope * iimm)
    low, high = pred["predictions"]["gain"]["low"], pred["predictions"]["gain"]["high"]
    assert low < pred["predictions"]["gain"]["value"] < high
    assert set(pred["predictions"]) == {"gain", "normalized_gain", "forgetting"}

    # screen the catalog with the calibration
    csv_path = tmp_path / "screen.csv"
    res = invoke(["screen", str(root / "catalog.toml"), "--model", model, "--calibration", str(out), "--format",
                  "csv", "-o", str(csv_path), "--backend", "torch", "--workers", "0", "--store", store])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(r["dataset"] for r in rows) == ["first", "last", "middle"]
    gains = [float(r["full.gain"]) for r in rows]
    assert gains == sorted(gains, reverse=True)
    assert (tmp_path / "screen.png").read_bytes()[:4] == b"\x89PNG"


def test_other_tasks_are_measured_with_their_own_names_prompts_and_test_images(tmp_path, digits_png_dir):
    from iimm.engine.calibration.runs import eval_task

    classes = sorted(p.name for p in digits_png_dir.iterdir())[:3]
    for c in classes:
        shutil.copytree(digits_png_dir / c, tmp_path / "task" / c)
    shutil.copytree(tmp_path / "task", tmp_path / "task-test")
    names = {c: f"number {i}" for i, c in enumerate(classes)}
    (tmp_path / "names.json").write_text(json.dumps(names))
    (tmp_path / "catalog.toml").write_text('[[dataset]]\nname = "other"\npath = "task"\ntest = "./task-test"\n'
                                           'classnames = "names.json"\ntemplates = ["a drawing of {}."]\n')
    from iimm.engine import load_catalog

    task = eval_task(load_catalog(tmp_path / "catalog.toml").get("other"))
    assert task.name == "other" and task.templates == ["a drawing of {}."]
    assert task.data.classnames == ["number 0", "number 1", "number 2"]
    assert {p.split("/")[-3] for p in task.data.paths} == {"task-test"}


def test_calibration_computes_each_zero_shot_result_once(setup, tmp_path, monkeypatch):
    """Zero-shot accuracies and scores depend on the model and the data, not on the method or on which task
    trains: across two methods they are computed once each, and the model is loaded once per run."""
    import os

    import iimm.engine.embedding.extract as extract_mod
    import iimm.engine.finetune.run as run_mod
    import iimm.engine.embedding.models as models_mod
    from iimm.engine import load_catalog
    from iimm.engine.calibration.runs import calibrate
    from iimm.errors import InputError
    from iimm.engine.finetune import TrainConfig

    root, model = setup
    calls = {"zero-shot": [], "score": 0, "load": 0}
    accuracy = run_mod.accuracy

    def counting_accuracy(tuned, ds, cls, transform, *, use_probe, stage, **kw):
        if stage.startswith("zero-shot"):
            calls["zero-shot"].append((ds.fingerprint(), stage))
        return accuracy(tuned, ds, cls, transform, use_probe=use_probe, stage=stage, **kw)

    import iimm.engine.scoring.stored as scores_mod  # where fine-tuning's zero-shot scores call score()
    real_score, real_load = scores_mod.score, models_mod.load_model

    def counting_score(*a, **kw):
        calls["score"] += 1
        return real_score(*a, **kw)

    def counting_load(*a, **kw):
        calls["load"] += 1
        return real_load(*a, **kw)

    monkeypatch.setattr(run_mod, "accuracy", counting_accuracy)
    monkeypatch.setattr(scores_mod, "score", counting_score)
    monkeypatch.setattr(models_mod, "load_model", counting_load)
    monkeypatch.setattr(extract_mod, "load_model", counting_load)
    import iimm.engine.calibration.runs as calibrate_mod
    real_fit = calibrate_mod.fit_calibration

    def fit_all_but_bitfit(records, model, method, **kw):  # a method with nothing to fit loses only its own
        if method == "bitfit":
            raise InputError("gain is the same on all 3 tasks; there is no relation to fit")
        return real_fit(records, model, method, **kw)

    monkeypatch.setattr(calibrate_mod, "fit_calibration", fit_all_but_bitfit)
    catalog = load_catalog(root / "catalog.toml")
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=16, optimizer="adamw", val_fraction=0.0)
    run = calibrate(catalog, model, ["full", "bitfit"], config=config, workers=0, store=tmp_path / "store",
                    score_backend="torch", permutations=0)
    assert run.calibrations["full"].method == "full" and run.calibrations["bitfit"] is None
    assert run.unfitted == {"bitfit": "gain is the same on all 3 tasks; there is no relation to fit"}
    # 3 own test splits + the 4 catalog folders measured as other tasks, for both methods together
    assert len(calls["zero-shot"]) == len(set(calls["zero-shot"])) == 7
    assert calls["score"] == 3
    assert calls["load"] == 6  # one per (task, method) run, shared by the embedding and the training
    for a, b in zip(run.records["full"], run.records["bitfit"]):
        assert (a["task"], a["zeroshot_acc"], a["scores"]) == (b["task"], b["zeroshot_acc"], b["scores"])
        assert {k: v["before"] for k, v in a["ood"].items()} == {k: v["before"] for k, v in b["ood"].items()}

    # a changed image is new data: its zero-shot accuracy is measured again
    image = next((root / "last").rglob("*.png"))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    calls["zero-shot"].clear()
    again = calibrate(catalog, model, ["bitfit"], config=config, workers=0, store=tmp_path / "store",
                      score_backend="torch", permutations=0)
    # measured again: "last" as another task (and its own test split only if the image fell into it)
    assert [stage for _, stage in calls["zero-shot"] if stage != "zero-shot test"] == ["zero-shot last"]
    resumed = {r["task"]: r["per_seed"][0]["resumed_epochs"] for r in again.records["bitfit"]}
    assert resumed == {"first": 1, "middle": 1, "last": 0}  # re-evaluated, not retrained; "last" is new data
