"""Fixtures for the fine-tuning tests: tiny EVA-02 trunks in both q/k/v layouts, a digits manifest.

EVA-02-CLIP (open_clip's EVA02-B-16) uses timm's `eva02_base_patch16_clip_224`, whose
attention has *separate* q/k/v Linear layers (`qkv_fused=False`), rotary embeddings,
SwiGLU MLPs and an inner attention LayerNorm; timm's smallest EVA-02 (`eva02_tiny`) fuses
q/k/v instead. Both layouts are registered here as 32-pixel, 2-block timm models so the
methods can be checked on each in well under a second.
"""

from __future__ import annotations

import copy
import csv
import inspect
from pathlib import Path

from fixtures_tiny import _TEXT, tiny_model_config

_EVA_COMMON = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3,
                   swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4))


def _register_tiny_eva() -> None:
    from timm.models import register_model
    from timm.models.eva import Eva

    accepted = set(inspect.signature(Eva.__init__).parameters)

    def build(args: dict, kwargs: dict):
        # timm.create_model also passes pretrained_cfg / cache_dir, which only its builder reads
        return Eva(**args, **{k: v for k, v in kwargs.items() if k in accepted})

    def iimm_test_eva02_unfused(pretrained: bool = False, **kwargs):
        """EVA-02-CLIP block layout (separate q/k/v projections, inner attention norm), tiny."""
        return build(dict(_EVA_COMMON, qkv_fused=False, scale_attn_inner=True), kwargs)

    def iimm_test_eva02_fused(pretrained: bool = False, **kwargs):
        """EVA-02 with fused qkv weight and separate q/v biases (timm's eva02_tiny layout), tiny."""
        return build(dict(_EVA_COMMON, qkv_fused=True), kwargs)

    for fn in (iimm_test_eva02_unfused, iimm_test_eva02_fused):
        fn.__module__ = __name__
        register_model(fn)


_register_tiny_eva()


def eva_config(fused: bool) -> dict:
    """An open_clip config (CustomTextCLIP) with a tiny timm EVA-02 image tower."""
    name = "iimm_test_eva02_fused" if fused else "iimm_test_eva02_unfused"
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "timm_model_name": name, "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": copy.deepcopy(_TEXT),
        "custom_text": True,
    }


def one_patch_clip_config() -> dict:
    """The tiny CLIP ViT with a single 32-pixel patch.

    With 8-pixel patches a random 2-block ViT maps every digit to nearly the same vector
    (mean cosine 0.99) and needs many epochs to leave that plateau; one patch makes the
    patch embedding a linear map of the whole image, so a full fine-tune learns the digits
    in two epochs — a CPU-sized check that training really trains.
    """
    cfg = tiny_model_config("clip")
    cfg["vision_cfg"]["patch_size"] = 32
    return cfg


def write_manifest(path, root, splits: dict[str, str] | None = None, domain: str | None = None) -> Path:
    """A CSV manifest (path,label[,split][,domain]) of a class-per-folder tree.

    splits: maps an image's file stem ("0", "1", …) to its split; unlisted images get "train".
    """
    root, path = Path(root), Path(path)
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(class_dir.glob("*.png"), key=lambda p: int(p.stem)):
            row = {"path": str(image), "label": class_dir.name}
            if splits is not None:
                row["split"] = splits.get(image.stem, "train")
            if domain is not None:
                row["domain"] = domain
            rows.append(row)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
