"""`iimm demo DIR`: a tiny random model, small image tasks and a catalog, to try every command offline."""

from __future__ import annotations

import click

from .commands import command


@command("demo")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--images-per-class", type=click.IntRange(min=4), default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the model's weights and the images.")
def demo(folder, images_per_class, seed):
    """FOLDER gets tiny-clip/ (a CLIP with 32-pixel images and random weights, as an open_clip local-dir:
    folder), images/shapes, colours, stripes and digits (class-per-folder PNG trees) and catalog.toml
    naming the four tasks. Nothing is downloaded. The weights are random, so the numbers mean nothing:
    it is for trying the commands (see the README's "Try it without downloads").
    """
    from ..engine.demo import write_demo

    paths = write_demo(folder, images_per_class, seed)
    click.echo(f"wrote {paths['model']}, {', '.join(str(paths[t]) for t in ('shapes', 'colours', 'stripes', 'digits'))} "
               f"and {paths['catalog']}", err=True)
    model = f"local-dir:{paths['model']}"
    click.echo(f"try:  iimm score --model {model} --data {paths['shapes']}")
