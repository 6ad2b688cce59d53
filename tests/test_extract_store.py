"""engine/embedding/extract.py + engine/embedding/store.py + `iimm embed` / `iimm models`: images in, scores and a reusable store out."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fixtures_tiny import embed_in_child, embed_killed_midway, open_store_in_child, write_digits_png
from iimm.cli.embed import embed
from iimm.cli.models_cmd import models
from iimm.engine import EmbeddingSet, load_embeddings, score
from iimm.engine.embedding import extract as extract_mod
from iimm.errors import InputError
from iimm.engine.embedding.extract import embed_dataset
from iimm.engine.files import write_npy_atomic
from iimm.engine.embedding.store import Store

TEMPLATES = ["a photo of a {}.", "a drawing of the number {}."]
# Children fork from a clean server process that imported torch once (plain fork from the threaded
# pytest process can deadlock; spawn would import torch once per child).
FORK = multiprocessing.get_context("forkserver")
FORK.set_forkserver_preload(["torch", "iimm.engine.embedding.extract"])


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    """5 classes × 10 digits: enough rows for several shards, cheap for subprocess runs."""
    return write_digits_png(tmp_path_factory.mktemp("small-digits"), per_class=10, classes=5)


def _direct_embeddings(model_dir, root: Path, templates):
    """Embeddings computed image by image with open_clip alone, in the documented order."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows, labels = [], []
    with torch.no_grad():
        for c, name in enumerate(classes):
            files = sorted((root / name).glob("*.png"), key=lambda p: int(p.stem))
            for f in files:
                x = preprocess(Image.open(f).convert("RGB"))[None]
                rows.append(model.encode_image(x)[0].double().numpy())
                labels.append(c)
        text = []
        for name in classes:
            prompts = [t.replace("{}", name.replace("_", " ")) for t in templates]
            e = model.encode_text(tokenizer(prompts)).double()
            e = e / e.norm(dim=1, keepdim=True)
            m = e.mean(0)
            text.append((m / m.norm()).numpy())
    return np.stack(rows), np.array(labels), np.stack(text)


def _all_rows(es: EmbeddingSet) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in es.image_blocks])


def test_scores_from_images_equal_scores_of_direct_open_clip(tmp_path, tiny_model_dir, small_digits):
    image, label, text = _direct_embeddings(tiny_model_dir, Path(small_digits), TEMPLATES)
    want = score(EmbeddingSet.from_arrays(image, label, text), backend="torch").scores
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), templates=TEMPLATES, dtype="fp32",
                             store=tmp_path / "store", batch_size=16, workers=1)
    assert info.images == 50 and info.skipped == [] and not info.cached and info.encoded == 50
    assert es.classnames == ["digit four", "digit one", "digit three", "digit two", "digit zero"]
    np.testing.assert_array_equal(es.label, label)
    np.testing.assert_allclose(_all_rows(es), image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(es.text, text, atol=1e-6)
    got = score(es, backend="torch").scores
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5), k
    # fp16 storage: rows are the fp32 rows rounded to half precision
    es16, _ = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), templates=TEMPLATES,
                            use_cache=False, workers=0)
    assert es16.image_dtype == np.float16
    np.testing.assert_allclose(_all_rows(es16).astype(np.float64), image, rtol=2e-3, atol=1e-4)
    got16 = score(es16, backend="torch").scores
    for k in ("iimm", "acs", "gap", "zeroshot_top1"):
        assert got16[k] == pytest.approx(want[k], abs=2e-3), k


def test_second_run_is_a_cache_hit_without_loading_the_model(tmp_path, tiny_model_dir, digits_png_dir,
                                                              monkeypatch):
    kw = dict(store=tmp_path / "store", workers=0, shard_rows=64)
    es1, info1 = embed_dataset(f"local-dir:{tiny_model_dir}", str(digits_png_dir), **kw)
    assert not info1.cached and sorted(os.listdir(info1.location))[:2] == ["classnames.json", "image-00000.npy"]

    def no_model(*a, **k):
        raise AssertionError("a cache hit must not build the model")

    monkeypatch.setattr(extract_mod, "load_model", no_model)
    es2, info2 = embed_dataset(f"local-dir:{tiny_model_dir}", str(digits_png_dir), **kw)
    assert info2.cached and info2.encoded == 0 and info2.location == info1.location
    np.testing.assert_array_equal(_all_rows(es2), _all_rows(es1))
    np.testing.assert_array_equal(es2.text, es1.text)
    monkeypatch.undo()
    # other prompts: the image shards are shared, only the texts are computed
    es3, info3 = embed_dataset(f"local-dir:{tiny_model_dir}", str(digits_png_dir), template_set="mnist", **kw)
    assert info3.cached and info3.encoded == 0 and info3.location != info1.location
    np.testing.assert_array_equal(_all_rows(es3), _all_rows(es1))
    assert not np.allclose(es3.text, es1.text)
    # the same result loads from the printed folder
    again = load_embeddings(info3.location)
    assert again.n == 200 and again.meta["templates"] == ['a photo of the number: "{}".']


