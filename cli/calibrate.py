"""`iimm calibrate`: reference fine-tunes over a catalog, fitted into a calibration per method."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..engine.files import write_atomic
from ..engine.finetune.config import METHODS, EvalOptions
from .commands import command
from .device_options import backend_option, device_option, store_option
from .executor_options import executor_options
from .finetune import TrainingProgress
from .render import table, to_csv, writable_path
from .training_options import TRAIN_BATCH_DEFAULT, training_options


def output_paths(output: str, method: str, several: bool) -> tuple[Path, Path, Path]:
    """(calibration JSON, PNG plot, τ table CSV) for one method; several methods get a -<method> suffix."""
    out = Path(output)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    if several:
        stem = stem.with_name(f"{stem.name}-{method}")
    return stem.with_suffix(".json"), stem.with_suffix(".png"), stem.with_name(f"{stem.name}-tau.csv")


def tau_rows(calibration) -> list[dict]:
    return [{"score": r.score_key, "outcome": r.outcome, "n": r.n, "kendall_tau_b": r.kendall_tau_b,
             "kendall_p": r.kendall_p, "weighted_tau": r.weighted_tau, "weighted_tau_p": r.weighted_tau_p}
            for r in calibration.rank_correlations]


def fit_table(calibration) -> str:
    rows = []
    for outcome, fit in calibration.fits[calibration.score_key].items():
        rows.append([outcome, fit.slope, fit.intercept, fit.r2, fit.pearson_r, fit.p_value,
                     fit.loo_rmse if fit.loo_rmse is not None else "n/a"])
    return table(rows, ["outcome", "slope", "intercept", "R²", "r", "p", "LOO RMSE"])


@command("calibrate")
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--model", "-m", required=True, help="Model alias, architecture, hf-hub:ORG/REPO or local-dir:PATH.")
@click.option("--pretrained", help="Weights for a bare architecture (tag, file or 'random').")
@click.option("--method", "methods", multiple=True, required=True, type=click.Choice(METHODS),
              help="Fine-tuning method (repeatable: one calibration per method).")
@training_options
@click.option("--batch-size", type=click.IntRange(min=1), default=TRAIN_BATCH_DEFAULT, show_default=True,
              help="Training batch size.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Test share of each task that has no `test` in the catalog.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers (default: cores − 1).")
@device_option()
@backend_option("Backend of the zero-shot scores.")
@store_option("Store folder [default: $IIMM_HOME, else ~/.cache/iimm].")
@click.option("--permutations", type=click.IntRange(min=0), default=999, show_default=True,
              help="Permutations of the weighted-τ p-values (0: none).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), callback=writable_path,
              help="Calibration JSON; the PNG plot and the τ table (CSV) are written beside it.")
@click.option("--progress/--no-progress", default=True)
@executor_options
def calibrate_cmd(catalog, model, pretrained, methods, training, batch_size, test_fraction, workers, device, backend,
                  store, permutations, output, progress, run_on):
    """Runs already in the store are reused, so an interrupted calibration resumes where it stopped.
    With --executor ray each (method, task) fine-tune is one Ray task; the store must be shared storage.
    """
    from ..engine.calibration.catalog import load_catalog
    from ..engine.calibration.plots import plot_calibration
    from ..engine.calibration.runs import TaskRuns, calibrate, record_calibration

    cat = load_catalog(catalog)

    def on_failure(task, method, message):
        click.echo(f"iimm: {task} ({method}) failed: {message}", err=True)

    with TrainingProgress(",".join(methods), enabled=progress) as bar:
        runs = TaskRuns(seeds=training.seeds, seed=training.seed, split_seed=training.split_seed,
                        test_fraction=test_fraction, evaluation=EvalOptions(score_backend=backend))
        run = calibrate(cat, model, methods, pretrained=pretrained, config=training.config(batch_size),
                        options=training.method_options(), runs=runs, device=device, workers=workers, store=store,
                        permutations=permutations, progress=bar, on_failure=on_failure, executor=run_on.build())
    several = len(methods) > 1
    for method in methods:
        cal = run.calibrations[method]
        if cal is None:
            click.echo(f"iimm: {method}: no calibration: {run.unfitted[method]}; {run.advice(method)}", err=True)
            continue
        json_path, png_path, tau_path = output_paths(output, method, several)
        cal.to_json(json_path)
        plot_calibration(cal, None, png_path)
        write_atomic(tau_path, to_csv(tau_rows(cal)))
        record_calibration(store, cal, str(json_path))
        click.echo(f"{model} / {method}: {len(cal.tasks)} tasks, IIMM range "
                   f"[{cal.score_range[0]:.4f}, {cal.score_range[1]:.4f}]")
        click.echo(fit_table(cal))
        click.echo(f"wrote {json_path}, {png_path}, {tau_path}", err=True)
    if run.failures or any(c is None for c in run.calibrations.values()):
        sys.exit(1)
