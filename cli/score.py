"""`iimm score`: every score of a task's zero-shot embeddings."""

from __future__ import annotations

import click

from ..engine import load_embeddings, score as score_embeddings
from ..engine.errors import InputError
from ..engine.scores import DEFAULT_QUADRATIC_LIMIT, SCORES
from .progress import ProgressBar
from .render import FORMATS, emit, table, to_csv, to_json


def report_table(result: dict) -> str:
    head = (f"{result['input']}: N={result['n']} D={result['d']} C={result['c']}  "
            f"backend={result['backend']} ({result['device']})  {result['seconds']:.2f} s")
    rows = [[key, value, SCORES[key].meaning if key in SCORES else ""] for key, value in result["scores"].items()]
    lines = [head, "", table(rows, ["score", "value", "meaning"])]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def render_result(result: dict, fmt: str) -> str:
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        flat = {k: v for k, v in result.items() if k not in ("scores", "notes", "sample_rows", "skipped")}
        return to_csv([{**flat, **result["scores"]}])
    return report_table(result)


@click.command()
@click.option("--embeddings", "embeddings_path", type=click.Path(), required=True,
              help="An .npz (image, label, text[, classnames]) or a folder of image.npy/label.npy/text.npy.")
@click.option("--metrics", default="all", show_default=True, help=f"'all' or comma-separated keys: {', '.join(SCORES)}.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result here instead of stdout.")
@click.option("--backend", default="auto", show_default=True, help="auto, torch, numba or triton.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--chunk-rows", type=click.IntRange(min=1), help="Rows per chunk (default: about 64 MiB).")
@click.option("--gensil-p", type=float, default=1.0, show_default=True, help="Power-mean exponent of gensil.")
@click.option("--sample", type=click.IntRange(min=2), help="Rows for the all-pairs scores (seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every row sample.")
@click.option("--quadratic-limit", type=click.IntRange(min=2), default=DEFAULT_QUADRATIC_LIMIT, show_default=True,
              help="Above this many rows the all-pairs scores run on a seeded sample of this size.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def score(embeddings_path, metrics, fmt, output, backend, device, chunk_rows, gensil_p, sample, seed,
          quadratic_limit, progress):
    """Score a task's zero-shot embeddings (IIMM, silhouettes, zero-shot accuracy, ...)."""
    es = load_embeddings(embeddings_path)
    with ProgressBar(enabled=progress) as bar:
        report = score_embeddings(es, metrics, backend=backend, device=device, chunk_rows=chunk_rows,
                                  gensil_p=gensil_p, sample=sample, seed=seed, quadratic_limit=quadratic_limit,
                                  progress=bar)
    emit(render_result(report.to_dict(), fmt), output)


__all__ = ["score", "render_result", "InputError"]
