"""`iimm bench` and engine.bench: rows, skips with reasons, peers that agree, files written whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from iimm.cli.bench import bench
from iimm.engine.scoring.bench import run_bench, synthetic_task
from iimm.errors import InputError

SMALL = ["--n", "2500", "--d", "40", "--c", "5", "--pair-n", "300", "--repeats", "1", "--device", "cpu",
         "--no-progress"]


def definitions(n, d, c, pair_n, seed=0):
    """The quantities each op computes, straight from their float64 definitions on the same synthetic rows."""
    data = synthetic_task(n, d, c, torch.float16, torch.device("cpu"), seed)
    x = data.rows.double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = data.labels.numpy()
    total = x.sum(0)
    intra = (total @ total - (x * x).sum()) / (n * (n - 1))
    sims = x @ data.text.numpy().T
    top1 = float(np.mean(sims.argmax(1) == y))
    from sklearn.metrics import silhouette_score
    sil = float(silhouette_score(x[:pair_n], y[:pair_n], metric="euclidean"))
    return {"class_sums": intra, "cross_reduce": top1, "pairwise_euclidean": sil}


def test_run_bench_values_match_the_definitions_and_peers():
    rows = run_bench(2500, 40, 5, ["torch", "triton"], device="cpu", repeats=1, pair_n=300)
    want = definitions(2500, 40, 5, 300)
    by = {(r.op, r.impl): r for r in rows}
    for op, value in want.items():
        r = by[op, "torch"]
        assert r.seconds > 0 and r.rows_per_s > 0 and r.speedup == pytest.approx(1.0)
        assert abs(r.value - value) < 1e-6, (op, r.value, value)
        assert by[op, "triton"].seconds is None and "skipped" in by[op, "triton"].note
    naive = by["class_sums", "naive O(N²) intra"]
    sk = by["pairwise_euclidean", "scikit-learn silhouette"]
    assert abs(naive.value - want["class_sums"]) < 1e-6 and naive.speedup > 0
    assert abs(sk.value - want["pairwise_euclidean"]) < 1e-9
    assert by["class_sums", "torch"].gb_per_s > 0 and by["pairwise_euclidean", "torch"].gb_per_s is None


def test_peers_above_their_limits_are_skipped_and_say_so():
    rows = run_bench(600, 24, 3, ["torch"], device="cpu", repeats=1, pair_n=200, naive_limit=500, sklearn_limit=100)
    notes = {r.impl: r.note for r in rows if r.seconds is None}
    assert "above its limit of 500" in notes["naive O(N²) intra"]
    assert "above its limit of 100" in notes["scikit-learn silhouette"]


def test_cli_json_has_every_backend_row():
    result = CliRunner().invoke(bench, SMALL + ["--backends", "torch,triton", "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    impls = [(r["op"], r["impl"]) for r in payload["rows"]]
    for op in ("class_sums", "cross_reduce", "pairwise_euclidean"):
        assert (op, "torch") in impls and (op, "triton") in impls
    triton_rows = [r for r in payload["rows"] if r["impl"] == "triton"]
    assert all(r["seconds"] is None and r["note"].startswith("skipped") for r in triton_rows)


def test_cli_reports_the_device_that_ran():
    args = [a for a in SMALL if a not in ("--device", "cpu")] + ["--backends", "torch", "--format", "json"]
    payload = json.loads(CliRunner().invoke(bench, args).output)
    assert payload["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cli_table_to_file_is_written_whole(tmp_path):
    out = tmp_path / "bench.txt"
    result = CliRunner().invoke(bench, SMALL + ["--backends", "torch", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "time/pass" in text and "× torch" in text and "naive O(N²) intra" in text
    assert [p.name for p in tmp_path.iterdir()] == ["bench.txt"], "no temporary file left behind"


def test_cli_csv_one_line_per_row():
    result = CliRunner().invoke(bench, SMALL + ["--backends", "torch", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("n,d,c,dtype,op,impl") and len(lines) == 1 + 3 + 2


def test_unknown_backend_is_an_input_error():
    result = CliRunner().invoke(bench, SMALL + ["--backends", "torch,cuda-magic"])
    assert isinstance(result.exception, InputError) and "unknown backend(s) cuda-magic; choose from" in str(result.exception)
    with pytest.raises(InputError, match="dtype"):
        run_bench(100, 8, 2, ["torch"], device="cpu", dtype="int8")