def test_changed_image_invalidates_and_deleted_shard_rebuilds(tmp_path, tiny_model_dir, small_digits):
    root = tmp_path / "digits"
    shutil.copytree(small_digits, root)
    kw = dict(store=tmp_path / "store", workers=0, shard_rows=20)
    _, first = embed_dataset(f"local-dir:{tiny_model_dir}", str(root), **kw)
    victim = root / "digit_two" / "0.png"
    Image.open(victim).transpose(Image.FLIP_LEFT_RIGHT).save(victim)
    es, second = embed_dataset(f"local-dir:{tiny_model_dir}", str(root), **kw)
    assert second.encoded == 50 and second.location != first.location
    os.unlink(Path(second.location) / "image-00001.npy")
    es_rebuilt, third = embed_dataset(f"local-dir:{tiny_model_dir}", str(root), **kw)
    assert third.location == second.location and third.encoded == 20  # the deleted shard alone, not the set
    np.testing.assert_array_equal(_all_rows(es_rebuilt), _all_rows(es))


def test_unreadable_images_and_empty_class(tmp_path, tiny_model_dir, small_digits):
    root = tmp_path / "digits"
    shutil.copytree(small_digits, root)
    (root / "digit_four" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "empty_class").mkdir()
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(root), store=tmp_path / "store", workers=1,
                             shard_rows=64)
    assert info.skipped == [str(root / "digit_four" / "corrupt.png")] and info.images == 50 and es.n == 50
    assert es.c == 6 and es.classnames[-1] == "empty class" and np.bincount(es.label, minlength=6)[-1] == 0
    assert load_embeddings(info.location).meta["skipped"] == info.skipped
    _, cached = embed_dataset(f"local-dir:{tiny_model_dir}", str(root), store=tmp_path / "store", workers=0)
    assert cached.cached and cached.skipped == info.skipped
    with pytest.raises(InputError, match=r"1 of 51 images could not be read .*corrupt\.png") as err:
        embed_dataset(f"local-dir:{tiny_model_dir}", str(root), use_cache=False, workers=0, max_skip_frac=0.0)
    assert "\n" not in str(err.value) and "--max-skip-frac" in str(err.value)
    for i in range(3):
        (root / "digit_one" / f"bad{i}.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="4 of 54 images could not be read"):
        embed_dataset(f"local-dir:{tiny_model_dir}", str(root), use_cache=False, workers=0)


def test_manifest_split_through_extraction(tmp_path, tiny_model_dir, digits_png_dir):
    lines = ["path,label,split"]
    for i, f in enumerate(sorted(Path(digits_png_dir).glob("*/*.png"))):
        lines.append(f"{f},{f.parent.name},{'train' if i % 4 else 'test'}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(tmp_path / "m.csv"), split="test", use_cache=False,
                             workers=0)
    assert info.images == 50 and es.c == 10 and es.classnames[0] == "digit_eight"


def test_resume_after_the_extraction_is_killed(tmp_path, tiny_model_dir, small_digits):
    store = tmp_path / "store"
    args = (f"local-dir:{tiny_model_dir}", str(small_digits), str(store))
    child = FORK.Process(target=embed_killed_midway, args=args)
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    with sqlite3.connect(store / "registry.sqlite") as con:
        status = con.execute("SELECT status FROM embedding_sets").fetchall()
        shards = con.execute("SELECT idx, rows FROM shards ORDER BY idx").fetchall()
    assert status == [("partial",)] and shards == [(0, 10), (1, 10)]
    es, info = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), store=store, workers=0,
                             batch_size=5, shard_rows=10)
    assert info.encoded == 30 and not info.cached and es.n == 50
    fresh, _ = embed_dataset(f"local-dir:{tiny_model_dir}", str(small_digits), use_cache=False, workers=0)
    np.testing.assert_array_equal(_all_rows(es), _all_rows(fresh))
    np.testing.assert_array_equal(es.label, fresh.label)
    assert not [p for p in Path(info.location).iterdir() if p.name.startswith(".")]


