"""Loading embeddings: .npz, folders, memory-mapped shards, and every bad input named in one line."""

import json

import numpy as np
import pytest

from iimm.engine import EmbeddingSet, InputError, load_embeddings, score
from synthetic import structured


def write_folder(path, x, y, t, classnames=None):
    path.mkdir()
    np.save(path / "image.npy", x)
    np.save(path / "label.npy", y)
    np.save(path / "text.npy", t)
    if classnames is not None:
        (path / "classnames.json").write_text(json.dumps(classnames))
    return path


def test_npz_and_folder_load_the_same_scores(tmp_path):
    x, y, t = structured(0, 120, 21, 4)
    np.savez(tmp_path / "e.npz", image=x, label=y, text=t, classnames=np.array(["a", "b", "c", "d"]))
    es_npz = load_embeddings(tmp_path / "e.npz")
    es_dir = load_embeddings(write_folder(tmp_path / "f", x, y, t, ["a", "b", "c", "d"]))
    assert es_npz.classnames == es_dir.classnames == ["a", "b", "c", "d"]
    assert isinstance(es_dir.image_blocks[0], np.memmap)
    a = score(es_npz, backend="torch").scores
    b = score(es_dir, backend="torch", chunk_rows=13).scores
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-7, abs=1e-12)


def test_sharded_folder_reads_in_order_and_matches_single_file(tmp_path):
    x, y, t = structured(1, 100, 16, 3)
    d = tmp_path / "shards"
    d.mkdir()
    for i, (lo, hi) in enumerate([(0, 30), (30, 31), (31, 100)]):
        np.save(d / f"image-{i:05d}.npy", x[lo:hi].astype(np.float16))
        np.save(d / f"label-{i:05d}.npy", y[lo:hi])
    np.save(d / "text.npy", t)
    es = load_embeddings(d)
    assert es.n == 100 and len(es.image_blocks) == 3
    chunks = list(es.iter_chunks(25))
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), x.astype(np.float16))
    assert [c[0] for c in chunks] == sorted(c[0] for c in chunks)
    idx = np.array([0, 29, 30, 31, 99])
    assert np.array_equal(es.rows(idx), x.astype(np.float16)[idx])
    single = score(EmbeddingSet.from_arrays(x.astype(np.float16), y, t), backend="torch").scores
    sharded = score(es, backend="torch", chunk_rows=25).scores
    for k in single:
        assert sharded[k] == pytest.approx(single[k], rel=1e-6, abs=1e-9)


def test_memory_mapped_rows_are_not_loaded(tmp_path):
    x, y, t = structured(2, 5000, 8, 3)
    es = load_embeddings(write_folder(tmp_path / "m", x, y, t))
    seen = [rows for _, rows, _ in es.iter_chunks(1000)]
    assert all(isinstance(r, np.memmap) for r in seen)


@pytest.mark.parametrize("mutate,message", [
    (lambda a: a.update(text=a["text"][:, :5]), "D=21 but text embeddings have D=5"),
    (lambda a: a.update(label=a["label"][:-1]), "but 119 labels"),
    (lambda a: a["label"].__setitem__(4, -1), "label of row 4 is -1"),
    (lambda a: a["label"].__setitem__(9, 4), "label of row 9 is 4 but there are only 4 class texts"),
    (lambda a: a.update(label=a["label"] + 0.5), "label of row 0 is 2.5, not an integer"),
    (lambda a: a.update(image=a["image"][:1], label=a["label"][:1]), "at least 2 rows"),
    (lambda a: a["text"].__setitem__((2, 0), np.inf), "class 2 has NaN or Inf"),
    (lambda a: a["text"].__setitem__(1, 0.0), "class 1 is all zeros"),
    (lambda a: a.update(image=a["image"].astype(np.int32)), "dtype int32"),
    (lambda a: a.pop("text"), "lacks the array(s) text"),
])
def test_bad_inputs_raise_one_line(tmp_path, mutate, message):
    x, y, t = structured(3, 120, 21, 4)
    arrays = {"image": x, "label": y, "text": t}
    mutate(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as err:
        load_embeddings(tmp_path / "bad.npz")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_embeddings(tmp_path / "nope.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match="cannot read embeddings"):
        load_embeddings(tmp_path / "broken.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image.npy"):
        load_embeddings(tmp_path / "empty")
