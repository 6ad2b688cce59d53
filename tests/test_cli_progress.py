"""`iimm score` on stderr: the all-pairs time estimate, progress lines off a terminal, --no-progress."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from iimm.cli import progress as progress_module
from iimm.cli.main import cli
from iimm.engine.scoring import pairwise
from synthetic import structured


@pytest.fixture
def npz(tmp_path):
    x, y, t = structured(0, 300, 19, 5)
    path = tmp_path / "task.npz"
    np.savez(path, image=x, label=y, text=t)
    return path


def run(args):
    res = CliRunner().invoke(cli, ["score", "--format", "json", "--backend", "torch", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res.stderr


def test_sample_above_the_quadratic_limit_warns_with_the_estimated_time(npz):
    got, err = run(["--embeddings", str(npz), "--metrics", "silhouette_class_euclidean", "--sample", "200",
                    "--quadratic-limit", "100", "--no-progress"])
    assert got["sample_rows"] == {"silhouette_class_euclidean": 200}
    line = [ln for ln in err.splitlines() if "quadratic-limit" in ln]
    assert len(line) == 1 and "--sample 200 is above --quadratic-limit 100" in line[0]
    assert "all-pairs scores on 200 rows: about 1 s" in line[0]


def test_long_all_pairs_pass_is_announced(npz, monkeypatch):
    monkeypatch.setattr(pairwise, "ESTIMATE_AFTER_ROWS", 10)
    monkeypatch.setattr(pairwise, "estimate_seconds", lambda *a: 42.0)
    _, err = run(["--embeddings", str(npz), "--metrics", "gensil", "--no-progress"])
    assert "iimm: all-pairs scores on 300 rows: about 42 s; --quadratic-limit or --metrics to change" in err
    monkeypatch.setattr(pairwise, "estimate_seconds", lambda *a: 1.0)
    _, err = run(["--embeddings", str(npz), "--metrics", "gensil", "--no-progress"])
    assert "all-pairs" not in err  # short passes go unannounced


def test_progress_is_lines_when_stderr_is_not_a_terminal(npz, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_AFTER_S", 0.0)
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    _, err = run(["--embeddings", str(npz), "--metrics", "iimm,gensil"])
    lines = err.splitlines()
    assert "iimm: pass 1: 300/300 rows (100%), 0 s" in lines
    assert any(ln.startswith("iimm: all-pairs scores: 300/300 rows (100%)") for ln in lines)
    assert "\r" not in err  # no bar
    _, err = run(["--embeddings", str(npz), "--metrics", "iimm,gensil", "--no-progress"])
    assert err == ""
