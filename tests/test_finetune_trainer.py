"""Reference fine-tuning end to end on tiny models and real digit images: splits, few-shot subsets,
training, resume, records and the `iimm finetune` command."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from fixtures_finetune import one_patch_clip_config, write_manifest
from fixtures_tiny import write_digits_png, write_local_dir
from iimm.cli.finetune import finetune as finetune_command
from iimm.engine.embedding.data import load_image_dataset
from iimm.errors import InputError
from iimm.engine.finetune import (MethodOptions, TrainConfig, base_state_dict, few_shot_subset, finetune,
                                  list_finetune_records, load_finetuned, outcome, split_task, stratified_split,
                                  summarize_seeds, tune_model)
from iimm.engine.finetune.evaluate import accuracy, class_embeddings, prompt_tokens
from iimm.engine.finetune.trainer import train_seed
from iimm.engine.embedding.models import load_model

TEMPLATE = "a photo of the number: {}."
FAST = dict(workers=0, score_backend="torch", templates=[TEMPLATE])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_patch_model(tmp_path_factory):
    return f"local-dir:{write_local_dir(tmp_path_factory.mktemp('one-patch'), one_patch_clip_config())}"


@pytest.fixture(scope="module")
def other_task(tmp_path_factory):
    """Another task for forgetting: 3 classes, 6 images each."""
    return write_digits_png(tmp_path_factory.mktemp("digits3"), per_class=6, classes=3)


# ---- subsets ----------------------------------------------------------------------------------------

UNEVEN = np.repeat(np.arange(5), [5, 9, 3, 0, 12])


def per_class(labels, idx, c=5):
    return np.bincount(labels[idx], minlength=c).tolist()


def test_few_shot_subsets_are_per_class_exact_seeded_and_nested():
    a = few_shot_subset(UNEVEN, seed=7, shots=3)
    assert per_class(UNEVEN, a) == [3, 3, 3, 0, 3]
    assert np.array_equal(a, few_shot_subset(UNEVEN, seed=7, shots=3))
    assert not np.array_equal(a, few_shot_subset(UNEVEN, seed=8, shots=3))
    assert set(few_shot_subset(UNEVEN, seed=7, shots=2)) < set(a)
    frac = few_shot_subset(UNEVEN, seed=7, fraction=0.5)
    assert per_class(UNEVEN, frac) == [max(1, math.floor(0.5 * n + 0.5)) if n else 0 for n in (5, 9, 3, 0, 12)]
    assert per_class(UNEVEN, few_shot_subset(UNEVEN, seed=1, fraction=0.01)) == [1, 1, 1, 0, 1]
    assert len(np.unique(a)) == len(a)


def test_too_many_shots_names_the_class():
    with pytest.raises(InputError, match="class 'c' has only 3 training images"):
        few_shot_subset(UNEVEN, seed=0, shots=4, classnames=list("abcde"))


def test_stratified_split_holds_out_a_rounded_share_of_every_class():
    labels = np.repeat(np.arange(4), [1, 2, 10, 7])
    kept, held = stratified_split(labels, 0.25, seed=3)
    assert per_class(labels, held, 4) == [0, 1, 3, 2]  # a single row stays; 2.5 rounds up; 1.75 -> 2
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    again_kept, again_held = stratified_split(labels, 0.25, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)


def test_manifest_split_column_gives_test_and_validation(tmp_path, digits_png_dir):
    manifest = write_manifest(tmp_path / "m.csv", digits_png_dir, splits={"0": "test", "1": "test", "2": "val"})
    s = split_task(str(manifest))
    assert per_class(s.test.labels, np.arange(len(s.test)), 10) == [2] * 10
    assert per_class(s.val.labels, np.arange(len(s.val)), 10) == [1] * 10
    assert len(s.train) == 170 and len(s.pool) == 180
    assert not {it.path for it in s.train.items} & {it.path for it in s.test.items}


def test_test_fraction_images_never_validate(tmp_path, digits_png_dir):
    manifest = write_manifest(tmp_path / "m.csv", digits_png_dir, splits={str(i): "val" for i in range(6)})
    s = split_task(str(manifest), test_fraction=0.5)
    test, val, train = ({it.path for it in d.items} for d in (s.test, s.val, s.train))
    assert test and val and not test & val and not test & train and not val & train


def test_split_errors_are_input_errors(tmp_path, digits_png_dir, other_task):
    with pytest.raises(InputError, match="no test images"):
        split_task(str(digits_png_dir))
    with pytest.raises(InputError, match="does not have the training classes"):
        split_task(str(digits_png_dir), test=str(other_task))
    with pytest.raises(InputError, match="both --test and --test-fraction"):
        split_task(str(digits_png_dir), test=str(digits_png_dir), test_fraction=0.2)
    with pytest.raises(InputError, match="--ood-val"):
        split_task(str(digits_png_dir), test_fraction=0.2, select_on="ood")


def test_an_unreadable_other_task_fails_the_same_way_every_time(tmp_path, one_patch_model, digits_png_dir):
    """Nothing is remembered of a zero-shot evaluation that found no readable image."""
    for c in ("a", "b"):
        (tmp_path / "junk" / c).mkdir(parents=True)
        (tmp_path / "junk" / c / "x.png").write_bytes(b"not a png")
    for _ in range(2):
        with pytest.raises(InputError, match="no readable image"):
            finetune(one_patch_model, str(digits_png_dir), "probe", test_fraction=0.25, evals=[str(tmp_path / "junk")],
                     store=tmp_path / "store", config=TrainConfig(epochs=1), **FAST)


def test_a_diverging_run_stops_with_one_line_and_saves_nothing(tmp_path, one_patch_model, digits_png_dir):
    cfg = TrainConfig(epochs=2, lr=1e9, optimizer="sgd", batch_size=16, val_fraction=0.0)
    diverged = r"training loss became NaN or Inf \(seed 0, epoch 1, by step \d+\); lower --lr"
    with pytest.raises(InputError, match=diverged):
        finetune(one_patch_model, str(digits_png_dir), "full", config=cfg, test_fraction=0.25,
                 store=tmp_path / "store", progress=lambda *a: None, **FAST)
    assert not list((tmp_path / "store" / "finetune").rglob("*.safetensors"))


# ---- the record's arithmetic ------------------------------------------------------------------------

def test_outcome_and_seed_summary_arithmetic():
    ood = {"a": {"before": 0.5, "after": 0.4}, "b": {"before": 0.7, "after": 0.75}}
    got = outcome(0.6, 0.85, ood)
    assert got["gain"] == pytest.approx(0.25) and got["normalized_gain"] == pytest.approx(0.625)
    assert got["forgetting"] == pytest.approx(-0.025)
    assert outcome(1.0, 0.9, {})["normalized_gain"] is None and outcome(1.0, 0.9, {})["forgetting"] is None
    seeds = [{"finetuned_acc": 0.8, "ood": {"a": 0.45}}, {"finetuned_acc": 0.9, "ood": {"a": 0.35}},
             {"finetuned_acc": 0.7, "ood": {"a": 0.40}}]
    s = summarize_seeds(0.5, {"a": 0.5}, seeds)
    ft = np.array([0.8, 0.9, 0.7])
    assert s["finetuned_acc"] == pytest.approx(ft.mean()) and s["gain"] == pytest.approx(ft.mean() - 0.5)
    assert s["normalized_gain"] == pytest.approx((ft.mean() - 0.5) / 0.5)
    assert s["ood"]["a"] == {"before": 0.5, "after": pytest.approx(0.4)}
    assert s["forgetting"] == pytest.approx(-0.1)
    assert s["std"]["finetuned_acc"] == pytest.approx(ft.std(ddof=1))
    assert s["std"]["gain"] == pytest.approx(ft.std(ddof=1))
    assert s["std"]["normalized_gain"] == pytest.approx((ft / 0.5).std(ddof=1))
    assert s["std"]["ood"]["a"] == pytest.approx(np.std([0.45, 0.35, 0.40], ddof=1))
    assert "std" not in summarize_seeds(0.5, {}, seeds[:1])


# ---- training ---------------------------------------------------------------------------------------

def naive_accuracy(model_name, items, classnames):
    """Zero-shot top-1 straight through open_clip, in float64 after encoding."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([TEMPLATE.replace("{}", c) for c in classnames])).double(), dim=-1)
        images = torch.stack([preprocess(Image.open(it.path).convert("RGB")) for it in items])
        feats = F.normalize(model.encode_image(images).double(), dim=-1)
    pred = (feats @ text.T).argmax(1).numpy()
    return float(np.mean(pred == np.array([it.label for it in items])))


