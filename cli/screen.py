"""`iimm screen`: every catalog dataset × model, ranked by predicted gain (by IIMM when uncalibrated)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .commands import command
from .device_options import backend_option, device_option, store_option
from .executor_options import executor_options
from .progress import ProgressBar
from .render import FORMATS, emit, table, to_csv, to_json, writable_path


def screen_table(result) -> str:
    methods = list(dict.fromkeys(m for r in result.rows for m in r.predictions))
    header = ["rank", "dataset", "model", "iimm", "images"]
    for m in methods:
        header += [f"{m} gain", "90% interval", f"{m} forgetting"]
    rows = []
    for rank, r in enumerate(result.ranked, 1):
        cells = [str(rank), r.dataset, r.model, r.iimm, str(r.images)]
        for m in methods:
            p = r.predictions.get(m)
            if p is None:
                cells += ["", "", ""]
                continue
            g, f = p.get("gain"), p.get("forgetting")
            flag = "" if r.in_range[m] else " (outside calibration)"
            cells += [g["value"] if g else "", f"[{g['low']:.3f}, {g['high']:.3f}]{flag}" if g else "",
                      f["value"] if f else ""]
        rows.append(cells)
    return table(rows, header)


@command("screen")
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, required=True,
              help="Model: an alias, an open_clip architecture, hf-hub:ORG/REPO or local-dir:PATH (repeatable).")
@click.option("--pretrained", help="Weights for every --model that is a bare architecture.")
@click.option("--calibration", "calibrations", multiple=True, type=click.Path(dir_okay=False),
              help="Calibration JSON from `iimm calibrate` (repeatable; matched to models by name).")
@click.option("--metrics", default="iimm", show_default=True,
              help="Scores to compute besides iimm ('all' for every one).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the table/CSV/JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), callback=writable_path,
              help="PNG chart (default: beside --output, same stem).")
@backend_option()
@device_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers (default: cores − 1).")
@store_option()
@click.option("--max-skip-frac", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Fail a dataset when more than this fraction of its images cannot be read.")
@click.option("--include-probes", is_flag=True, help="Also screen the catalog's probe-only datasets.")
@click.option("--recompute", is_flag=True,
              help="Compute the scores again even when the store keeps them for the same embeddings.")
@executor_options
def screen_cmd(catalog, models, pretrained, calibrations, metrics, fmt, output, plot, backend, device, batch_size,
               workers, store, max_skip_frac, include_probes, recompute, run_on):
    """Cached embeddings are reused, and so are scores the store keeps; without --calibration the ranking is
    by IIMM.

    With --executor ray each dataset × model cell is one Ray task (cells already in the store score on a CPU).
    """
    from ..engine.calibration.catalog import load_catalog
    from ..engine.calibration.fit import Calibration
    from ..engine.calibration.plots import plot_screen
    from ..engine.calibration.screen import screen

    cat = load_catalog(catalog)
    cals = [Calibration.from_json(c) for c in calibrations]
    keys = None if metrics == "all" else [k for k in metrics.split(",") if k.strip()]
    embed_options = {"batch_size": batch_size, "workers": workers, "store": store, "max_skip_frac": max_skip_frac}

    def on_failure(dataset, model, message):
        click.echo(f"iimm: {dataset} × {model} failed: {message}", err=True)

    with ProgressBar(unit="img") as bar:
        result = screen(cat, models, calibrations=cals, pretrained=pretrained, keys=keys, backend=backend,
                        device=device, embed_options=embed_options, include_probes=include_probes,
                        recompute=recompute, progress=bar, on_failure=on_failure, executor=run_on.build())
    for note in result.notes:
        click.echo(f"iimm: note: {note}", err=True)
    ranked = result.ranked
    if fmt == "json":
        text = to_json({"catalog": catalog, "rows": [r.to_dict() for r in ranked],
                        "failures": [{"dataset": d, "model": m, "error": e} for d, m, e in result.failures]})
    elif fmt == "csv":
        text = to_csv([r.flat() for r in ranked])
    else:
        text = screen_table(result)
    emit(text, output)
    plot_path = plot or (str(Path(output).with_suffix(".png")) if output else None)
    if plot_path and ranked:
        plot_screen(ranked, plot_path)
        click.echo(f"wrote {plot_path}", err=True)
    if result.failures:
        click.echo(f"iimm: {len(result.failures)} of {len(result.failures) + len(result.rows)} dataset × model "
                   f"runs failed:", err=True)
        for d, m, e in result.failures:
            click.echo(f"  {d} × {m}: {e}", err=True)
        sys.exit(1)

