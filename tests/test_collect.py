"""`iimm collect`: JSON results flattened into one CSV."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from iimm.cli.collect import collect, collect_rows, flatten
from iimm.errors import InputError


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_flatten_nested_objects_to_dotted_columns():
    got = flatten({"model": "clip", "scores": {"iimm": 0.35, "sil": {"class": 0.1, "modality": -0.2}},
                   "ood": {}, "tags": [1, 2], "checkpoint": None})
    assert got == {"model": "clip", "scores.iimm": 0.35, "scores.sil.class": 0.1, "scores.sil.modality": -0.2,
                   "tags": [1, 2], "checkpoint": None}


def test_flatten_rejects_clashing_column_names():
    with pytest.raises(InputError, match="column 'a.b' arises twice"):
        flatten({"a.b": 1, "a": {"b": 2}}, where="x.json")


def test_collect_objects_lists_and_json_lines(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"task": "eurosat", "scores": {"iimm": 0.3, "acs": 0.25}}))
    (tmp_path / "many.json").write_text(json.dumps([
        {"task": "pets", "scores": {"iimm": 0.1}, "ood": {"cars": {"before": 0.5, "after": 0.45}}},
        {"task": "cars", "scores": {"gap": 0.8}, "ok": True}]))
    (tmp_path / "runs.jsonl").write_text('{"task": "dtd", "gain": 0.125}\n\n{"task": "gtsrb", "gain": -0.5}\n')
    out = tmp_path / "all.csv"
    result = CliRunner().invoke(collect, [str(tmp_path / n) for n in ("one.json", "many.json", "runs.jsonl")]
                                + ["-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_csv(out.read_text())
    assert [r["task"] for r in rows] == ["eurosat", "pets", "cars", "dtd", "gtsrb"]
    assert list(rows[0]) == ["task", "scores.iimm", "scores.acs", "ood.cars.before", "ood.cars.after",
                             "scores.gap", "ok", "gain"]
    assert rows[0]["scores.iimm"] == "0.3" and rows[0]["ood.cars.before"] == ""
    assert rows[1]["ood.cars.after"] == "0.45" and rows[2]["scores.gap"] == "0.8"
    assert float(rows[4]["gain"]) == -0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "many.json", "one.json", "runs.jsonl"]


def test_collect_to_stdout_with_source_column_and_full_precision(tmp_path):
    f = tmp_path / "r.json"
    value = 0.1 + 0.2  # 0.30000000000000004: the CSV must keep every digit
    f.write_text(json.dumps({"task": "a", "nested": {"list": [{"x": 1}]}, "v": value}))
    result = CliRunner().invoke(collect, [str(f), "--source-column", "file"])
    assert result.exit_code == 0, result.output
    (row,) = read_csv(result.stdout)
    assert row["file"] == str(f) and row["task"] == "a"
    assert json.loads(row["nested.list"]) == [{"x": 1}]
    assert float(row["v"]) == value


@pytest.mark.parametrize("content, name, match", [
    ("{bad", "x.json", "x.json: invalid JSON at line 1"),
    ("3", "x.json", "top level is a number"),
    ('[{"a": 1}, "b"]', "x.json", r"item 1 of the top-level list is a string"),
    ('{"a": 1}\n{oops\n', "x.jsonl", "x.jsonl:2: invalid JSON"),
    ("[]", "x.json", "no JSON objects"),
    ('{"file": 1}', "x.json", "already have a column 'file'"),
])
def test_collect_errors_are_input_errors(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        collect_rows([path], source_column="file")


def test_collect_cli_reports_missing_file(tmp_path):
    result = CliRunner().invoke(collect, [str(tmp_path / "absent.json")])
    assert isinstance(result.exception, InputError) and "cannot read" in str(result.exception)