def naive_best_epoch(history: list[dict]) -> int:
    """The epoch of highest validation accuracy; among those, the lowest validation loss; then the earliest."""
    top = max(h["val_acc"] for h in history)
    return min((h["val_loss"], h["epoch"]) for h in history if h["val_acc"] == top)[1]


def test_full_finetune_learns_the_digits_and_records_it(tmp_path, one_patch_model, digits_png_dir, other_task):
    store = tmp_path / "store"
    cfg = TrainConfig(epochs=3, lr=1e-4, optimizer="adamw", batch_size=8, schedule="constant")
    result = finetune(one_patch_model, str(digits_png_dir), "full", config=cfg, test_fraction=0.25,
                      evals=[str(other_task)], store=store, **FAST)
    r = result.record
    splits = split_task(str(digits_png_dir), test_fraction=0.25)
    assert r["zeroshot_acc"] == pytest.approx(naive_accuracy(one_patch_model, splits.test.items,
                                                             splits.test.classnames))
    assert r["finetuned_acc"] >= r["zeroshot_acc"] + 0.4, r["per_seed"][0]["history"]
    # arithmetic of the record
    assert r["gain"] == r["finetuned_acc"] - r["zeroshot_acc"]
    assert r["normalized_gain"] == pytest.approx(r["gain"] / (1 - r["zeroshot_acc"]))
    name = other_task.name
    before, after = r["ood"][name]["before"], r["ood"][name]["after"]
    assert 0 <= before <= 1 and 0 <= after <= 1 and r["forgetting"] == pytest.approx(after - before)
    other = load_image_dataset(str(other_task))
    assert before == pytest.approx(naive_accuracy(one_patch_model, other.items, other.classnames))
    # trainable parameters: everything but the logit scale
    base = open_clip.create_model(one_patch_model)
    assert r["trainable_params"] == sum(p.numel() for n, p in base.named_parameters() if n != "logit_scale")
    # best epoch = highest validation accuracy, ties to the lower validation loss; the checkpoint holds it
    history = r["per_seed"][0]["history"]
    assert len(history) == 3 and r["per_seed"][0]["best_epoch"] == naive_best_epoch(history)
    tuned, lm, info = load_finetuned(r["checkpoint"])
    tokens = prompt_tokens(lm.tokenizer, splits.test.classnames, [TEMPLATE], lm.device)
    acc = accuracy(tuned, splits.test, class_embeddings(tuned, tokens, 10), lm.preprocess, use_probe=True)
    assert acc.value == pytest.approx(r["finetuned_acc"]) and info["epoch"] == r["per_seed"][0]["best_epoch"]
    # zero-shot scores of the training images, the record on disk and in the listing
    assert {"iimm", "acs", "silhouette_class", "zeroshot_top1"} <= set(r["scores"])
    assert all(math.isfinite(v) for v in r["scores"].values())
    required = {"model", "pretrained", "method", "task", "hparams", "trainable_params", "zeroshot_acc",
                "finetuned_acc", "gain", "normalized_gain", "ood", "forgetting", "scores", "seconds", "checkpoint"}
    assert required <= set(r)
    on_disk = json.loads((result.run_dir / "record.json").read_text())
    assert on_disk["finetuned_acc"] == r["finetuned_acc"] and on_disk["hparams"]["lr"] == 1e-4
    listed = list_finetune_records(store, method="full", task=r["task"])
    assert [x["run_id"] for x in listed] == [r["run_id"]]
    assert list_finetune_records(store, method="lora") == []
    # and indexed in the registry, linked to the embedding set of its zero-shot scores
    with sqlite3.connect(store / "registry.sqlite") as con:
        row = con.execute("SELECT f.run_id, f.method, f.task, f.gain, f.forgetting, f.path, e.status FROM "
                          "finetune_runs f JOIN embedding_sets e ON e.id = f.embedding_set_id").fetchall()
    assert row == [(r["run_id"], "full", r["task"], r["gain"], r["forgetting"], str(result.run_dir / "record.json"),
                    "complete")]


