"""`iimm predict`: a task's IIMM turned into predicted gain and forgetting with intervals."""

from __future__ import annotations

from pathlib import Path

import click

from .commands import command
from .device_options import backend_option, device_option
from .extract_options import extraction_options
from .progress import ProgressBar
from .render import emit, table, to_json, writable_path


def task_score(es, score_key: str, backend: str = "auto", device: str = "auto", progress: bool = True) -> float:
    """The task's score (IIMM) from its embedding set."""
    from ..engine import score as score_embeddings

    with ProgressBar(enabled=progress) as bar:
        report = score_embeddings(es, [score_key], backend=backend, device=device, progress=bar)
    return report.scores[score_key]


def prediction_report(value: float, calibration=None, level: float = 0.90,
                      known_scores: list[float] | None = None) -> dict:
    """The JSON result: `{"iimm", "in_range", "predictions": {outcome: {"value", "low", "high"}}}`
    with a calibration; `{"iimm"}` plus `"rank"` / `"of"` among `known_scores` without one."""
    from ..engine.calibration.fit import predict as predict_outcomes, rank_among

    if calibration is not None:
        out = predict_outcomes(calibration, value, level).to_dict()
        out.update({"model": calibration.model, "method": calibration.method,
                    "calibration_tasks": len(calibration.points)})
        return out
    out = {"iimm": value}
    if known_scores is not None:
        out["rank"], out["of"] = rank_among(value, known_scores)
    return out


def report_table(report: dict, score_key: str = "iimm") -> str:
    value = report[score_key]
    if "predictions" not in report:
        lines = [f"{score_key} = {value:.6f}"]
        if "rank" in report:
            lines.append(f"rank {report['rank']} of {report['of']} known tasks (1 = most to gain and to forget)")
        lines.append("no calibration given: higher IIMM means more to gain and more to forget; pass --calibration "
                     "for predicted values")
        return "\n".join(lines)
    lo, hi = report["calibration_range"]
    where = "inside" if report["in_range"] else "OUTSIDE"
    head = (f"{score_key} = {value:.6f}  ({where} the calibration range {lo:.4f} .. {hi:.4f} of "
            f"{report['calibration_tasks']} tasks, {report['model']} / {report['method']})")
    level = f"{report['level']:.0%} interval"
    rows = [[outcome, f"{p['value']:.4f}", f"[{p['low']:.4f}, {p['high']:.4f}]"]
            for outcome, p in report["predictions"].items()]
    return "\n".join([head, "", table(rows, ["outcome", "predicted", level]),
                      "", "outcomes are fractions: 0.05 = 5 accuracy points"])


def out_of_range_warning(report: dict, score_key: str = "iimm") -> str | None:
    if report.get("in_range", True):
        return None
    lo, hi = report["calibration_range"]
    return (f"warning: the task's {score_key} {report[score_key]:.4f} lies outside the calibration range "
            f"{lo:.4f} .. {hi:.4f}; the prediction is an extrapolation")


@command("predict")
@extraction_options
@click.option("--calibration", "calibration_path", type=click.Path(dir_okay=False),
              help="A calibration JSON written by `iimm calibrate`; without it, only the IIMM (and its rank).")
@click.option("--embeddings", "embeddings_path", type=click.Path(),
              help="The task's zero-shot embeddings: an .npz or a folder of .npy arrays.")
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.90,
              show_default=True, help="Coverage of the prediction intervals.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the result here instead of stdout.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=writable_path,
              help="Also draw the calibration with this task marked, as a PNG.")
@backend_option()
@device_option()
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def predict(extract, calibration_path, embeddings_path, level, fmt, output, plot_path, backend, device, progress):
    """The task is --embeddings PATH, or --model M --data IMAGES (embeddings from the store).
    Without --calibration it prints the IIMM and its rank among the scores the store knows.
    """
    from ..engine import load_embeddings
    from ..engine.calibration.fit import Calibration
    from ..engine.calibration.runs import known_scores

    if extract.given == bool(embeddings_path):
        raise click.UsageError("give the task once: --embeddings PATH, or --model M --data PATH")
    calibration = Calibration.from_json(calibration_path) if calibration_path else None
    if plot_path and calibration is None:
        raise click.UsageError("--plot draws the calibration; pass --calibration FILE as well")
    score_key = calibration.score_key if calibration else "iimm"
    if extract.given:
        with ProgressBar(unit="img", enabled=progress) as bar:
            es, info = extract.embed(device=device, progress=bar)
        this_task = info.set_id
    else:
        es = load_embeddings(embeddings_path)
        this_task = es.source
    value, meta = task_score(es, score_key, backend, device, progress), es.meta
    if calibration is not None and meta.get("model") not in (None, calibration.model):
        click.echo(f"warning: the embeddings come from model {meta['model']!r} but the calibration is for "
                   f"{calibration.model!r}", err=True)
    known = None if calibration else known_scores(extract.store, score_key, exclude=this_task)
    report = prediction_report(value, calibration, level, known)
    warning = out_of_range_warning(report, score_key)
    if warning:
        click.echo(warning, err=True)
    for name, reason in (calibration.skipped.items() if calibration else ()):
        if name.startswith(f"{score_key}/"):
            click.echo(f"note: no {name.split('/', 1)[1]} prediction: {reason}", err=True)
    if plot_path:
        from ..engine.calibration.plots import plot_calibration
        label = Path(embeddings_path or extract.data).stem
        plot_calibration(calibration, None, plot_path, level, highlight=(label, value))
        click.echo(f"wrote {plot_path}", err=True)
    emit(to_json(report) if fmt == "json" else report_table(report, score_key), output)
