#!/usr/bin/env python
"""One-shot GPU benchmark: the Triton kernels against the PyTorch path, on one CUDA card, in under 5 minutes.

    python benches/gpu_bench.py                      # on a CUDA machine (H100/H200: N up to 10M, 20 GB of rows)
    python benches/gpu_bench.py --json out.json      # also write every measurement
    TRITON_INTERPRET=1 python benches/gpu_bench.py --small   # every code path once, tiny sizes, on a CPU
    python benches/gpu_bench.py --compile-only       # build every kernel variant for sm_90; no GPU needed

1. The card: device-to-device copy bandwidth (read + write bytes per second) and the bf16 matmul rate.
2. Correctness: every kernel against the PyTorch path (kernels.reference) on fresh random data:
   relative error, NaN check, exact counts; ranks may differ only on fp32 near-ties.
3. Timing (median of CUDA-event timings, fewer repeats at the big sizes): class sums and cross reduce
   for N ∈ {1M, 10M}, D ∈ {512, 768, 1024}, C ∈ {10, 100, 1000} on fp16 rows; the exact Euclidean
   silhouette at N = 200k against a torch.cdist-chunked PyTorch path, and the symmetric all-pairs
   kernel (each pair once, Euclidean alone and with gensil) against the same tiles in PyTorch (cuBLAS). The target cases run first; the
   rest of the grid runs while the time budget lasts, and the table says what was skipped.
4. A final table: time, GB/s or TFLOP/s, the fraction of copy bandwidth / matmul rate, the speed-up
   over PyTorch, and the three targets (class sums ≥ 70% of copy bandwidth at N=10M D=768 fp16;
   cross reduce ≥ 2× PyTorch; Euclidean silhouette at 200k ≥ 5× the cdist path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

import torch

def _import_iimm_from_checkout() -> None:
    """On a fresh machine with only the working tree: the repository root *is* the package `iimm`
    (pyproject's package-dir), so put a link named `iimm` to it on the path instead of installing."""
    try:
        import iimm  # noqa: F401
        return
    except ImportError:
        pass
    shim = tempfile.mkdtemp(prefix="iimm-shim-")
    os.symlink(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.join(shim, "iimm"))
    sys.path.insert(0, shim)


_import_iimm_from_checkout()
from iimm.kernels import reference, triton_interpreted  # noqa: E402

FULL = dict(ns=(1_000_000, 10_000_000), ds=(512, 768, 1024), cs=(10, 100, 1000), pair_n=200_000, pair_d=768,
            pair_c=100, check_n=1_000_000, chunk=1_000_000, pair_tile=8192, copy_bytes=4 << 30, mm=8192,
            budget_s=270.0, repeats=(5, 2), warmup=1)
SMALL = dict(ns=(100, 300), ds=(40, 72), cs=(3, 20), pair_n=96, pair_d=40, pair_c=5, check_n=100, chunk=128,
             pair_tile=48, copy_bytes=16 << 20, mm=256, budget_s=600.0, repeats=(1, 1), warmup=0)
TARGET = dict(class_sums=(10_000_000, 768), cross_reduce=(10_000_000, 768, 100))


class Clock:
    """Median seconds of a callable: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, repeats: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(max(1, repeats)):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
        return statistics.median(times)


def card_rates(device, clock, size) -> dict:
    """Copy bandwidth (2 × bytes / s) of a device-to-device copy, and the bf16 (CPU: fp32) matmul rate."""
    src = torch.empty(size["copy_bytes"] // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    copy_s = clock(lambda: dst.copy_(src), repeats=10, warmup=2)
    mm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size["mm"], size["mm"], device=device).to(mm_dtype)
    b = torch.randn(size["mm"], size["mm"], device=device).to(mm_dtype)
    mm_s = clock(lambda: a @ b, repeats=10, warmup=2)
    return {"copy_gb_s": 2 * size["copy_bytes"] / copy_s / 1e9, "matmul_tflop_s": 2 * size["mm"] ** 3 / mm_s / 1e12,
            "matmul_dtype": str(mm_dtype).replace("torch.", "")}


def random_rows(n, d, c, device, dtype=torch.float16, seed=0, block=1 << 20):
    """(n, d) rows in `dtype` (class centroid × 0.5 + noise), labels (n,), centroids (c, d); built in blocks."""
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.randint(0, c, (n,), device=device, generator=g)
    centroids = torch.randn(c, d, device=device, generator=g)
    x = torch.empty(n, d, device=device, dtype=dtype)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        noise = torch.randn(hi - lo, d, device=device, generator=g)
        x[lo:hi] = noise.add_(centroids[labels[lo:hi]], alpha=0.5).to(dtype)
    return x, labels, centroids


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def check_kernels(ops, device, size) -> list[dict]:
    """Every kernel vs the PyTorch path on fresh random data: relative error, NaN-free, exact counts."""
    out = []
    n, c = size["check_n"], max(size["cs"])
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x, y, centroids = random_rows(n, size["ds"][1], c, device, dtype, seed=1)
        got, ref = ops.class_sums(x, y, c), reference.class_sums(x, y, c)
        out.append({"check": f"class_sums {str(dtype)[6:]}", "rel_err": rel_err(got.sums, ref.sums),
                    "nan": bool(torch.isnan(got.sums).any()), "exact": bool(torch.equal(got.counts, ref.counts))
                    and got.first_bad == ref.first_bad})
    x, y, centroids = random_rows(n, size["ds"][1], c, device, torch.float16, seed=2)
    sums = ops.class_sums(x, y, c)
    for k, matrix, scale, valid in ((min(size["cs"]), centroids[:min(size["cs"])].double(), None, None),
                                    (c, sums.sums, 1.0 / sums.counts.clamp_min(1).double(), sums.counts > 0)):
        yk = y % k
        got, ref = ops.cross_reduce(x, yk, matrix, scale, valid), reference.cross_reduce(x, yk, matrix, scale, valid)
        fields = ("correct", "other_sum", "best_other", "sq_norm")
        finite = torch.isfinite(ref.best_other)
        err = max(rel_err(getattr(got, f)[finite], getattr(ref, f)[finite]) for f in fields)
        mismatched = int((got.rank != ref.rank).sum())
        out.append({"check": f"cross_reduce K={k}", "rel_err": err,
                    "nan": any(bool(torch.isnan(getattr(got, f)).any()) for f in fields),
                    "exact": mismatched <= max(1, n // 1000) and got.first_bad == ref.first_bad,
                    "note": f"{mismatched} rank(s) differ (fp32 near-ties)"})
    m = min(n, 4096)
    for metric, p in (("euclidean", 1.0), ("cosine", 0.0), ("euclidean", 2.0)):
        args = dict(metric=metric, p=p, query_offset=0, key_offset=0, zero_eps=1e-4)
        got = ops.pairwise_class_sums(x[:m], x[:4 * m], y[:4 * m], c, **args)
        ref = reference.pairwise_class_sums(x[:m], x[:4 * m], y[:4 * m], c, **args)
        out.append({"check": f"pairwise {metric} p={p}", "rel_err": rel_err(got.sums, ref.sums),
                    "nan": bool(torch.isnan(got.sums).any()), "exact": bool(torch.equal(got.counts, ref.counts))})
    m = min(n, 2048)
    got = ops.all_pairs_class_sums(x[:m], y[:m], c, euclidean=True, cosine_p=0.0, zero_eps=1e-4, tile=512)
    twin = reference.all_pairs_class_sums(x[:m], y[:m], c, euclidean=True, cosine_p=0.0, zero_eps=1e-4, tile=512)
    out.append({"check": "all-pairs kernel vs torch tiles",
                "rel_err": max(rel_err(got.euclidean, twin.euclidean), rel_err(got.cosine, twin.cosine)),
                "nan": bool(torch.isnan(got.euclidean).any() or torch.isnan(got.cosine).any()),
                "exact": bool(torch.equal(got.cosine_pairs, twin.cosine_pairs))})
    for metric, p, field in (("euclidean", 1.0, "euclidean"), ("cosine", 0.0, "cosine")):
        ref = reference.pairwise_class_sums(x[:m], x[:m], y[:m], c, metric=metric, p=p, query_offset=0, key_offset=0,
                                            zero_eps=1e-4 if metric == "cosine" else 0.0)
        out.append({"check": f"all-pairs tiles {metric} p={p}", "rel_err": rel_err(getattr(got, field), ref.sums),
                    "nan": bool(torch.isnan(getattr(got, field)).any()),
                    "exact": metric == "euclidean" or bool(torch.equal(got.cosine_pairs, ref.counts))})
    return out


def silhouette_tiles(ops, x, y, c, both=False):
    """The symmetric float32 tiles of `all_pairs_class_sums` (each tile pair once, both sides), as `iimm score`
    runs them; both=True also feeds gensil from the same products."""
    sums = ops.all_pairs_class_sums(x, y, c, euclidean=True, cosine_p=1.0 if both else None, zero_eps=1e-6)
    counts = torch.bincount(y, minlength=c).double()
    pair_counts = counts.expand(x.shape[0], c).clone()
    pair_counts.scatter_add_(1, y[:, None], torch.full((x.shape[0], 1), -1.0, device=x.device, dtype=torch.float64))
    return float(silhouette_from_sums(sums.euclidean, pair_counts, y, counts > 0).mean())


def chunked(fn, x, y, chunk):
    for lo in range(0, x.shape[0], chunk):
        fn(x[lo:lo + chunk], y[lo:lo + chunk])


def silhouette_from_sums(sums, counts, own, present):
    mean = sums / counts.clamp_min(1)
    a = mean.gather(1, own[:, None]).squeeze(1)
    b = mean.masked_fill(~present[None, :], math.inf).scatter(1, own[:, None], math.inf).amin(1)
    alone = counts.gather(1, own[:, None]).squeeze(1) == 0
    return torch.where(alone, 0.0, (b - a) / torch.maximum(a, b))


def silhouette_triton(ops, x, y, c, tile):
    present = torch.bincount(y, minlength=c) > 0
    s = [silhouette_from_sums(*ops.pairwise_class_sums(x[lo:lo + tile], x, y, c, metric="euclidean", p=1.0,
                                                       query_offset=lo, key_offset=0, zero_eps=0.0),
                              y[lo:lo + tile], present) for lo in range(0, x.shape[0], tile)]
    return float(torch.cat(s).mean())


def silhouette_cdist(x, y, c, tile):
    """The PyTorch path: normalise, torch.cdist per query chunk, per-class sums by a one-hot matmul."""
    xn = x.float()
    xn = xn / xn.norm(dim=1, keepdim=True)
    onehot = torch.nn.functional.one_hot(y, c).float()
    present = onehot.sum(0) > 0
    s = []
    for lo in range(0, x.shape[0], tile):
        dist = torch.cdist(xn[lo:lo + tile], xn)
        idx = torch.arange(lo, min(lo + tile, x.shape[0]), device=x.device)
        dist[idx - lo, idx] = 0.0
        sums = (dist @ onehot).double()
        counts = onehot.sum(0).double().expand_as(sums).clone()
        counts.scatter_add_(1, y[idx][:, None], torch.full((len(idx), 1), -1.0, device=x.device, dtype=torch.float64))
        s.append(silhouette_from_sums(sums, counts, y[idx], present))
    return float(torch.cat(s).mean())


class Budget:
    def __init__(self, seconds):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def grid_cases(size, device) -> list[tuple[str, int, int, int]]:
    """(op, N, D, C) in the order they run: the targets' width first (targets leading), then the others."""
    ds = sorted(size["ds"], key=lambda d: d != TARGET["class_sums"][1])
    cases = [(op, n, d, c) for d in ds for n in size["ns"] for op in ("class_sums", "cross_reduce")
             for c in size["cs"]]
    if device.type == "cuda":
        first = [("class_sums", *TARGET["class_sums"], 100), ("cross_reduce", *TARGET["cross_reduce"])]
        cases = first + [k for k in cases if k not in first]
    return cases


def time_grid(ops, device, clock, size, rates, budget) -> list[dict]:
    """Triton vs PyTorch per (op, N, D, C) while the time budget lasts; the rows of the final table."""
    rows, data = [], {}
    for op, n, d, c in grid_cases(size, device):
        if budget.left() < 20:
            rows.append({"op": op, "n": n, "d": d, "c": c, "note": "skipped: time budget spent"})
            continue
        try:
            rows.append(time_case(ops, device, clock, size, rates, data, op, n, d, c))
        except Exception as exc:  # noqa: BLE001 - one failed case must not lose the rest of the run
            rows.append({"op": op, "n": n, "d": d, "c": c, "note": f"error: {type(exc).__name__}: {exc}"[:200]})
            print(f"  {op} N={n} D={d} C={c}: {rows[-1]['note']}", flush=True)
    return rows


def time_case(ops, device, clock, size, rates, data, op, n, d, c) -> dict:
    if d not in data:
        data.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        data[d] = random_rows(max(size["ns"]), d, max(size["cs"]), device, torch.float16, seed=d)
    x_all, y_all, centroids = data[d]
    x, y = x_all[:n], y_all[:n] % c
    text = torch.nn.functional.normalize(centroids[:c].double(), dim=1)
    repeats, warmup = size["repeats"][n >= 5_000_000], size["warmup"]
    if op == "class_sums":
        tri = clock(lambda: ops.class_sums(x, y, c), repeats, warmup)
        tor = clock(lambda: chunked(lambda a, b: reference.class_sums(a, b, c), x, y, size["chunk"]),
                    max(1, repeats // 2), warmup)
    else:
        tri = clock(lambda: ops.cross_reduce(x, y, text), repeats, warmup)
        tor = clock(lambda: chunked(lambda a, b: reference.cross_reduce(a, b, text), x, y, size["chunk"]),
                    max(1, repeats // 2), warmup)
    gb = n * d * x.element_size() / 1e9
    row = {"op": op, "n": n, "d": d, "c": c, "triton_s": tri, "torch_s": tor, "speedup": tor / tri,
           "gb_s": gb / tri, "of_copy_bw": gb / tri / rates["copy_gb_s"]}
    if op == "cross_reduce":
        row["tflop_s"] = 2 * n * c * d / tri / 1e12
        row["of_matmul"] = row["tflop_s"] / rates["matmul_tflop_s"]
    print(f"  {op:13s} N={n:>10,} D={d:5d} C={c:5d}  triton {tri * 1e3:9.2f} ms  torch {tor * 1e3:10.2f} ms"
          f"  x{tor / tri:6.2f}  {row['of_copy_bw']:6.1%} of copy bw", flush=True)
    return row


def time_silhouette(ops, device, clock, size, rates, budget) -> dict:
    n, d, c = size["pair_n"], size["pair_d"], size["pair_c"]
    row = {"op": "silhouette_euclidean", "n": n, "d": d, "c": c}
    if budget.left() < 30:
        row["note"] = "skipped: time budget spent"
        return row
    x, y, _ = random_rows(n, d, c, device, torch.float16, seed=7)
    value_t = silhouette_triton(ops, x, y, c, size["pair_tile"])
    tri = clock(lambda: silhouette_triton(ops, x, y, c, size["pair_tile"]), 1, warmup=0)
    value_c = silhouette_cdist(x, y, c, 4096 if device.type == "cuda" else 64)
    tor = clock(lambda: silhouette_cdist(x, y, c, 4096 if device.type == "cuda" else 64), 1, warmup=0)
    value_s = silhouette_tiles(ops, x, y, c)
    sym = clock(lambda: silhouette_tiles(ops, x, y, c), 1, warmup=0)
    both = clock(lambda: silhouette_tiles(ops, x, y, c, both=True), 1, warmup=0)
    value_r = silhouette_tiles(reference, x, y, c)
    sym_torch = clock(lambda: silhouette_tiles(reference, x, y, c), 1, warmup=0)
    tflop = 2 * n * n * d / tri / 1e12
    row.update(triton_s=tri, torch_s=tor, speedup=tor / tri, tflop_s=tflop, of_matmul=tflop / rates["matmul_tflop_s"],
               value_triton=value_t, value_cdist=value_c, tiles_s=sym, tiles_both_s=both, value_tiles=value_s,
               tiles_speedup=tor / sym, tiles_torch_s=sym_torch, value_tiles_torch=value_r,
               tiles_kernel_speedup=sym_torch / sym, tiles_tflop_s=n * n * d / sym / 1e12)
    print(f"  silhouette    N={n:>9,} D={d:5d} C={c:5d}  triton {tri:8.3f} s  cdist {tor:8.3f} s  ×{tor / tri:6.2f}"
          f"  values {value_t:.6f} / {value_c:.6f}", flush=True)
    print(f"  all-pairs symmetric kernel (each pair once): euclidean {sym:8.3f} s (×{tor / sym:6.2f} over cdist, "
          f"×{sym_torch / sym:6.2f} over the torch tiles' {sym_torch:8.3f} s), with gensil from the same products "
          f"{both:8.3f} s (×{both / sym:4.2f} of one); values {value_s:.6f} / torch tiles {value_r:.6f}", flush=True)
    return row


def verdicts(rows, sil, size, device) -> list[str]:
    lines = []
    if device.type != "cuda":
        return ["targets: not judged (no GPU; --small only executes every code path)"]
    cs = [r for r in rows if r["op"] == "class_sums" and (r["n"], r["d"]) == TARGET["class_sums"] and "triton_s" in r]
    if cs:
        lines.append(f"class sums at N=10M D=768 fp16: {cs[0]['of_copy_bw']:.1%} of copy bandwidth "
                     f"(target ≥ 70%): {'PASS' if cs[0]['of_copy_bw'] >= 0.7 else 'FAIL'}")
    cr = [r for r in rows if r["op"] == "cross_reduce" and "speedup" in r]
    if cr:
        worst = min(cr, key=lambda r: r["speedup"])
        lines.append(f"cross reduce: ×{worst['speedup']:.2f} over PyTorch at worst (N={worst['n']:,} D={worst['d']} "
                     f"C={worst['c']}), target ≥ 2×: {'PASS' if worst['speedup'] >= 2 else 'FAIL'}")
    if "speedup" in sil:
        lines.append(f"Euclidean silhouette at N={sil['n']:,}: ×{sil['speedup']:.2f} over the cdist path "
                     f"(target ≥ 5×): {'PASS' if sil['speedup'] >= 5 else 'FAIL'}")
        lines.append(f"symmetric all-pairs kernel at N={sil['n']:,}: ×{sil['tiles_kernel_speedup']:.2f} over the torch "
                     f"tiles, euclidean + gensil ×{sil['tiles_both_s'] / sil['tiles_s']:.2f} of euclidean alone "
                     f"(target ≤ 1.2): {'PASS' if sil['tiles_both_s'] <= 1.2 * sil['tiles_s'] else 'FAIL'}; "
                     f"values agree to {abs(sil['value_tiles'] - sil['value_tiles_torch']):.1e} (target 1e-6)")
    return lines


def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}{fmt}}"


def print_table(rates, checks, rows, sil, verdict_lines):
    print(f"\ncard: copy {rates['copy_gb_s']:.3g} GB/s (read+write), {rates['matmul_dtype']} matmul "
          f"{rates['matmul_tflop_s']:.3g} TFLOP/s")
    print("\ncorrectness (triton vs PyTorch path)")
    for c in checks:
        ok = c["rel_err"] < 1e-5 and not c["nan"] and c["exact"]
        print(f"  {'ok  ' if ok else 'FAIL'} {c['check']:28s} rel err {c['rel_err']:.2e}  nan={c['nan']}  "
              f"exact={c['exact']}  {c.get('note', '')}")
    print(f"\n{'op':22s} {'N':>11s} {'D':>5s} {'C':>5s} {'triton':>11s} {'torch':>11s} {'×torch':>7s} "
          f"{'GB/s':>8s} {'%copy':>6s} {'TFLOP/s':>8s} {'%mm':>6s}")
    for r in rows + [sil]:
        if "triton_s" not in r:
            print(f"{r['op']:22s} {r['n']:>11,} {r['d']:>5d} {r['c']:>5d}  {r.get('note', '')}")
            continue
        print(f"{r['op']:22s} {r['n']:>11,} {r['d']:>5d} {r['c']:>5d} {r['triton_s'] * 1e3:9.2f}ms "
              f"{r['torch_s'] * 1e3:9.2f}ms {r['speedup']:7.2f} {_cell(r.get('gb_s'), '.1f', 8)} "
              f"{_cell(r.get('of_copy_bw'), '.1%', 6)} {_cell(r.get('tflop_s'), '.1f', 8)} "
              f"{_cell(r.get('of_matmul'), '.1%', 6)}")
    print()
    for line in verdict_lines:
        print(line)


def write_json(path, payload):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gpu_bench.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: run every code path once (CPU + interpreter)")
    parser.add_argument("--compile-only", action="store_true", help="compile every kernel variant for --arch, no GPU")
    parser.add_argument("--arch", type=int, default=90, help="compute capability for --compile-only (default 90)")
    parser.add_argument("--budget", type=float, help="seconds for the timing grid (default 270 on a GPU)")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args(argv)

    from iimm.kernels import triton_ops

    if args.compile_only:
        for line in triton_ops.compile_for(args.arch):
            print(line)
        return 0
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif triton_interpreted() and args.small:
        device = torch.device("cpu")
    else:
        print("gpu_bench needs a CUDA GPU; on a CPU run it as: TRITON_INTERPRET=1 python benches/gpu_bench.py --small",
              file=sys.stderr)
        return 2
    size = dict(SMALL if args.small else FULL)
    if args.budget:
        size["budget_s"] = args.budget
    budget = Budget(size["budget_s"])
    clock = Clock(device)
    started = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (interpreter)'}", flush=True)
    rates = card_rates(device, clock, size)
    print(f"card: copy {rates['copy_gb_s']:.3g} GB/s, matmul {rates['matmul_tflop_s']:.3g} TFLOP/s", flush=True)
    try:
        checks = check_kernels(triton_ops, device, size)
    except Exception as exc:  # noqa: BLE001 - report and go on to the timings
        checks = [{"check": "all", "rel_err": math.inf, "nan": True, "exact": False,
                   "note": f"error: {type(exc).__name__}: {exc}"[:300]}]
    print(f"checks done ({time.perf_counter() - started:.0f} s)", flush=True)
    try:
        sil = time_silhouette(triton_ops, device, clock, size, rates, budget)
    except Exception as exc:  # noqa: BLE001
        sil = {"op": "silhouette_euclidean", "n": size["pair_n"], "d": size["pair_d"], "c": size["pair_c"],
               "note": f"error: {type(exc).__name__}: {exc}"[:200]}
    rows = time_grid(triton_ops, device, clock, size, rates, budget)
    lines = verdicts(rows, sil, size, device)
    print_table(rates, checks, rows, sil, lines)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        write_json(args.json, {"device": str(device), "rates": rates, "checks": checks, "grid": rows,
                               "silhouette": sil, "verdicts": lines})
    failed = [c for c in checks if not (c["rel_err"] < 1e-5 and not c["nan"] and c["exact"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