def test_lora_and_adapter_training_leave_the_base_weights_bit_identical(tmp_path, tiny_model_dir, digits_png_dir):
    on_disk = load_file(str(tiny_model_dir / "open_clip_model.safetensors"))
    ds = load_image_dataset(str(digits_png_dir))
    cfg = TrainConfig(epochs=1, lr=0.05, wd=0.01, batch_size=25).resolved("lora")
    for method in ("lora", "adapter"):
        lm = load_model(f"local-dir:{tiny_model_dir}")
        tuned = tune_model(lm.model, method, MethodOptions(rank=2))
        start = {n: p.detach().clone() for n, p in tuned.named_trainable().items()}
        tokens = prompt_tokens(lm.tokenizer, ds.classnames, [TEMPLATE], lm.device)
        train_seed(tuned, ds, None, tokens, 10, lm.preprocess_train, lm.preprocess, cfg, seed=0,
                   folder=tmp_path / method, checkpoint_info={}, workers=0)
        assert any(not torch.equal(p, start[n]) for n, p in tuned.named_trainable().items())
        base = base_state_dict(lm.model)
        assert set(base) == set(on_disk)
        assert all(torch.equal(base[k], on_disk[k]) for k in on_disk), method


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, one_patch_model, digits_png_dir):
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=16)
    kw = dict(config=cfg, test_fraction=0.25, options=MethodOptions(rank=2), **FAST)
    straight = finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "a", **kw)

    def stop_after_first_epoch(stage, done, total, metrics=None):
        if stage == "epoch finished" and done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "b", progress=stop_after_first_epoch,
                 **kw)
    resumed = finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "b", resume=True, **kw)
    assert resumed.record["per_seed"][0]["resumed_epochs"] == 1
    assert resumed.record["run_id"] == straight.record["run_id"]
    for name in ("last.safetensors", "checkpoint.safetensors"):
        a = load_file(str(straight.run_dir / "seed-0" / name))
        b = load_file(str(resumed.run_dir / "seed-0" / name))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.record["finetuned_acc"] == straight.record["finetuned_acc"]
    def without_times(record):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in record["per_seed"][0]["history"]]

    assert without_times(resumed.record) == without_times(straight.record)
    stages = []
    again = finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "b", resume=True,
                     progress=lambda stage, *a: stages.append(stage), **kw)
    assert again.record["per_seed"][0]["resumed_epochs"] == 3 and not any("epoch" in s for s in stages)
    assert again.record["finetuned_acc"] == straight.record["finetuned_acc"]


