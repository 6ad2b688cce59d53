"""Options shared by every command that turns images into embeddings (`score`, `embed`, `finetune`, …).

`@extraction_options` adds --model/--data/--pretrained/--template/--templates/--classnames/
--split/--domain/--batch-size/--workers/--dtype/--no-cache/--max-skip-frac/--store and hands
the command one `extract: ExtractOptions` argument instead of fourteen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import click

from ..engine.embedding.model_catalog import MODEL_ALIASES
from ..engine.embedding.prompts import list_template_sets
from ..engine.embedding.store import DEFAULT_SHARD_ROWS
from ..errors import InputError
from .device_options import store_option
from .option_group import option_group

ENCODE_BATCH_DEFAULT = 64
DATA_HELP = ("Images: a class-per-folder tree, a .csv/.jsonl manifest (path,label[,split,domain]), webdataset "
             "shards ('dir/{00000..00009}.tar', a .tar, a .txt list, a folder of .tar, a CLIP_benchmark root), "
             "a benchmark NAME@ROOT or wilds:NAME@ROOT (`iimm catalog list`).")

@dataclass
class ExtractOptions:
    """The parsed extraction options of one command line."""

    model: str | None
    data: str | None
    pretrained: str | None
    template: tuple[str, ...]
    templates: str | None
    classnames: str | None
    split: str | None
    domain: str | None
    label_key: str | None
    batch_size: int | None  # None: the command's default
    workers: int | None
    dtype: str
    no_cache: bool
    max_skip_frac: float
    store: str | None
    shard_rows: int

    @property
    def given(self) -> bool:
        """True when the command line names images to encode (--model or --data)."""
        return bool(self.model or self.data)

    def check(self, need_data: bool = True) -> None:
        """--model and --data come together (unless need_data is False); a bare architecture needs its weights."""
        from ..engine.embedding.models import RANDOM_WEIGHTS, builtin_model_config

        if need_data and bool(self.model) != bool(self.data):
            missing = "--data" if self.model else "--model"
            raise InputError(f"{missing} is missing; images are encoded with --model M --data PATH together")
        name = self.model or ""
        if name and name not in MODEL_ALIASES and not name.startswith(("hf-hub:", "local-dir:")):
            builtin_model_config(name)
        if (name not in MODEL_ALIASES and not name.startswith(("hf-hub:", "local-dir:"))
                and self.pretrained is None):
            raise InputError(f"--model {name} names an architecture without weights; pass --pretrained TAG (see "
                             f"`iimm models --filter {name}`), --pretrained FILE, or --pretrained {RANDOM_WEIGHTS}")

    def embed_kwargs(self) -> dict:
        """Keyword arguments of `iimm.engine.embedding.extract.embed_dataset` (without device and progress)."""
        template_file, template_set = _templates_source(self.templates)
        return dict(pretrained=self.pretrained, templates=list(self.template) or None, template_file=template_file,
                    template_set=template_set, classnames=self.classnames, split=self.split, domain=self.domain,
                    label_key=self.label_key, batch_size=self.batch_size or ENCODE_BATCH_DEFAULT, workers=self.workers, dtype=self.dtype,
                    store=self.store, use_cache=not self.no_cache, max_skip_frac=self.max_skip_frac,
                    shard_rows=self.shard_rows)

    def dataset(self):
        """The `ImageDataset` --data names (listed, not decoded), with --classnames, --split and --domain applied."""
        from ..engine.embedding.data import load_image_dataset

        return load_image_dataset(self.data, self.classnames, self.split, self.domain, self.label_key)

    def embed(self, device: str = "auto", progress=None, executor=None, data=None):
        """Run `embed_dataset` with these options -> (EmbeddingSet, EmbedInfo); `data`: an already listed dataset."""
        from ..engine.embedding.extract import embed_dataset

        self.check()
        return embed_dataset(self.model, self.data if data is None else data, device=device, progress=progress,
                             executor=executor, **self.embed_kwargs())


    def class_text_encoder(self, device: str = "auto"):
        """names -> (C, D) class texts of --model with these prompts (for image embeddings made elsewhere)."""
        from ..engine.embedding.extract import class_text_encoder

        self.check(need_data=False)
        template_file, template_set = _templates_source(self.templates)
        return class_text_encoder(self.model, pretrained=self.pretrained, templates=list(self.template) or None,
                                  template_file=template_file, template_set=template_set, device=device,
                                  store=False if self.no_cache else self.store)


def _templates_source(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if os.path.exists(value):
        return value, None
    if value.lower() in list_template_sets():
        return None, value.lower()
    raise InputError(f"--templates {value!r} is neither a file nor a built-in set; built-in sets: "
                     f"{', '.join(list_template_sets())}")


_OPTIONS = [
    click.option("--model", "-m", help="Model: clip, siglip, coca, eva02, an open_clip architecture, "
                                       "hf-hub:ORG/REPO or local-dir:PATH."),
    click.option("--data", help=DATA_HELP),
    click.option("--pretrained", help="Weights for an architecture: an open_clip tag, a .safetensors/.pt file, "
                                      "or 'random'. For an alias it replaces the alias's tag."),
    click.option("--template", multiple=True, help="Prompt template with {} for the class name; repeat for an "
                                                   "ensemble (averaged, then renormalised per class)."),
    click.option("--templates", help="Templates file (JSON list or one per line) or a built-in set: "
                                     + ", ".join(list_template_sets()) + "."),
    click.option("--classnames", type=click.Path(exists=True, dir_okay=False),
                 help="JSON list (class order) or mapping (folder name or index -> name) renaming classes."),
    click.option("--split", help="Use only the images of this split (a manifest's split column; train/test of "
                                 "NAME@ROOT; train/id_val/id_test/val/test of WILDS; a CLIP_benchmark split)."),
    click.option("--domain", help="Use only the images of this domain (a manifest's domain column; WILDS: "
                                  "fmow region, iwildcam location, camelyon17 hospital)."),
    click.option("--label-key", help="Webdataset shards: the field of each sample's json holding the label "
                                     "[default: the cls member]."),
    click.option("--batch-size", type=click.IntRange(min=1),
                 help=f"Images per batch [default: {ENCODE_BATCH_DEFAULT} to encode; fine-tuning trains with 128]."),
    click.option("--workers", type=click.IntRange(min=0), help="Image-decoding worker processes "
                                                               "[default: cores - 1, at most 8]."),
    click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
                 help="How image embeddings are kept."),
    click.option("--no-cache", is_flag=True, help="Neither read nor write the embedding store."),
    click.option("--max-skip-frac", type=click.FloatRange(0, 1), default=0.05, show_default=True,
                 help="Fail when more than this fraction of the images cannot be read."),
    store_option(),
    click.option("--shard-rows", type=click.IntRange(min=1), default=DEFAULT_SHARD_ROWS, show_default=True,
                 help="Images per store shard, the unit an interrupted run resumes from (a set already begun "
                      "keeps its own)."),
]


extraction_options = option_group(ExtractOptions, _OPTIONS, "extract")
"""Decorator: add the extraction options and pass them to the command as `extract=ExtractOptions(...)`."""
