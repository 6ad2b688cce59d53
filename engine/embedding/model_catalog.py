"""What `--model` accepts: the aliases and every open_clip (architecture, tag) pair, and which are on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass

MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "clip": ("ViT-B-32", "openai"),
    "siglip": ("ViT-B-16-SigLIP", "webli"),
    "coca": ("coca_ViT-B-32", "laion2b_s13b_b90k"),
    "eva02": ("EVA02-B-16", "merged2b_s8b_b131k"),
}


@dataclass(frozen=True)
class ModelEntry:
    """One row of `iimm models`: an architecture with one pretrained tag, or with none (pretrained None:
    open_clip knows the architecture but publishes no weights for it; --pretrained FILE or random)."""

    architecture: str
    pretrained: str | None
    alias: str | None
    cached: bool


def list_model_entries(contains: str | None = None) -> list[ModelEntry]:
    """Every open_clip (architecture, tag) pair, aliases first, then every architecture without a tag;
    `contains` filters by substring."""
    import open_clip

    alias_of = {v: k for k, v in MODEL_ALIASES.items()}
    pairs = list(MODEL_ALIASES.values()) + [p for p in open_clip.list_pretrained() if tuple(p) not in alias_of]
    tagged = {arch for arch, _ in pairs}
    pairs += [(arch, None) for arch in open_clip.list_models() if arch not in tagged]
    rows = []
    for arch, tag in pairs:
        if contains and contains.lower() not in f"{arch} {tag or ''} {alias_of.get((arch, tag), '')}".lower():
            continue
        rows.append(ModelEntry(arch, tag, alias_of.get((arch, tag)), bool(tag) and is_cached(arch, tag)))
    return rows


def is_cached(architecture: str, tag: str) -> bool:
    """Whether the weights of (architecture, tag) are already on disk (Hugging Face or open_clip URL cache)."""
    import open_clip
    from open_clip.pretrained import _get_safe_alternatives

    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        return False
    if cfg.get("file"):
        return os.path.isfile(cfg["file"])
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in [*_get_safe_alternatives(filename), filename]:
            if isinstance(try_to_load_from_cache(repo, candidate), str):
                return True
    if cfg.get("url") and not cfg.get("hf_hub"):  # open_clip downloads from the Hub whenever a tag has one
        return os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"])))
    return False