def test_a_rerun_resumes_an_interrupted_identical_run_by_default_and_restart_discards_it(tmp_path, one_patch_model,
                                                                                         digits_png_dir):
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=32)
    kw = dict(config=cfg, test_fraction=0.25, options=MethodOptions(rank=2), store=tmp_path, **FAST)

    def stop_after_first_epoch(stage, done, total, metrics=None):
        if stage == "epoch finished" and done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(one_patch_model, str(digits_png_dir), "lora", progress=stop_after_first_epoch, **kw)
    said = []
    resumed = finetune(one_patch_model, str(digits_png_dir), "lora",
                       progress=lambda stage, done, total, m=None: said.append((stage, done, total, m)), **kw)
    assert resumed.record["per_seed"][0]["resumed_epochs"] == 1
    assert ("resuming", 1, 2, {"seed": 0, "run_id": resumed.record["run_id"], "complete": False}) in said
    said.clear()
    fresh = finetune(one_patch_model, str(digits_png_dir), "lora", restart=True,
                     progress=lambda stage, done, total, m=None: said.append(stage), **kw)
    assert fresh.record["per_seed"][0]["resumed_epochs"] == 0 and "resuming" not in said
    assert sum(s == "epoch finished" for s in said) == 2
    assert fresh.record["finetuned_acc"] == resumed.record["finetuned_acc"]  # the same training either way