def test_two_runs_at_once_share_one_store(tmp_path, tiny_model_dir, small_digits):
    """Two processes start together on one store: one encodes, the other waits and reuses; nothing corrupts."""
    barrier, results = FORK.Barrier(2), FORK.Queue()
    args = (f"local-dir:{tiny_model_dir}", str(small_digits), str(tmp_path / "store"), barrier, results)
    children = [FORK.Process(target=embed_in_child, args=args) for _ in range(2)]
    for c in children:
        c.start()
    outs = [results.get(timeout=300) for _ in children]
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    assert sorted(o["encoded"] for o in outs) == [0, 50]
    assert outs[0]["location"] == outs[1]["location"] and outs[0]["n"] == 50
    with sqlite3.connect(tmp_path / "store" / "registry.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute("SELECT COUNT(*), MIN(status) FROM embedding_sets").fetchone() == (1, "complete")


def test_many_processes_open_a_fresh_store_together(tmp_path):
    """Switching a new registry to WAL needs an exclusive lock that SQLite may refuse without waiting;
    eight openers racing on 40 fresh stores must all succeed (each try failed about 1 in 70 before the retry)."""
    errors = []
    for trial in range(40):
        barrier, results = FORK.Barrier(8), FORK.Queue()
        children = [FORK.Process(target=open_store_in_child, args=(str(tmp_path / f"s{trial}"), barrier, results))
                    for _ in range(8)]
        for c in children:
            c.start()
        errors += [r for r in (results.get(timeout=120) for _ in children) if r != "ok"]
        for c in children:
            c.join(60)
    assert errors == []


def test_store_registry_helpers(tmp_path, tiny_model_dir):
    st = Store(tmp_path / "s")
    ddl = ["CREATE TABLE finetune_runs (id INTEGER PRIMARY KEY, embedding_set_id TEXT REFERENCES embedding_sets(id))"]
    assert st.migrate("finetune", 1, ddl) is True
    assert st.migrate("finetune", 1, ddl) is False
    run = st.record_score_run({"iimm": 0.25}, input="x", backend="torch", seconds=0.1)
    assert run == 1
    with st.connect() as con:
        assert json.loads(con.execute("SELECT scores FROM score_runs").fetchone()[0]) == {"iimm": 0.25}
    from iimm.engine.embedding.models import file_fingerprint, resolve_model
    resolve_model(f"local-dir:{tiny_model_dir}", hash_memo=st.hash_memo()).fingerprint
    weights = Path(tiny_model_dir) / "open_clip_model.safetensors"
    assert list(st.hash_memo().values()) == [file_fingerprint(weights)]
    write_npy_atomic(tmp_path / "s" / "x.npy", np.arange(3))
    assert not [f for f in os.listdir(tmp_path / "s") if f.startswith(".")]
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "x.npy"), np.arange(3))


