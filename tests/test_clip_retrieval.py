"""clip-retrieval output folders (img_emb/*.npy + metadata/*.parquet) as `--embeddings` input."""

from __future__ import annotations

import json
import sys

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from iimm.cli.main import cli, main
from iimm.engine import EmbeddingSet, load_embeddings, score
from iimm.errors import InputError
from synthetic import structured

# class keys whose natural order (cat < dog_2 < dog_10 < eel) differs from plain string order
KEYS = ["cat", "dog_2", "dog_10", "eel", "fox"]


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def write_clip_retrieval(folder, image, paths, parts, extra_columns=None, padding=0):
    """Write `image` rows as clip-retrieval does: img_emb/img_emb_<k>.npy + metadata/metadata_<k>.parquet."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    start = 0
    for k, n in parts:
        name = str(k).zfill(padding)
        np.save(folder / "img_emb" / f"img_emb_{name}.npy", image[start:start + n])
        columns = {"image_path": paths[start:start + n]}
        for col, values in (extra_columns or {}).items():
            columns[col] = values[start:start + n]
        pq.write_table(pa.table(columns), folder / "metadata" / f"metadata_{name}.parquet")
        start += n
    return folder


@pytest.fixture
def task():
    """(image (120, 37) float16, label (120,), text (5, 37)) over the classes KEYS, a one-row class included."""
    x, y, text = structured(seed=3, n=120, d=37, c=5, empty=False, dtype=np.float16)
    paths = [f"/data/pets/{KEYS[c]}/{i:04d}.jpg" for i, c in enumerate(y)]
    return x, y, text, paths


def test_scores_equal_those_of_the_same_rows_given_as_arrays(tmp_path, task):
    x, y, text, paths = task
    # partitions 2 and 10 unpadded: numeric order, not name order (img_emb_10 sorts before img_emb_2)
    folder = write_clip_retrieval(tmp_path / "out", x, paths, [(2, 70), (10, 50)])
    np.save(folder / "text.npy", text)
    es = load_embeddings(folder)
    assert isinstance(es.image_blocks[0], np.memmap) and [len(b) for b in es.image_blocks] == [70, 50]
    np.testing.assert_array_equal(es.label, y)
    assert es.classnames == ["cat", "dog 2", "dog 10", "eel", "fox"]
    expected = score(EmbeddingSet.from_arrays(x, y, text), backend="torch").scores
    got = score(es, backend="torch").scores
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key  # float32 row products


def test_label_column_string_and_integer_and_classnames_order(tmp_path, task):
    x, y, text, paths = task
    shuffled = ["fox", "eel", "cat", "dog_10", "dog_2"]
    named = [KEYS[c] for c in y]
    folder = write_clip_retrieval(tmp_path / "a", x, [f"/flat/{i}.jpg" for i in range(len(y))], [(0, 60), (1, 60)],
                                  {"label": named, "species": [int(c) for c in y]}, padding=2)
    np.save(folder / "text.npy", text[[KEYS.index(k) for k in shuffled]])
    (folder / "classnames.json").write_text(json.dumps(shuffled))  # the list gives the class order
    es = load_embeddings(folder)
    np.testing.assert_array_equal(es.label, [shuffled.index(k) for k in named])
    assert es.classnames == ["fox", "eel", "cat", "dog 10", "dog 2"]
    ref = score(EmbeddingSet.from_arrays(x, y, text), ["iimm", "zeroshot_top1"], backend="torch").scores
    assert score(es, ["iimm", "zeroshot_top1"], backend="torch").scores == pytest.approx(ref, rel=1e-9)

    (folder / "classnames.json").unlink()
    np.save(folder / "text.npy", text)
    by_index = load_embeddings(folder, label_column="species", classnames={str(i): f"c{i}" for i in range(5)})
    np.testing.assert_array_equal(by_index.label, y)
    assert by_index.classnames == ["c0", "c1", "c2", "c3", "c4"]
    with pytest.raises(InputError, match="must name every class index"):  # integer labels need every name
        load_embeddings(folder, label_column="species", classnames={"0": "a cat", "3": "an eel"})


def test_whole_float_indices_and_empty_partitions(tmp_path, task):
    """Class indices stored as floats are indices; an empty partition (its column of Arrow type null) is no class."""
    x, y, text, paths = task
    folder = write_clip_retrieval(tmp_path / "out", x, paths, [(0, 50), (1, 70)], {"label": y.astype(np.float64)})
    pq.write_table(pa.table({"image_path": pa.array([], pa.string()), "label": pa.nulls(0)}),
                   folder / "metadata" / "metadata_2.parquet")
    np.save(folder / "img_emb" / "img_emb_2.npy", np.zeros((0, x.shape[1]), np.float16))
    np.save(folder / "text.npy", text)
    es = load_embeddings(folder)
    np.testing.assert_array_equal(es.label, y)
    assert es.classnames is None and es.n == len(y)


def test_label_npy_beside_the_shards_needs_no_metadata(tmp_path, task, monkeypatch):
    x, y, text, paths = task
    folder = tmp_path / "out"
    (folder / "img_emb").mkdir(parents=True)
    np.save(folder / "img_emb" / "img_emb_0.npy", x)
    np.save(folder / "label.npy", y)
    np.save(folder / "text.npy", text)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # not needed on this path
    np.testing.assert_array_equal(load_embeddings(folder).label, y)


def test_cli_encodes_the_class_texts_with_the_model(tmp_path, tiny_model_dir):
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny_model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_model_dir}")
    templates = ["a photo of a {}.", "a sketch of a {}."]
    names = ["cat", "dog 2", "dog 10", "eel", "fox"]
    with torch.no_grad():
        text = []
        for name in names:
            e = model.encode_text(tokenizer([t.format(name) for t in templates])).double()
            e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            text.append((e / e.norm()).numpy())
    d = len(text[0])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=80)
    x = (np.stack(text)[y] + 0.05 * rng.normal(size=(80, d))).astype(np.float32)
    folder = write_clip_retrieval(tmp_path / "out", x, [f"/d/{KEYS[c]}/{i}.png" for i, c in enumerate(y)],
                                  [(0, 80)])
    args = ["score", "--embeddings", str(folder), "--model", f"local-dir:{tiny_model_dir}", "--backend", "torch",
            "--metrics", "iimm,zeroshot_top1,acs", "--format", "json", "--no-progress"]
    for t in templates:
        args += ["--template", t]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["scores"]
    ref = score(EmbeddingSet.from_arrays(x, y, np.stack(text)), ["iimm", "zeroshot_top1", "acs"],
                backend="torch").scores
    assert got == pytest.approx(ref, rel=1e-5)
    assert got["zeroshot_top1"] == 1.0
    # the model's own softmax scale reaches LEEP / NCE, as for images encoded by iimm
    from iimm.engine.embedding.extract import class_text_encoder
    es = load_embeddings(folder, class_texts=class_text_encoder(f"local-dir:{tiny_model_dir}", templates=templates))
    assert es.meta["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    np.testing.assert_allclose(es.text, np.stack(text), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case,message", [
    ("no-text", "has no class text embeddings; pass --model M"),
    ("missing-partition", "img_emb partitions [0, 1] but metadata partitions [0]"),
    ("short-metadata", "has 40 rows but img_emb_1.npy has 60"),
    ("bad-column", "has no column 'breed'"),
    ("unlisted-class", "class 'fox' is not in classnames.json"),
    ("no-class", "row 5 has no class in the metadata"),
    ("null-index", "row 70 has no class in the metadata column 'species'"),
    ("mixed-types", "holds numbers in some partitions and text in others"),
    ("flat-paths", "give 1 class folder(s) (''); pass --label-column"),
    ("label-npy-and-column", "has label.npy, which gives every row's class; drop --label-column"),
    ("no-pyarrow", "needs pyarrow; pip install 'iimm[clip-retrieval]'"),
    ("wrong-text-rows", "5 classes but text.npy has 4 rows"),
    ("no-shards", "holds no img_emb_<k>.npy files"),
])
def test_bad_folders_are_one_line_errors(tmp_path, task, monkeypatch, capsys, case, message):
    x, y, text, paths = task
    columns = None
    if case == "no-class":
        columns = {"label": [None if i == 5 else KEYS[c] for i, c in enumerate(y)]}
    elif case == "null-index":  # an integer column with a gap reads back as floats with NaN
        columns = {"species": [None if i == 70 else int(c) for i, c in enumerate(y)]}
    elif case == "flat-paths":
        paths = [f"{i}.jpg" for i in range(len(y))]
    folder = write_clip_retrieval(tmp_path / "out", x, paths, [(0, 60), (1, 60)], columns)
    if case == "mixed-types":
        pq.write_table(pa.table({"label": [int(c) for c in y[60:]]}), folder / "metadata" / "metadata_1.parquet")
        pq.write_table(pa.table({"label": [KEYS[c] for c in y[:60]]}), folder / "metadata" / "metadata_0.parquet")
    elif case == "label-npy-and-column":
        np.save(folder / "label.npy", y)
    if case != "no-text":
        np.save(folder / "text.npy", text[:4] if case == "wrong-text-rows" else text)
    extra = []
    if case == "missing-partition":
        (folder / "metadata" / "metadata_1.parquet").unlink()
    elif case == "short-metadata":
        pq.write_table(pa.table({"image_path": paths[60:100]}), folder / "metadata" / "metadata_1.parquet")
    elif case in ("bad-column", "null-index", "label-npy-and-column"):
        extra = ["--label-column", {"bad-column": "breed", "null-index": "species"}.get(case, "label")]
    elif case == "unlisted-class":
        (folder / "classnames.json").write_text(json.dumps(KEYS[:4]))
    elif case == "no-pyarrow":
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    elif case == "no-shards":
        for f in (folder / "img_emb").iterdir():
            f.unlink()
    code, out, err = run_main(["score", "--embeddings", str(folder), "--backend", "torch", *extra], capsys)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_clip_retrieval_options_on_other_inputs_are_refused(tmp_path, task, capsys):
    x, y, text, _ = task
    np.savez(tmp_path / "t.npz", image=x, label=y, text=text)
    with pytest.raises(InputError, match="not a clip-retrieval folder"):
        load_embeddings(tmp_path / "t.npz", label_column="label")
    (tmp_path / "names.json").write_text(json.dumps(KEYS))
    code, _, err = run_main(["score", "--embeddings", str(tmp_path / "t.npz"), "--classnames",
                             str(tmp_path / "names.json")], capsys)
    assert code == 2 and "not a clip-retrieval folder" in err
    code, _, err = run_main(["score", "--embeddings", str(tmp_path / "t.npz"), "--template", "a {}."], capsys)
    assert code == 2 and "need --model M" in err
