"""Distributed screening and calibration: one unit per (model, dataset) cell or per fine-tune run."""

from __future__ import annotations

import shutil

import pytest

from iimm.engine import load_catalog
from iimm.engine.calibration import runs as runs_mod
from iimm.engine.calibration.runs import CalibrationRun, FineTuneCells, TaskRuns
from iimm.engine.calibration.screen import ScreenResult, plan_cells, screen
from iimm.engine.distributed import Executor
from iimm.engine.embedding.models import resolve_model


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, digits_png_dir):
    """Two digit tasks of different sizes and one with a single class (its IIMM is undefined)."""
    root = tmp_path_factory.mktemp("catalog")
    classes = sorted(p.name for p in digits_png_dir.iterdir())
    for name, picked in (("small", classes[:3]), ("large", classes[3:9]), ("broken", classes[:1])):
        for c in picked:
            shutil.copytree(digits_png_dir / c, root / name / c)
    (root / "catalog.toml").write_text("\n".join(
        f'[[dataset]]\nname = "{n}"\npath = "{n}"\n' for n in ("small", "large", "broken")))
    return load_catalog(root / "catalog.toml")


@pytest.fixture(scope="module")
def two_models(tiny_model_dir_factory):
    return [f"local-dir:{tiny_model_dir_factory('clip', 0)}", f"local-dir:{tiny_model_dir_factory('clip', 1)}"]


def test_cells_are_grouped_by_model_largest_first_and_stored_cells_are_scoring_work(catalog, two_models, tmp_path,
                                                                                    one_torch_thread):
    store = tmp_path / "store"
    screen(catalog, two_models[:1], backend="torch", embed_options={"workers": 0, "store": store})
    specs = [(m, resolve_model(m)) for m in two_models]
    failures = []
    cells = plan_cells(specs, catalog.targets, {"store": store}, "cpu", lambda *a: failures.append(a))
    assert [(c.model, c.dataset.name, c.images) for c in cells] == [
        (two_models[0], "large", 120), (two_models[0], "small", 60), (two_models[0], "broken", 20),
        (two_models[1], "large", 120), (two_models[1], "small", 60), (two_models[1], "broken", 20)]
    # the first model's cells were embedded by the screen above (the broken one too: only its score failed)
    assert [c.stored for c in cells] == [True, True, True, False, False, False] and not failures


@pytest.mark.ray
def test_a_2x2_screen_on_ray_equals_the_local_screen_and_reports_the_failing_cells(catalog, two_models, tmp_path,
                                                                                   ray_cluster, one_torch_thread):
    options = {"workers": 0}
    local = screen(catalog, two_models, backend="torch", embed_options={**options, "store": tmp_path / "a"})
    failed = []
    on_ray = screen(catalog, two_models, backend="torch", embed_options={**options, "store": tmp_path / "b"},
                    executor=Executor("ray"), on_failure=lambda d, m, e: failed.append((d, m)))
    assert [(r.model, r.dataset) for r in on_ray.rows] == [(m, d) for m in two_models for d in ("large", "small")]
    want = {(r.model, r.dataset): r.scores for r in local.rows}
    for r in on_ray.rows:
        assert r.scores == pytest.approx(want[r.model, r.dataset], rel=1e-12, abs=0)
    assert sorted(failed) == sorted(("broken", m) for m in two_models)
    assert sorted(on_ray.failures) == sorted(local.failures)
    # the rerun finds every cell in the store: CPU scoring tasks, nothing encoded
    again = screen(catalog, two_models, backend="torch", embed_options={**options, "store": tmp_path / "b"},
                   executor=Executor("ray"))
    assert all(r.cached for r in again.rows) and [r.iimm for r in again.rows] == [r.iimm for r in on_ray.rows]


def test_fine_tune_cells_run_largest_task_first_retry_once_and_report_what_keeps_failing(catalog, monkeypatch,
                                                                                        tmp_path):
    """The calibration's units through the local backend (the code the Ray tasks run), with fine-tuning faked."""
    calls = []
    flaky = {"small": 1}  # fails once, then succeeds on the driver's retry

    def fake_fine_tune(tasks, ds, model, method, **kw):
        calls.append((method, ds.name))
        if ds.name == "broken":
            raise RuntimeError("diverged")
        if flaky.get(ds.name):
            flaky[ds.name] -= 1
            raise OSError("store busy")
        return {"task": ds.name, "method": method}

    monkeypatch.setattr(runs_mod, "fine_tune_task", fake_fine_tune)
    cells = FineTuneCells(catalog, "m", None, None, None, TaskRuns(), "cpu", 0, str(tmp_path))
    run, reported = CalibrationRun(), []
    records = cells.run_all(["full", "bitfit"], Executor("local"), run, None, lambda *a: reported.append(a))
    assert calls == [("full", "large"), ("bitfit", "large"), ("full", "small"), ("full", "small"),
                     ("bitfit", "small"), ("full", "broken"), ("full", "broken"), ("bitfit", "broken"),
                     ("bitfit", "broken")]
    assert records == {m: [{"task": "small", "method": m}, {"task": "large", "method": m}]
                       for m in ("full", "bitfit")}  # catalog order
    assert run.failures == reported == [("broken", "full", "diverged"), ("broken", "bitfit", "diverged")]
