"""`iimm score`: every score of a task's zero-shot embeddings."""

from __future__ import annotations

import click

from ..engine.scoring.registry import (DEFAULT_BASELINE_SAMPLE, DEFAULT_QUADRATIC_LIMIT, METRIC_GROUPS, SCORES,
                                      TRANSFER_ALIASES, TRANSFER_SCORES)
from ..errors import InputError
from .commands import command
from .device_options import backend_option, device_option
from .executor_options import executor_options
from .extract_options import extraction_options
from .progress import ProgressBar
from .render import FORMATS, emit, table, to_csv, to_json, writable_path

ESTIMATE_NOTICE_S = 5.0


def meaning(key: str) -> str:
    if key in SCORES:
        return SCORES[key].meaning
    return TRANSFER_SCORES[key].description if key in TRANSFER_SCORES else ""


def report_table(result: dict) -> str:
    skipped = len(result.get("skipped") or [])
    unread = f" ({skipped} unreadable image{'s' if skipped != 1 else ''} skipped; --format json lists them)" \
        if skipped else ""
    head = (f"{result['input']}: N={result['n']}{unread} D={result['d']} C={result['c']}  "
            f"backend={result['backend']} ({result['device']})  {result['seconds']:.2f} s")
    rows = [[key, value, meaning(key)] for key, value in result["scores"].items()]
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


def tell_estimate(bar: ProgressBar, estimate) -> None:
    """The all-pairs scores' expected time, when it is long enough to matter or the sample is over the limit."""
    if estimate.over_limit or estimate.seconds >= ESTIMATE_NOTICE_S:
        bar.notice(estimate.message())