def test_resume_is_bit_identical_on_one_torch_thread_with_numba_scores(tmp_path, one_patch_model, digits_png_dir):
    """The zero-shot scores (numba) run in the first run only; torch must train on the same single thread
    (this module's fixture: torch.set_num_threads(1)) in both runs."""
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=32)
    kw = dict(config=cfg, test_fraction=0.25, options=MethodOptions(rank=2), workers=0, score_backend="numba",
              templates=[TEMPLATE])
    threads = []

    def watch(stage, done, total, metrics=None):
        if stage == "epoch finished":
            threads.append(torch.get_num_threads())

    straight = finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "a", progress=watch, **kw)

    def stop_after_first_epoch(stage, done, total, metrics=None):
        watch(stage, done, total, metrics)
        if stage == "epoch finished" and done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "b", progress=stop_after_first_epoch,
                 **kw)
    resumed = finetune(one_patch_model, str(digits_png_dir), "lora", store=tmp_path / "b", progress=watch, **kw)
    assert threads == [1, 1, 1, 1] and resumed.record["per_seed"][0]["resumed_epochs"] == 1
    a = load_file(str(straight.run_dir / "seed-0" / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "seed-0" / "last.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_few_shot_seeds_select_on_out_of_domain_validation(tmp_path, one_patch_model, digits_png_dir, monkeypatch):
    import gc
    import weakref

    import iimm.engine.embedding.models as models_mod

    loaded, real_load = [], models_mod.load_model

    def load_after_the_last_model_is_freed(*a, **kw):  # one model in memory at a time, whatever the seeds
        gc.collect()
        assert all(ref() is None for ref in loaded), "an earlier seed's model is still alive"
        lm = real_load(*a, **kw)
        loaded.append(weakref.ref(lm.model))
        return lm

    monkeypatch.setattr(models_mod, "load_model", load_after_the_last_model_is_freed)
    ood = write_manifest(tmp_path / "ood.csv", digits_png_dir, domain="shifted")
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=8, shots=2, select_on="ood")
    r = finetune(one_patch_model, str(digits_png_dir), "adapter", config=cfg, test_fraction=0.25, ood_val=str(ood),
                 seeds=2, seed=5, store=tmp_path / "s", **FAST).record
    assert [p["seed"] for p in r["per_seed"]] == [5, 6]
    assert [p["train_images"] for p in r["per_seed"]] == [20, 20]
    assert r["hparams"]["select_on"] == "ood" and r["hparams"]["val"] == str(ood) and r["images"]["val"] == 200
    fts = [p["finetuned_acc"] for p in r["per_seed"]]
    assert r["finetuned_acc"] == pytest.approx(statistics.fmean(fts))
    assert r["std"]["finetuned_acc"] == pytest.approx(np.std(fts, ddof=1))
    for p in r["per_seed"]:
        vals = [h["val_acc"] for h in p["history"]]
        assert p["val_acc"] == max(vals) and p["best_epoch"] == naive_best_epoch(p["history"])
    assert r["trainable_params"] == 2 * 2 * 32 * (32 // 4)  # two adapters of Linear(32, 8) and Linear(8, 32)


def test_cli_prints_the_parameter_count_and_one_json_record(tmp_path, one_patch_model, digits_png_dir, other_task):
    args = ["--model", one_patch_model, "--data", str(digits_png_dir), "--method", "probe", "--test-fraction", "0.25",
            "--epochs", "1", "--eval", str(other_task), "--workers", "0", "--store", str(tmp_path / "store"),
            "--backend", "torch", "--template", TEMPLATE, "--no-progress", "--format", "json"]
    res = CliRunner().invoke(finetune_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert "330 trainable parameters" in res.stderr  # probe: (10 classes × 32) weights + 10 biases
    assert record["trainable_params"] == 330 and record["hparams"]["batch_size"] == 128
    # a probe leaves both towers frozen: the other task is unchanged
    assert record["forgetting"] == 0.0
    assert record["ood"][other_task.name]["after"] == record["ood"][other_task.name]["before"]
    table = CliRunner().invoke(finetune_command, args[:-2] + ["--batch-size", "32"],
                               catch_exceptions=False)
    assert table.exit_code == 0 and "fine-tuned accuracy" in table.stdout and "probe: 330 trainable" in table.stdout
    # --reuse: the same settings give the stored record, without training (no parameter-count line)
    again = CliRunner().invoke(finetune_command, args + ["--reuse"], catch_exceptions=False)
    assert again.exit_code == 0 and json.loads(again.stdout)["run_id"] == record["run_id"]
    assert json.loads(again.stdout)["created"] == record["created"] and "trainable parameters" not in again.stderr


@pytest.mark.parametrize("extra,message", [
    ([], "no test images"),
    (["--test-fraction", "0.2", "--shots", "2", "--fraction", "0.5"], "both --shots and --fraction"),
    (["--test-fraction", "0.2", "--select-on", "ood"], "--ood-val"),
])
def test_cli_bad_options_are_one_line_input_errors(tmp_path, one_patch_model, digits_png_dir, extra, message):
    args = ["--model", one_patch_model, "--data", str(digits_png_dir), "--method", "lora", "--workers", "0",
            "--store", str(tmp_path / "store"), "--no-progress"] + extra
    res = CliRunner().invoke(finetune_command, args)
    assert isinstance(res.exception, InputError), res.output
    assert message in str(res.exception) and "\n" not in str(res.exception)


def test_cli_refuses_train_blocks_for_another_method(tmp_path, one_patch_model, digits_png_dir, capsys):
    from iimm.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--model", one_patch_model, "--data", str(digits_png_dir), "--method", "lora",
              "--train-blocks", "1", "--test-fraction", "0.25", "--store", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "--train-blocks chooses the blocks of --method attention; drop it for --method lora" in capsys.readouterr().err


def test_too_deep_train_blocks_fail_before_any_image_is_encoded(tmp_path, one_patch_model, digits_png_dir,
                                                                 monkeypatch):
    import iimm.engine.embedding.extract as extract_mod

    monkeypatch.setattr(extract_mod, "embed_dataset", lambda *a, **kw: pytest.fail("images were encoded"))
    with pytest.raises(InputError, match="--train-blocks 5, but the model's towers have 2 and 2 blocks"):
        finetune(one_patch_model, str(digits_png_dir), "attention", options=MethodOptions(train_blocks=5),
                 test_fraction=0.25, store=tmp_path / "s", **FAST)


# ---- epoch selection, validation size ----------------------------------------------------------------

def test_tied_validation_accuracy_goes_to_the_lower_validation_loss():
    from iimm.engine.finetune.trainer import is_better

    assert is_better(0.6, 0.9, 0.5, 0.1)  # where accuracies differ, the papers' rule whatever the loss
    assert not is_better(0.5, 0.1, 0.6, 0.9)
    assert is_better(0.5, 0.4, 0.5, 0.5)
    assert not is_better(0.5, 0.5, 0.5, 0.5) and not is_better(0.5, 0.6, 0.5, 0.5)
    assert is_better(None, None, 0.5, 0.5) and is_better(0.5, 0.5, None, None)


def test_epochs_of_equal_validation_accuracy_keep_the_lowest_validation_loss(tmp_path, tiny_model_dir,
                                                                              digits_png_dir):
    ds = load_image_dataset(str(digits_png_dir))
    lm = load_model(f"local-dir:{tiny_model_dir}")
    tokens = prompt_tokens(lm.tokenizer, ds.classnames, [TEMPLATE], lm.device)
    cls = class_embeddings(tune_model(lm.model, "probe", num_classes=10), tokens, 10)  # zero-shot init
    lm = load_model(f"local-dir:{tiny_model_dir}")
    tuned = tune_model(lm.model, "probe", MethodOptions(), class_embeddings=cls)
    cfg = TrainConfig(epochs=3, lr=2e-4, batch_size=50).resolved("probe")  # too small a step to move an argmax
    res = train_seed(tuned, ds, ds, tokens, 10, lm.preprocess, lm.preprocess, cfg, seed=0, folder=tmp_path / "s",
                     checkpoint_info={}, workers=0)
    assert len({h["val_acc"] for h in res.history}) == 1, res.history  # every epoch tied on accuracy
    assert res.best_epoch == naive_best_epoch(res.history) != 1  # the papers' rule alone keeps epoch 1
    assert res.val_images == len(ds)


def test_a_small_validation_split_is_warned_about_and_counted(tmp_path, one_patch_model, digits_png_dir):
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=32)
    stages = []
    r = finetune(one_patch_model, str(digits_png_dir), "probe", config=cfg, test_fraction=0.25, store=tmp_path,
                 progress=lambda stage, done, total, m=None: stages.append((stage, m)), **FAST).record
    assert r["images"]["val"] == 20 and r["per_seed"][0]["val_images"] == 20  # 2 of 15 per class
    assert len(r["warnings"]) == 1 and "validation split has 20 images" in r["warnings"][0]
    assert ("warning", {"message": r["warnings"][0]}) in stages
