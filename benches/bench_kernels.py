"""Each compute op on each backend (torch, numba, triton), as ratios to the PyTorch path in the same run.

    python -m pytest benches/bench_kernels.py --benchmark-only --benchmark-group-by=group

One group per op; pytest-benchmark's table shows each backend's time relative to the fastest in
its group, and every benchmark stores `speedup_vs_torch` in extra_info (printed with -s). On a
machine without a CUDA GPU the triton rows are skipped and the reason is printed (-rs); the
interpreter (TRITON_INTERPRET=1) runs the kernels in Python, so its timings are not measured.
"""

from __future__ import annotations

import pytest
import torch

from iimm.engine.scoring.bench import (euclidean_silhouette, intra_from_class_sums, synthetic_task, time_median,
                               zero_shot_top1)
from iimm.errors import IimmError
from iimm.kernels import get_backend, triton_interpreted

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, D, C = (2_000_000, 768, 100) if DEVICE.type == "cuda" else (200_000, 512, 100)
PAIR_N = 50_000 if DEVICE.type == "cuda" else 3_000
CHUNK = 1 << 18
BACKENDS = ["torch", "numba", "triton"]


@pytest.fixture(scope="module")
def data():
    return synthetic_task(N, D, C, torch.float16, DEVICE, seed=0)


def run_op(op: str, backend, data) -> float:
    if op == "class_sums":
        return intra_from_class_sums(backend, data, CHUNK)
    if op == "cross_reduce":
        return zero_shot_top1(backend, data, CHUNK)
    return euclidean_silhouette(backend, data.rows[:PAIR_N], data.labels[:PAIR_N], C)


@pytest.fixture(scope="module")
def torch_baseline(data):
    """(seconds, value) of the PyTorch path per op, measured once in this run."""
    be = get_backend("torch", DEVICE)
    return {op: time_median(lambda: run_op(op, be, data), DEVICE, repeats=3)
            for op in ("class_sums", "cross_reduce", "pairwise_euclidean")}


def backend_or_skip(name: str):
    if name == "triton" and DEVICE.type != "cuda":
        reason = ("TRITON_INTERPRET runs the kernels in Python (for tests); its timings mean nothing"
                  if triton_interpreted() else "the triton kernels need a CUDA GPU and none is visible")
        print(f"\ntriton skipped: {reason}")
        pytest.skip(reason)
    try:
        return get_backend(name, DEVICE)
    except IimmError as exc:
        print(f"\n{name} skipped: {exc}")
        pytest.skip(str(exc))


@pytest.mark.parametrize("op", ["class_sums", "cross_reduce", "pairwise_euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_speed(benchmark, data, torch_baseline, op, backend):
    be = backend_or_skip(backend)
    benchmark.group = f"{op} N={PAIR_N if op == 'pairwise_euclidean' else N} D={D} C={C} fp16 on {DEVICE.type}"
    value = benchmark.pedantic(run_op, args=(op, be, data), rounds=3, warmup_rounds=1)
    torch_seconds, torch_value = torch_baseline[op]
    assert abs(value - torch_value) <= 1e-5 * max(1.0, abs(torch_value)), (value, torch_value)
    ratio = torch_seconds / benchmark.stats.stats.median
    benchmark.extra_info["speedup_vs_torch"] = ratio
    print(f"\n{op} on {backend}: {benchmark.stats.stats.median * 1e3:.1f} ms, {ratio:.2f}x the PyTorch path")
