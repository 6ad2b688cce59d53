"""Tiny open_clip models and small real image folders for tests (no network, seconds to build).

Plain functions; `tests/conftest.py` exposes them as session-scoped pytest fixtures.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

TINY_CONFIGS: dict[str, dict] = {
    # CLIP ViT: 32-pixel images, patch 8, width 64, 2 layers in each tower.
    "clip": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": dict(_TEXT),
    },
    # SigLIP: learned logit bias, timm ViT trunk with attention-pool ("map") head, non-causal text tower.
    # timm's `test_vit` (160 px, width 64) is the smallest timm ViT; image size is fixed by timm.
    "siglip": {
        "embed_dim": 64,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": dict(_TEXT, no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6}),
    },
    # CoCa: attentional pooler on the image tower, a text decoder (multimodal tower).
    "coca": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": dict(_TEXT, context_length=15, embed_cls=True, output_tokens=True),
        "multimodal_cfg": {"context_length": 15, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2},
        "custom_text": True,
    },
    # EVA-02: timm EVA trunk (rotary embeddings, SwiGLU). timm's smallest EVA-02 is
    # eva02_tiny_patch14_224 (width 192, 12 blocks, 224 px) — built with random weights offline.
    "eva": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": dict(_TEXT),
        "custom_text": True,
    },
}


def tiny_model_config(family: str = "clip") -> dict:
    """A copy of the tiny open_clip config of a family: clip, siglip, coca or eva."""
    return copy.deepcopy(TINY_CONFIGS[family])


def build_model(model_cfg: dict, seed: int = 0):
    """Instantiate an open_clip model from a config dict with seeded random weights."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    name = f"iimm-test-{abs(hash(json.dumps(model_cfg, sort_keys=True)))}"
    _MODEL_CONFIGS[name] = copy.deepcopy(model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
    return model.eval()


def write_local_dir(folder, model_cfg: dict, seed: int = 0, preprocess_cfg: dict | None = None) -> Path:
    """Save a seeded random model as an open_clip `local-dir:` folder.

    Writes open_clip_config.json ({"model_cfg", "preprocess_cfg"}) and open_clip_model.safetensors.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(model_cfg, seed)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def write_digits_png(folder, per_class: int = 20, size: int = 32, classes: int = 10) -> Path:
    """A class-per-folder tree of sklearn digits as PNG: ROOT/digit_<word>/<k>.png, upsampled to size×size.

    Folder names contain `_` so loaders must read it as a space ("digit zero").
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder)
    digits = load_digits()
    for c in range(classes):
        d = folder / f"digit_{DIGIT_WORDS[c]}"
        d.mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(digits.target == c)[:per_class]
        for k, r in enumerate(rows):
            pixels = (digits.images[r] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(d / f"{k}.png")
    return folder


def embed_killed_midway(model: str, data: str, store: str) -> None:
    """Child-process target: embed into `store` (shards of 10, batches of 5) and SIGKILL itself at 25 images."""
    import os
    import signal

    from iimm.engine.embedding.extract import embed_dataset

    torch.set_num_threads(1)

    def progress(stage, done, total):
        if done >= 25:
            os.kill(os.getpid(), signal.SIGKILL)

    embed_dataset(model, data, store=store, workers=0, batch_size=5, shard_rows=10, progress=progress)


def embed_in_child(model: str, data: str, store: str, barrier, results) -> None:
    """Child-process target: wait for the sibling at `barrier`, embed, put a summary dict on `results`."""
    from iimm.engine.embedding.extract import embed_dataset

    torch.set_num_threads(1)
    barrier.wait(120)
    es, info = embed_dataset(model, data, store=store, workers=0, shard_rows=8)
    results.put({"encoded": info.encoded, "location": info.location, "n": es.n})


def open_store_in_child(root: str, barrier, results) -> None:
    """Child-process target: wait for the siblings at `barrier`, open a Store at `root`, put "ok" or the error."""
    from iimm.engine.embedding.store import Store

    barrier.wait(60)
    try:
        Store(root)
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))