def test_default_store_root_follows_iimm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IIMM_HOME", str(tmp_path / "home"))
    assert Store().root == tmp_path / "home"
    monkeypatch.delenv("IIMM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Store().root == tmp_path / ".cache" / "iimm"


def test_option_validation(tiny_model_dir, digits_png_dir):
    for bad, match in [(dict(batch_size=0), "batch size"), (dict(dtype="fp8"), "dtype"),
                       (dict(max_skip_frac=1.5), "max-skip-frac"), (dict(workers=-1), "workers")]:
        with pytest.raises(InputError, match=match):
            embed_dataset(f"local-dir:{tiny_model_dir}", str(digits_png_dir), use_cache=False, **bad)


def test_cli_embed_and_models(tmp_path, tiny_model_dir, digits_png_dir):
    runner = CliRunner()
    base = ["--model", f"local-dir:{tiny_model_dir}", "--data", str(digits_png_dir), "--store", str(tmp_path / "s"),
            "--workers", "0", "--no-progress"]
    res = runner.invoke(embed, base + ["--templates", "mnist", "--template", "a {}"])
    assert res.exit_code == 0, res.output
    folder = res.output.strip().splitlines()[-1]
    es = load_embeddings(folder)
    assert es.n == 200 and es.meta["templates"] == ["a {}", 'a photo of the number: "{}".']
    res = runner.invoke(embed, base + ["--templates", "mnist", "--template", "a {}", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.output)["cached"] is True
    res = runner.invoke(embed, base + ["--no-cache", "--output", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    npz = load_embeddings(tmp_path / "e.npz")
    assert npz.n == 200 and npz.classnames == es.classnames
    res = runner.invoke(embed, base + ["--no-cache"])
    assert isinstance(res.exception, InputError) and "--output" in str(res.exception)
    res = runner.invoke(embed, ["--model", "ViT-B-32", "--data", str(digits_png_dir)])
    assert isinstance(res.exception, InputError) and "--pretrained random" in str(res.exception)
    res = runner.invoke(embed, base + ["--templates", "nope"])
    assert isinstance(res.exception, InputError) and "built-in sets" in str(res.exception)
    res = runner.invoke(models, ["--format", "json"])
    rows = json.loads(res.output)
    assert [r["alias"] for r in rows[:4]] == ["clip", "siglip", "coca", "eva02"]
    assert all(isinstance(r["cached"], bool) for r in rows)
    res = runner.invoke(models, ["--filter", "EVA02-B-16"])
    assert "merged2b_s8b_b131k" in res.output and "eva02" in res.output


def test_cli_score_from_images_matches_score_of_embeddings(tmp_path, tiny_model_dir, small_digits):
    from iimm.cli.score import score as score_cmd
    runner = CliRunner()
    base = ["--model", f"local-dir:{tiny_model_dir}", "--data", str(small_digits), "--store", str(tmp_path / "s"),
            "--workers", "0", "--no-progress", "--format", "json", "--backend", "torch", "--device", "cpu"]
    first = runner.invoke(score_cmd, base)
    assert first.exit_code == 0, first.output
    a = json.loads(first.output)
    assert {"input", "n", "d", "c", "backend", "device", "seconds", "version", "scores", "model", "pretrained",
            "data", "images", "skipped", "cached"} <= set(a)
    assert a["cached"] is False and a["images"] == 50 and a["skipped"] == [] and a["data"] == str(small_digits)
    second = json.loads(runner.invoke(score_cmd, base).output)
    assert second["cached"] is True and second["scores"] == a["scores"]
    by_folder = runner.invoke(score_cmd, ["--embeddings", a["input"], "--format", "json", "--backend", "torch",
                                          "--no-progress"])
    assert json.loads(by_folder.output)["scores"] == a["scores"]
    with sqlite3.connect(tmp_path / "s" / "registry.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM score_runs WHERE embedding_set_id IS NOT NULL").fetchone() == (2,)
    res = runner.invoke(score_cmd, ["--no-progress"])
    assert isinstance(res.exception, InputError) and "--embeddings PATH" in str(res.exception)
    res = runner.invoke(score_cmd, ["--model", "clip", "--no-progress"])
    assert isinstance(res.exception, InputError) and "--data is missing" in str(res.exception)



def test_stored_embeddings_finds_the_set_embed_dataset_wrote_with_the_sources_own_templates(tmp_path, tiny_model_dir,
                                                                                        small_digits):
    """A scheduler's look-up (`stored_embeddings`) names the very set `embed_dataset` writes, also when the
    dataset brings its own prompt templates (CLIP_benchmark roots, benchmarks by name) and none are given."""
    from iimm.engine.embedding.data import load_image_dataset
    from iimm.engine.embedding.extract import stored_embeddings
    from iimm.engine.embedding.models import resolve_model

    ds = load_image_dataset(str(small_digits))
    ds.templates = ["a blurry photo of the digit {}.", "a drawing of {}."]
    spec = resolve_model(f"local-dir:{tiny_model_dir}")
    store = tmp_path / "store"
    assert stored_embeddings(spec, ds, device="cpu", store=store) == (50, False)
    embed_dataset(spec, ds, store=store, workers=0, device="cpu")
    assert stored_embeddings(spec, ds, device="cpu", store=store) == (50, True)
    assert stored_embeddings(spec, ds, templates=["a photo of {}."], device="cpu", store=store) == (50, False)
