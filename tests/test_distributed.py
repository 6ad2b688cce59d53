"""engine/distributed.py (the executor layer) without Ray, the DDP helper across 2 gloo processes, and that
nothing imports Ray unless it is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iimm.engine.distributed import Executor, UnitFailure, map_reduce, map_units, merge_tree
from iimm.errors import InputError

COMMANDS = ["embed", "score", "screen", "calibrate"]  # the commands with --executor


def test_map_units_keeps_unit_order_and_reports_a_failing_unit_while_the_rest_go_on():
    seen = []

    def fn(unit):
        if unit == 2:
            raise ValueError("bad unit 2")
        return unit * 10

    out = map_units(fn, [0, 1, 2, 3], on_result=lambda i, r: seen.append((i, r)),
                    on_failure=lambda i, f: seen.append((i, type(f.error).__name__)))
    assert out[:2] == [0, 10] and out[3] == 30
    assert isinstance(out[2], UnitFailure) and out[2].tries == 2 and str(out[2].error) == "bad unit 2"
    assert seen == [(0, 0), (1, 10), (2, "ValueError"), (3, 30)]
    with pytest.raises(ValueError, match="bad unit 2"):
        map_reduce(fn, [0, 1, 2, 3], lambda a, b: a + b)


def test_a_unit_that_fails_once_is_retried_by_the_driver(tmp_path):
    flag = tmp_path / "fail-once"
    flag.write_text("")
    calls = []

    def fn(unit):
        calls.append(unit)
        if unit == 1 and flag.exists():
            flag.unlink()
            raise OSError("transient")
        return unit

    assert map_reduce(fn, [0, 1, 2], lambda a, b: a + b) == 3
    assert calls == [0, 1, 1, 2]
    assert isinstance(map_units(fn, [1], Executor(retries=0))[0], int)  # the flag is gone: no failure now


def test_merge_tree_shapes_and_executor_validation():
    assert merge_tree([[1], [2], [3], [4], [5]], lambda a, b: a + b) == [1, 2, 3, 4, 5]
    with pytest.raises(InputError, match="--executor local"):
        Executor("spark")


def test_without_ray_nothing_imports_it_and_asking_for_it_says_how_to_install(tmp_path):
    """Ray hidden (import ray fails): the engine, the CLI and its help work; --executor ray is a one-line error."""
    code = f"""
COMMANDS = {COMMANDS!r}
import sys
sys.modules["ray"] = None  # `import ray` raises ImportError, as without the extra
import iimm.engine
from click.testing import CliRunner
from iimm.cli.main import cli
runner = CliRunner()
for cmd in COMMANDS:
    res = runner.invoke(cli, [cmd, "--help"])
    assert res.exit_code == 0 and "--executor" in res.output and "--ray-address" in res.output, res.output
assert not [m for m in sys.modules if m.startswith("ray") and sys.modules[m] is not None]
from iimm.engine.distributed import ensure_ray
try:
    ensure_ray()
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'InputError --executor ray needs Ray; install it with pip install "iimm[ray]"'


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One torchrun-like rank: its share of the rows into each accumulator, then the all-reduce."""
    import torch.distributed as dist

    from iimm.engine.scoring.baseline_stats import Chunk, GramStats, ZeroShotJointStats, normalise_rows
    from iimm.engine.scoring.ddp import all_reduce_accumulators
    from iimm.engine.scoring.stats import ClassStats, ZeroShotStats
    from iimm.kernels import get_backend

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y, text = _ddp_data()
    be = get_backend("torch", "cpu")
    acc = [ClassStats(4, 7), ZeroShotStats(torch.as_tensor(text)), GramStats(4, 7), ZeroShotJointStats(text, 50.0)]
    for lo in range(rank * 5, len(x), world * 5):  # interleaved chunks of 5 rows
        rows, labels = x[lo:lo + 5], y[lo:lo + 5]
        chunk = Chunk(normalise_rows(rows, lo), labels, lo, rows=rows, backend=be)
        for a in acc:
            a.update(chunk)
    all_reduce_accumulators(acc)
    torch.save([a.state_dict() for a in acc], Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _ddp_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(53, 7))
    y = rng.integers(0, 4, size=53)
    text = rng.normal(size=(4, 7))
    return x, y, text / np.linalg.norm(text, axis=1, keepdims=True)


def test_ddp_all_reduce_gives_every_rank_the_statistics_of_all_rows(tmp_path):
    torch.multiprocessing.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    x, y, text = _ddp_data()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    onehot = np.eye(4)[y]
    sims = u @ text.T
    rank = (sims > sims[np.arange(len(y)), y][:, None]).sum(1)
    mu = u.mean(0)
    class_means = (onehot.T @ u) / onehot.sum(0)[:, None]
    theta = np.exp(50 * sims - (50 * sims).max(1, keepdims=True))
    theta /= theta.sum(1, keepdims=True)
    for r in range(2):
        cls, zs, gram, joint = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        np.testing.assert_allclose(cls["sums"].numpy(), onehot.T @ u, atol=1e-12)
        np.testing.assert_array_equal(cls["counts"].numpy(), onehot.sum(0))
        np.testing.assert_allclose(float(cls["sq_norm_sum"]), len(y), atol=1e-12)
        np.testing.assert_array_equal(zs["top1"].numpy(), onehot.T @ (rank < 1))
        np.testing.assert_array_equal(gram["count"], onehot.sum(0))
        np.testing.assert_allclose(gram["scatter"], (u - mu).T @ (u - mu), atol=1e-12)
        np.testing.assert_allclose(gram["class_sq_dev"], onehot.T @ np.square(u - class_means[y]), atol=1e-12)
        np.testing.assert_allclose(joint["soft_joint"], onehot.T @ theta, atol=1e-12)
