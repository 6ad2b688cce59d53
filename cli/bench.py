"""`iimm bench`: time the compute backends side by side on synthetic embeddings."""

from __future__ import annotations

import click

from ..errors import InputError
from ..kernels import BACKENDS, ROW_DTYPES
from .commands import command
from .device_options import device_option
from .progress import ProgressBar
from .render import FORMATS, emit, table, to_csv, to_json, writable_path

HEADER = ["op", "implementation", "rows", "time/pass", "rows/s", "GB/s", "× torch", "value", "note"]


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _si(x: float | None) -> str:
    """3 significant digits with a k/M/G suffix: 75.9k, 1.09M."""
    if x is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def bench_table(rows, title: str) -> str:
    body = [[r.op, r.impl, str(r.rows), _seconds(r.seconds), _si(r.rows_per_s),
             "-" if r.gb_per_s is None else f"{r.gb_per_s:.3g}", "-" if r.speedup is None else f"{r.speedup:.2f}",
             "-" if r.value is None else f"{r.value:.6f}", r.note] for r in rows]
    legend = ("× torch: the PyTorch path's time for the same quantity divided by this row's time (above 1 is "
              "faster); value: intra-modal similarity (class_sums), zero-shot top-1 (cross_reduce), Euclidean "
              "silhouette (pairwise); GB/s: rows read once per pass.")
    return "\n".join([title, "", table(body, HEADER), "", legend])


def parse_backends(text: str) -> list[str]:
    """Comma-separated names; `run_bench` checks each one."""
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    if not names:
        raise InputError(f"--backends {text!r}: use a comma-separated list of {', '.join(BACKENDS)}")
    return names


@command("bench")
@click.option("--n", "n", type=click.IntRange(min=2), default=200_000, show_default=True, help="Rows (images).")
@click.option("--d", "d", type=click.IntRange(min=1), default=512, show_default=True, help="Embedding width.")
@click.option("--c", "c", type=click.IntRange(min=2), default=100, show_default=True, help="Classes.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              help="Comma-separated backends to time; torch is the baseline of the '× torch' column.")
@device_option()
@click.option("--dtype", type=click.Choice(ROW_DTYPES), default="float16", show_default=True,
              help="Storage dtype of the synthetic rows.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed passes (median).")
@click.option("--pair-n", type=click.IntRange(min=2), help="Rows of the all-pairs pass (default 4096 CPU, 50k GPU).")
@click.option("--naive-limit", type=click.IntRange(min=2), help="Largest N for the naive O(N²) intra peer.")
@click.option("--sklearn-limit", type=click.IntRange(min=2), default=10_000, show_default=True,
              help="Largest N for scikit-learn's silhouette_score.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the result here instead of stdout.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def bench(n, d, c, backends, device, dtype, repeats, pair_n, naive_limit, sklearn_limit, seed, fmt, output, progress):
    """Each backend's time per pass, rows/s, GB/s and its ratio to the PyTorch path."""
    from ..engine.scoring.bench import run_bench
    from ..kernels import resolve_device

    device = str(resolve_device(device))  # report the device that ran, not "auto"
    names = parse_backends(backends)
    if "torch" not in names:
        names.insert(0, "torch")
    with ProgressBar(unit="steps", enabled=progress) as bar:
        rows = run_bench(n, d, c, names, device=device, dtype=dtype, repeats=repeats, pair_n=pair_n,
                         naive_limit=naive_limit, sklearn_limit=sklearn_limit, seed=seed, progress=bar)
    if fmt == "json":
        text = to_json({"n": n, "d": d, "c": c, "dtype": dtype, "device": device, "rows": [r.to_dict() for r in rows]})
    elif fmt == "csv":
        text = to_csv([{"n": n, "d": d, "c": c, "dtype": dtype, **r.to_dict()} for r in rows])
    else:
        text = bench_table(rows, f"iimm bench: N={n} D={d} C={c} {dtype} rows, device={device}, "
                                 f"median of {repeats} pass(es)")
    emit(text, output)