def load_label_embeddings(path: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read label embeddings {path}: {exc}; pass a (C, D) float .npy file") from exc


@command("score")
@click.option("--embeddings", "embeddings_path", type=click.Path(),
              help="An .npz (image, label, text[, classnames]), a folder of image.npy/label.npy/text.npy "
                   "(such as `iimm embed` prints) or a clip-retrieval output folder (img_emb/, metadata/; "
                   "--model then encodes the class texts). Or encode images with --model and --data.")
@click.option("--label-column", help="clip-retrieval metadata column holding each image's class "
                                     "[default: label, else the image's folder].")
@extraction_options
@click.option("--metrics", default="all", show_default=True,
              help=f"Comma-separated keys or groups ({', '.join([*METRIC_GROUPS, *TRANSFER_ALIASES])}): "
                   f"{', '.join([*SCORES, *TRANSFER_SCORES])}.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the result here instead of stdout.")
@backend_option()
@device_option()
@click.option("--chunk-rows", type=click.IntRange(min=1), help="Rows per chunk (default: about 128 MiB).")
@click.option("--gensil-p", type=float, default=1.0, show_default=True, help="Power-mean exponent of gensil.")
@click.option("--sample", type=click.IntRange(min=2), help="Rows for the all-pairs scores (seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every row sample.")
@click.option("--quadratic-limit", type=click.IntRange(min=2),
              help=f"Above this many rows the all-pairs scores run on a seeded sample of this size [default: "
                   f"{DEFAULT_QUADRATIC_LIMIT['cpu']:,} on a CPU, {DEFAULT_QUADRATIC_LIMIT['cuda']:,} on a GPU].")
@click.option("--logit-scale", type=click.FloatRange(min=0, min_open=True),
              help="Zero-shot softmax scale of LEEP/NCE (default: the model's, 100 for bare embeddings).")
@click.option("--baseline-sample", type=click.IntRange(min=2), default=DEFAULT_BASELINE_SAMPLE, show_default=True,
              help="Row sample of the in-memory baselines (NCTI, LogME with N < D).")
@click.option("--label-embeddings", type=click.Path(dir_okay=False), multiple=True,
              help="Extra (C, D) .npy label embeddings for EMMS (repeatable); the class texts are always used.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar on a terminal, lines otherwise.")
@executor_options
def score(embeddings_path, label_column, extract, metrics, fmt, output, backend, device, chunk_rows, gensil_p,
          sample, seed, quadratic_limit, logit_scale, baseline_sample, label_embeddings, progress, run_on):
    """Either --embeddings PATH, or --model M --data IMAGES (encoded once, then kept in the store).
    A clip-retrieval folder's class texts come from its text.npy, or from --model M with --template prompts.
    With --executor ray each ~1 M rows of shard files are one task per pass, their statistics kept under the store's
    partials/ so that a rerun after a crash computes only what is missing.
    """
    from ..engine import load_embeddings, score as score_embeddings
    from ..engine.embedding.store import open_store

    info = None
    options = dict(backend=backend, device=device, chunk_rows=chunk_rows, gensil_p=gensil_p, sample=sample, seed=seed,
                   quadratic_limit=quadratic_limit, logit_scale=logit_scale, baseline_sample=baseline_sample,
                   label_embeddings=[load_label_embeddings(f) for f in label_embeddings] or None)
    class_texts, dataset = _checked_source(embeddings_path, extract, metrics, device)
    if run_on.executor == "ray":
        report, info = _score_on_ray(embeddings_path, label_column, extract, dataset, class_texts, metrics, options,
                                     progress, run_on)
    else:
        if dataset is None:
            es = load_embeddings(embeddings_path, class_texts=class_texts, label_column=label_column,
                                 classnames=extract.classnames)
        else:
            with ProgressBar(unit="img", enabled=progress) as bar:
                es, info = extract.embed(device=device, progress=bar, data=dataset)
        with ProgressBar(enabled=progress) as bar:
            report = score_embeddings(es, metrics, progress=bar, on_estimate=lambda est: tell_estimate(bar, est),
                                      **options)
    result = report.to_dict()
    if info is not None:
        result.update(model=info.model, pretrained=info.pretrained, data=info.data, data_path=info.data_path,
                      images=info.images,
                      skipped=info.skipped, cached=info.cached)
        if info.set_id:
            open_store(extract.store).record_score_run(result["scores"], input=result["input"],
                                                       embedding_set_id=info.set_id, backend=result["backend"],
                                                       device=result["device"], version=result["version"],
                                                       seconds=result["seconds"])
    emit(render_result(result, fmt), output)



def _checked_source(embeddings_path, extract, metrics, device):
    """The one source of embeddings, checked before any work -> (class texts of a clip-retrieval folder or None,
    the listed dataset to encode or None); a dataset's classes are checked before any image is encoded."""
    if embeddings_path:
        if extract.data:
            raise InputError("--embeddings and --data both given; pass one source of embeddings")
        if not extract.model and (extract.template or extract.templates or extract.pretrained):
            raise InputError("--template/--templates/--pretrained with --embeddings need --model M, the model that "
                             "encodes the class texts of a clip-retrieval folder")
        return (extract.class_text_encoder(device) if extract.model else None), None
    if not extract.given:
        raise InputError("no embeddings to score; pass --embeddings PATH, or --model M --data PATH")
    from ..engine.scoring.registry import resolve_keys
    from ..engine.scoring.scores import check_classes

    extract.check()
    dataset = extract.dataset()
    check_classes(resolve_keys(metrics), dataset.class_counts(), dataset.classnames)
    return None, dataset


def _score_on_ray(embeddings_path, label_column, extract, dataset, class_texts, metrics, options: dict,
                  progress: bool, run_on):
    """(ScoreReport, EmbedInfo or None) of the embeddings scored as Ray tasks, one per shard file and pass."""
    from ..engine.embedding.store import open_store
    from ..engine.scoring.sharded import score_sharded

    info = None
    source = embeddings_path
    if dataset is not None:
        with ProgressBar(unit="img", enabled=progress) as bar:
            _, info = extract.embed(device=options["device"], progress=bar, executor=run_on.build(), data=dataset)
        source = info.location
    with ProgressBar(unit="unit", enabled=progress) as bar:
        report = score_sharded(source, metrics, executor=run_on.build(), class_texts=class_texts,
                               label_column=label_column, classnames=extract.classnames,
                               partials=open_store(extract.store).root / "partials",
                               on_unit=lambda k, done, total: bar(f"pass {k + 1} units", done, total), **options)
    return report, info
