"""Distributed scoring (engine/scoring/sharded.py): units of rows per pass, partials, merges of any shape.

Without Ray: random shard splits and random merge-tree shapes give the whole set's scores within 1e-12, for
every statistic (embedding scores and baselines), through the local backend. With Ray: the same through Ray
tasks; resume from partials; a unit failing once; global row numbers in errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from iimm.engine import EmbeddingSet, load_embeddings, score
from iimm.engine.distributed import Executor
from iimm.engine.scoring import sharded
from iimm.engine.scoring.options import ScoreOptions
from iimm.engine.scoring.passes import ScorePlan, run_pass
from iimm.engine.scoring.registry import resolve_keys
from iimm.engine.scoring.sharded import partial_path, row_units, score_sharded
from iimm.errors import InputError
from iimm.kernels import get_backend

EVERYTHING = "everything"


def _random_set(rng, n=203, d=19, c=5) -> EmbeddingSet:
    centres = rng.normal(size=(c, d))
    labels = rng.integers(0, c, size=n)
    labels[:c] = np.arange(c)  # every class has rows
    image = centres[labels] + 1.5 * rng.normal(size=(n, d))
    return EmbeddingSet.from_arrays(image, labels, centres + rng.normal(size=(c, d)))


def _write_shards(folder: Path, es: EmbeddingSet, cuts) -> Path:
    """The set as store shards image-NNNNN.npy / label-NNNNN.npy split at `cuts`, plus text.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.concatenate(es.image_blocks)
    bounds = [0, *sorted(cuts), es.n]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(folder / f"image-{i:05d}.npy", image[lo:hi])
        np.save(folder / f"label-{i:05d}.npy", es.label[lo:hi])
    np.save(folder / "text.npy", es.text)
    return folder


def _close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key in want:
        assert abs(got[key] - want[key]) <= 1e-12 * max(1.0, abs(want[key])), (key, got[key], want[key])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_shard_splits_through_the_local_backend_give_the_whole_sets_scores(tmp_path, seed):
    rng = np.random.default_rng(seed)
    es = _random_set(rng)
    cuts = rng.choice(np.arange(1, es.n), size=rng.integers(1, 6), replace=False)
    folder = _write_shards(tmp_path / "set", es, cuts)
    options = dict(backend="torch", sample=150, baseline_sample=150)
    want = score(es, EVERYTHING, **options).scores
    got = score_sharded(folder, EVERYTHING, executor="local", unit_rows=int(rng.integers(7, 60)),
                        sample=150, baseline_sample=150, backend="torch").scores
    _close(got, want)


def _merge_random_tree(rng, parts: list):
    """Merge the units' accumulators in a random binary tree (random pairs of neighbours until one is left)."""
    parts = list(parts)
    while len(parts) > 1:
        i = int(rng.integers(0, len(parts) - 1))
        left, right = parts[i], parts.pop(i + 1)
        for name in left:
            left[name].merge(right[name])
    return parts[0]


@pytest.mark.parametrize("seed", [3, 4])
def test_random_merge_tree_shapes_give_the_whole_sets_scores_for_every_statistic(seed):
    rng = np.random.default_rng(seed)
    es = _random_set(rng)
    be = get_backend("torch", "cpu")
    keys = resolve_keys(EVERYTHING)
    options = ScoreOptions(sample=150, baseline_sample=150)
    plan = ScorePlan(es, keys, options, be.device, 32)
    whole = ScorePlan(es, keys, options, be.device, 32)
    cuts = np.sort(rng.choice(np.arange(1, es.n), size=8, replace=False))
    ranges = list(zip([0, *cuts], [*cuts, es.n]))
    for k in range(plan.num_passes):
        parts = [run_pass(plan, k, es, be, 32, rows=(int(lo), int(hi))) for lo, hi in ranges]
        plan.add_pass(k, [_merge_random_tree(rng, parts)])
        whole.add_pass(k, [run_pass(whole, k, es, be, 32)])
    _close(plan.finalise(es, be), whole.finalise(es, be))


def test_units_follow_the_shard_files_cut_long_ones_and_group_short_ones():
    es = EmbeddingSet([np.ones((5, 3)), np.ones((12, 3)), np.ones((3, 3)), np.ones((4, 3))],
                      np.zeros(24, dtype=np.int64), np.eye(1, 3))
    assert [(u.lo, u.hi) for u in row_units(es, 5)] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]
    assert [(u.lo, u.hi) for u in row_units(es, 8)] == [(0, 5), (5, 13), (13, 20), (20, 24)]
    assert [(u.lo, u.hi) for u in row_units(es)] == [(0, 24)]


