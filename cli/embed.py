"""`iimm embed`: encode a dataset's images and class prompts, keep them in the store, print where."""

from __future__ import annotations

import click

from ..errors import InputError
from .commands import command
from .device_options import device_option
from .executor_options import executor_options
from .extract_options import extraction_options
from .progress import ProgressBar
from .render import emit, to_json, write_atomic, writable_path


def embed_info_dict(es, info) -> dict:
    """The JSON-ready summary of an embedding run."""
    return {"model": info.model, "pretrained": info.pretrained, "data": info.data, "data_path": info.data_path,
            "n": es.n, "d": es.d, "c": es.c,
            "images": info.images, "skipped": info.skipped, "cached": info.cached, "encoded": info.encoded,
            "location": info.location, "seconds": round(info.seconds, 6)}


@command("embed")
@extraction_options
@device_option()
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Also write the embeddings to this .npz (image, label, text, classnames).")
@click.option("--format", "fmt", type=click.Choice(["path", "json"]), default="path", show_default=True,
              help="Print the embeddings folder, or a JSON summary.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@executor_options
def embed(extract, device, output, fmt, progress, run_on):
    """The folder printed can be passed to `iimm score --embeddings`. A second run on the
    same model, images, class names and templates encodes nothing. With --executor ray
    each store shard is one Ray task; a rerun of an interrupted run resumes.
    """
    if not extract.given:
        raise InputError("nothing to embed; pass --model M --data PATH")
    if extract.no_cache and not output:
        raise InputError("--no-cache keeps nothing; add --output FILE.npz to write the embeddings")
    with ProgressBar(unit="img", enabled=progress) as bar:
        es, info = extract.embed(device=device, progress=bar, executor=run_on.build())
    if output:
        write_atomic(output, writer=lambda f: write_npz(f, es))
    if info.skipped:
        click.echo(f"iimm: {len(info.skipped)} unreadable image(s) skipped, e.g. {info.skipped[0]}", err=True)
    if fmt == "json":
        emit(to_json(embed_info_dict(es, info)), None)
    else:
        click.echo(info.location or output)


def write_npz(f, es) -> None:
    """The embedding set as one .npz (image, label, text, classnames) into the open binary file f."""
    import numpy as np

    image = np.concatenate([np.asarray(b) for b in es.image_blocks])
    np.savez(f, image=image, label=es.label, text=es.text, classnames=np.array(es.classnames or [], dtype=str))
