"""docs/architecture.md's "Adding a score" example, run as written: one registry entry plus its finaliser."""

import re
from pathlib import Path

import numpy as np
import pytest

from iimm.engine import SCORES, EmbeddingSet, score
from iimm.engine.scoring.registry import unregister
from synthetic import structured

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def example_code() -> str:
    section = DOC.read_text().split("## Adding a score", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section shows one example"
    return blocks[0]


@pytest.fixture
def registered():
    namespace: dict = {}
    exec(compile(example_code(), str(DOC), "exec"), namespace)
    yield
    unregister("centroid_norm")


def naive_centroid_norm(x, y):
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return float(np.mean([np.linalg.norm(u[y == c].mean(0)) for c in np.unique(y)]))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_documented_score_is_one_entry_and_matches_its_definition(registered, backend):
    x, y, t = structured(4, 230, 21, 6)
    es = EmbeddingSet.from_arrays(x, y, t)
    assert "centroid_norm" in SCORES
    report = score(es, ["iimm", "centroid_norm"], backend=backend, chunk_rows=50)
    assert list(report.scores) == ["iimm", "centroid_norm"]
    assert report.scores["centroid_norm"] == pytest.approx(naive_centroid_norm(x, y), rel=1e-6)
    assert "centroid_norm" in score(es, "all", backend=backend).scores   # the group "all" picks it up
    dup = np.repeat(x[:1], 3, axis=0)                                     # one class of one repeated point: 1
    assert score(EmbeddingSet.from_arrays(dup, np.zeros(3, dtype=np.int64), t[:1]),
                 ["centroid_norm"], backend=backend).scores["centroid_norm"] == pytest.approx(1.0, rel=1e-6)


def test_unregistered_after_the_example():
    assert "centroid_norm" not in SCORES