def test_partials_resume_and_a_bad_row_is_named_by_its_global_index(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    es = _random_set(rng)
    folder = _write_shards(tmp_path / "set", es, [50, 120])
    want = score(es, "all", backend="torch").scores
    ran = []
    real_run_pass = sharded.run_pass
    monkeypatch.setattr(sharded, "run_pass", lambda plan, k, es, be, chunk, rows: ran.append((k, rows)) or
                        real_run_pass(plan, k, es, be, chunk, rows=rows))
    kw = dict(executor="local", backend="torch", unit_rows=50, partials=tmp_path / "partials")
    first = score_sharded(folder, "all", **kw)
    _close(first.scores, want)
    assert len(ran) == 10  # 5 units (0-50, 50-100, 100-120, 120-170, 170-203) × 2 passes
    [run_folder] = (tmp_path / "partials").iterdir()
    os.unlink(partial_path(run_folder, 1, 4))  # as if the run had died before the last unit of pass 2
    ran.clear()
    again = score_sharded(folder, "all", **kw)
    assert ran == [(1, (170, es.n))] and again.scores == first.scores
    image = np.load(folder / "image-00001.npy")
    image[7] = np.nan
    np.save(folder / "image-00001.npy", image)
    with pytest.raises(InputError, match="row 57"):
        score_sharded(folder, "all", executor="local", backend="torch")


class FailOnce:
    """A unit function that raises on unit `index` while the flag file exists (deleting it): one injected fault."""

    def __init__(self, job, flag: str, index: int):
        self.job, self.flag, self.index = job, flag, index

    def __call__(self, unit):
        if unit.index == self.index and os.path.exists(self.flag):
            os.unlink(self.flag)
            raise OSError("injected fault")
        return self.job(unit)


@pytest.mark.ray
def test_sharded_scoring_on_ray_equals_score_resumes_and_recovers_from_a_failing_unit(tmp_path, ray_cluster,
                                                                                     monkeypatch):
    import sys

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import tests/
    rng = np.random.default_rng(6)
    es = _random_set(rng)
    folder = _write_shards(tmp_path / "set", es, [40, 90, 160])
    options = dict(sample=150, baseline_sample=150)
    want = score(es, EVERYTHING, backend="torch", **options).scores
    flag = tmp_path / "fail-once"
    flag.write_text("")
    real_map_units = sharded.map_units

    def map_units_with_a_fault(job, units, executor, **kw):
        if isinstance(job, sharded.PassJob):
            job = FailOnce(job, str(flag), index=2)
        return real_map_units(job, units, executor, **kw)

    monkeypatch.setattr(sharded, "map_units", map_units_with_a_fault)
    ran = []
    got = score_sharded(folder, EVERYTHING, executor=Executor("ray"), backend="torch", unit_rows=30, **options,
                        partials=tmp_path / "partials", on_unit=lambda k, done, total: ran.append(k))
    assert not flag.exists()  # the fault happened, and the driver's retry recovered from it
    _close(got.scores, want)
    assert len(row_units(load_embeddings(folder), 30)) == 9  # shards of 40, 50, 70, 43 rows: 2 + 2 + 3 + 2 units
    passes = max(ran) + 1
    assert len(ran) == passes * 9
    [run_folder] = (tmp_path / "partials").iterdir()
    for k in range(passes):
        os.unlink(partial_path(run_folder, k, 4))
    ran.clear()
    again = score_sharded(folder, EVERYTHING, executor=Executor("ray"), backend="torch", unit_rows=30,
                          **options, partials=tmp_path / "partials", on_unit=lambda k, d, t: ran.append(k))
    assert ran == list(range(passes))  # only unit 4 of each pass ran again
    assert again.scores == got.scores


@pytest.mark.ray
def test_all_pairs_scores_on_ray_are_units_of_tile_pairs_and_equal_score(tmp_path, ray_cluster, monkeypatch):
    from iimm.engine.scoring import sharded_pairs

    rng = np.random.default_rng(8)
    es = _random_set(rng)
    folder = _write_shards(tmp_path / "set", es, [70, 140])
    keys = ["silhouette_class_euclidean", "gensil", "silhouette_class"]
    want = score(es, keys, backend="torch", sample=150).scores
    swept = []
    real_map_units = sharded_pairs.map_units
    monkeypatch.setattr(sharded_pairs, "map_units", lambda job, units, ex, **kw: swept.append(len(units)) or
                        real_map_units(job, units, ex, **kw))
    got = score_sharded(folder, keys, executor=Executor("ray"), backend="torch", sample=150, all_pairs_tile=32,
                        pairs_per_unit=2)
    assert swept == [8]  # 150 rows in tiles of 32: 5 tiles, 15 unordered tile pairs, 2 per unit
    _close(got.scores, want)


@pytest.mark.ray
def test_cli_score_with_ray_equals_the_local_command_and_keeps_partials_in_the_store(tmp_path, ray_cluster):
    import json

    from click.testing import CliRunner

    from iimm.cli.main import cli

    es = _random_set(np.random.default_rng(7))
    folder = _write_shards(tmp_path / "set", es, [60, 130])
    base = ["score", "--embeddings", str(folder), "--metrics", "all", "--backend", "torch", "--format", "json",
            "--no-progress", "--store", str(tmp_path / "store")]
    local = CliRunner().invoke(cli, base)
    on_ray = CliRunner().invoke(cli, base + ["--executor", "ray", "--ray-address",
                                             ray_cluster.get_runtime_context().gcs_address])
    assert local.exit_code == 0 and on_ray.exit_code == 0, local.output + on_ray.output
    _close(json.loads(on_ray.stdout)["scores"], json.loads(local.stdout)["scores"])
    [run_folder] = (tmp_path / "store" / "partials").iterdir()
    assert sorted(p.name for p in run_folder.iterdir()) == ["pass0-unit00000.npz", "pass1-unit00000.npz"]


KILLABLE_DRIVER = """
import json, os, sys, time
from iimm.engine.scoring import sharded

folder, partials, out, pause_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ran = []
real_run_pass = sharded.run_pass
sharded.run_pass = lambda plan, k, es, be, chunk, rows: ran.append(k) or real_run_pass(plan, k, es, be, chunk, rows=rows)
done = [0]

def on_unit(k, finished, total):
    done[0] += 1
    if done[0] == pause_after:  # its partial is saved: say so and wait to be killed
        open(out + ".ready", "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        sys.exit(3)

report = sharded.score_sharded(folder, "all", executor="local", backend="torch", unit_rows=30, partials=partials,
                               on_unit=on_unit)
with open(out, "w") as f:
    json.dump({"scores": report.scores, "ran": len(ran)}, f)
"""


def test_a_driver_killed_mid_run_resumes_from_its_partials_and_gives_the_same_result(tmp_path):
    """A real SIGKILL of the driver process once some units' partials exist; the rerun computes only the rest."""
    import json
    import signal
    import subprocess
    import sys
    import time

    es = _random_set(np.random.default_rng(9))
    folder = _write_shards(tmp_path / "set", es, [40, 90, 160])
    script = tmp_path / "driver.py"
    script.write_text(KILLABLE_DRIVER)

    def run(partials, out, pause_after=0):
        return subprocess.Popen([sys.executable, str(script), str(folder), str(partials), str(out), str(pause_after)])

    whole = run(tmp_path / "whole", tmp_path / "whole.json")
    killed = run(tmp_path / "partials", tmp_path / "killed.json", pause_after=5)
    ready = tmp_path / "killed.json.ready"
    deadline = time.monotonic() + 60
    while not ready.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), f"the driver did not reach its 5th unit (exit {killed.poll()})"
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    [run_folder] = (tmp_path / "partials").iterdir()
    assert len(list(run_folder.glob("*.npz"))) == 5 and not (tmp_path / "killed.json").exists()
    assert whole.wait(timeout=60) == 0
    rerun = run(tmp_path / "partials", tmp_path / "rerun.json")
    assert rerun.wait(timeout=60) == 0
    want, got = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "rerun.json"))
    assert want["ran"] == 2 * 9  # 2 passes × 9 units (shards of 40, 50, 70, 43 rows in units of ≤ 30)
    assert got["ran"] == want["ran"] - 5  # only the units without a partial
    _close(got["scores"], want["scores"])
