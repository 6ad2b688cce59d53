"""The six fine-tuning methods: which parameters of an open_clip dual encoder train.

`tune_model(model, method, ...)` freezes the open_clip model, attaches what the method
adds (LoRA deltas, adapters, a probe head) and returns a `TunedModel`, the module the
trainer optimises. Towers are found by structure, not by family name:

- image tower: `model.visual` (open_clip ViT, or a timm trunk for SigLIP and EVA-02);
- text tower: `model.text` (CustomTextCLIP, CoCa) or the top-level text modules of `CLIP`;
- CoCa's text decoder is not a contrastive tower: no method trains it.

Transformer blocks are the first `resblocks` / `blocks` / `layer(s)` container of a tower
whose members hold attention input projections, recognised in every form the aliases
use: a fused `in_proj_weight` (`nn.MultiheadAttention`, open_clip `Attention`), a fused
`qkv` Linear (timm ViT, EVA-02 with fused q/k/v), separate `q_proj`/`k_proj`/`v_proj`
Linears (EVA-02-CLIP), or Hugging Face `query`/`key`/`value`.

The logit scale (and SigLIP's logit bias) keep their pretrained values under every
method: they change no prediction, and cross-entropy would sharpen the temperature
without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint

from ...errors import InputError
from ..embedding.models import TEXT_BATCH
from .config import METHODS, MethodOptions  # noqa: F401 - re-exported
from .lora import add_lora, fused_qv_blocks

TOWER_METHODS = ("full", "bitfit", "attention", "lora")  # methods that change the towers' own computation
BLOCK_CONTAINERS = ("resblocks", "blocks", "layer", "layers")
FROZEN_NAMES = ("logit_scale", "logit_bias")
NON_CONTRASTIVE_PREFIXES = ("text_decoder.",)
ADAPTER_RESIDUAL_RATIO = 0.2
TEXT_CHUNK = TEXT_BATCH  # prompts per text-tower pass, as `encode_texts` encodes class texts for scoring


@dataclass(frozen=True)
class Projection:
    """One attention input-projection weight: `getattr(owner, weight_name)`.

    role: "qkv" for a fused `[q; k; v]` weight, else "q", "k" or "v".
    """

    owner: nn.Module
    weight_name: str
    role: str
    qualname: str


@dataclass
class Tower:
    """A contrastive tower: its name ("image"/"text"), qualified root name and transformer blocks."""

    name: str
    root: str
    blocks: list[tuple[str, nn.Module]]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown fine-tuning method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_train_blocks(options: MethodOptions, model_cfg: dict) -> None:
    """Refuse --train-blocks deeper than both towers, from the open_clip config, before any work (timm or HF
    towers give no depth there; `tune_model` checks those once the model is built)."""
    depths = [cfg.get("layers") for cfg in (model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {}))]
    if options.train_blocks is None or not all(isinstance(d, int) for d in depths):
        return
    deepest = max(depths)
    if options.train_blocks > deepest:
        raise InputError(f"--train-blocks {options.train_blocks}, but the model's towers have "
                         f"{' and '.join(map(str, depths))} blocks; pass at most {deepest}")


def find_towers(model: nn.Module) -> list[Tower]:
    """The image and text towers of an open_clip model with their transformer blocks."""
    if not isinstance(getattr(model, "visual", None), nn.Module):
        raise InputError(f"{type(model).__name__} has no image tower (`visual`); fine-tuning needs an open_clip "
                         f"dual encoder")
    roots = [("image", "visual")]
    if isinstance(getattr(model, "text", None), nn.Module):
        roots.append(("text", "text"))
    elif isinstance(getattr(model, "transformer", None), nn.Module):
        roots.append(("text", "transformer"))
    else:
        raise InputError(f"{type(model).__name__} has no text tower (`text` or `transformer`); fine-tuning needs "
                         f"an open_clip dual encoder")
    return [Tower(name, root, _find_blocks(model.get_submodule(root), root)) for name, root in roots]


def _find_blocks(root_module: nn.Module, root: str) -> list[tuple[str, nn.Module]]:
    for name, module in root_module.named_modules():
        if name.rsplit(".", 1)[-1] not in BLOCK_CONTAINERS or not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if children and all(attention_projections(child, "") for _, child in children):
            return [(f"{root}.{name}.{k}", child) for k, child in children]
    return []


def attention_projections(block: nn.Module, prefix: str) -> list[Projection]:
    """The attention input projections inside one transformer block (MLP excluded)."""
    found: list[Projection] = []
    for name, mod in block.named_modules():
        if name.split(".")[0] == "mlp":
            continue
        qual = ".".join(p for p in (prefix, name) if p)

        def add(owner, weight_name, role, owner_qual=qual):
            found.append(Projection(owner, weight_name, role, f"{owner_qual}.{weight_name}".lstrip(".")))

        if isinstance(mod, nn.MultiheadAttention):
            if mod._qkv_same_embed_dim:
                add(mod, "in_proj_weight", "qkv")
            else:
                for role in "qkv":
                    add(mod, f"{role}_proj_weight", role)
        elif _is_param(getattr(mod, "in_proj_weight", None)) or parametrize.is_parametrized(mod, "in_proj_weight"):
            add(mod, "in_proj_weight", "qkv")
        elif isinstance(getattr(mod, "qkv", None), nn.Linear):
            add(mod.qkv, "weight", "qkv", f"{qual}.qkv".lstrip("."))
        elif all(isinstance(getattr(mod, f"{r}_proj", None), nn.Linear) for r in "qkv"):
            for role in "qkv":
                add(getattr(mod, f"{role}_proj"), "weight", role, f"{qual}.{role}_proj".lstrip("."))
        elif all(isinstance(getattr(mod, n, None), nn.Linear) for n in ("query", "key", "value")):
            for role, n in zip("qkv", ("query", "key", "value")):
                add(getattr(mod, n), "weight", role, f"{qual}.{n}".lstrip("."))
    return found


def mlp_linears(block: nn.Module, prefix: str) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside a block's `mlp` submodule, with its qualified name."""
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, nn.Module):
        return []
    return [(f"{prefix}.mlp.{n}", m) for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]


def _is_param(x) -> bool:
    return isinstance(x, nn.Parameter)


class TunedModel(nn.Module):
    """An open_clip model with a fine-tuning method attached.

    `encode_image(images: (B, 3, H, W)) -> (B, D)` and `encode_text(tokens: (n, L)) -> (n, D)`
    return unit vectors; `logits(image_features, class_embeddings) -> (B, C)` is
    `scale · cos (+ bias)`, or the probe head on the training task. Only parameters with
    `requires_grad` train; `named_trainable()` names them as checkpoints store them.
    With method None nothing is attached: the zero-shot classifier of the model.
    """

    def __init__(self, model: nn.Module, method: str | None, options: MethodOptions, embed_dim: int, logit_scale: float,
                 logit_bias: float | None, probe_init: torch.Tensor | None = None, num_classes: int | None = None):
        super().__init__()
        self.model = model
        self.method = method if method is None else check_method(method)
        self.options = options
        self.embed_dim = int(embed_dim)
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)
        self.image_adapter = self.text_adapter = self.probe = None
        if method == "adapter":
            self.image_adapter = clip_adapter(self.embed_dim, options.reduction)
            if options.adapter_towers == "both":
                self.text_adapter = clip_adapter(self.embed_dim, options.reduction)
        if method == "probe":
            self.probe = probe_head(self.embed_dim, num_classes, probe_init, self.logit_scale, self.logit_bias)
        device = next(model.parameters()).device
        self.to(device)

    @property
    def towers_train(self) -> bool:
        """Whether the towers' own computation trains (full, bitfit, attention, lora)."""
        return self.method in TOWER_METHODS

    def train(self, mode: bool = True) -> "TunedModel":
        super().train(mode)
        if not self.towers_train:
            self.model.eval()
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) preprocessed -> (B, D) unit image embeddings (adapter applied)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.towers_train):
            f = self.model.encode_image(images, normalize=False)
        if self.image_adapter is not None:
            f = mix_adapter(self.image_adapter, f)
        return F.normalize(f.float(), dim=-1)

    def text_tower(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (n, L) -> (n, D) raw text-tower outputs (with gradients only when the towers train).

        Encoded in chunks of TEXT_CHUNK prompts. With gradients, each chunk is recomputed in the
        backward pass (activation checkpointing): memory holds one chunk's activations and the
        (n, D) outputs, so C·T = 1 000 × 80 prompts train where the whole tower's activations would not fit.
        """
        grad = torch.is_grad_enabled() and self.towers_train
        with torch.set_grad_enabled(grad):
            if len(tokens) <= TEXT_CHUNK:
                return self.model.encode_text(tokens, normalize=False)
            chunks = tokens.split(TEXT_CHUNK)
            if not grad:
                return torch.cat([self.model.encode_text(c, normalize=False) for c in chunks])
            return torch.cat([checkpoint(self._raw_text, c, use_reentrant=False) for c in chunks])

    def _raw_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=False)

    def finish_text(self, raw: torch.Tensor) -> torch.Tensor:
        """(n, D) raw text-tower outputs -> (n, D) unit text embeddings (adapter applied)."""
        f = mix_adapter(self.text_adapter, raw) if self.text_adapter is not None else raw
        return F.normalize(f.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (n, L) -> (n, D) unit text embeddings (adapter applied)."""
        return self.finish_text(self.text_tower(tokens))

    def class_embeddings(self, tokens: torch.Tensor | None, num_classes: int,
                         raw: torch.Tensor | None = None) -> torch.Tensor:
        """(C·T, L) class-major prompt tokens, or their raw tower outputs `raw: (C·T, D)`, -> (C, D) unit
        prompt-ensemble class embeddings (each prompt normalised, averaged per class, renormalised)."""
        emb = self.finish_text(raw if raw is not None else self.text_tower(tokens))
        mean = emb.reshape(num_classes, -1, emb.shape[-1]).mean(dim=1)
        return F.normalize(mean, dim=-1)

    def logits(self, image_features: torch.Tensor, class_embeddings: torch.Tensor | None,
               use_probe: bool = True) -> torch.Tensor:
        """(B, D) unit image embeddings -> (B, C) float32 logits; the probe head when there is one and use_probe.

        Always float32, autocast or not: bf16 logits of 100·cos step by 0.25, enough to tie or swap the top
        two classes and so move accuracies and the chosen epoch."""
        with torch.autocast(image_features.device.type, enabled=False):
            x = image_features.float()
            if self.probe is not None and use_probe:
                return self.probe(x)
            logits = self.logit_scale * x @ class_embeddings.float().T
            return logits + self.logit_bias if self.logit_bias is not None else logits

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by checkpoint name (names inside the open_clip model lose the `model.` prefix)."""
        return {_strip_model(n): p for n, p in self.named_parameters() if p.requires_grad}

    def num_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts; total counts the frozen base once and every added parameter."""
        trainable = sum(p.numel() for p in self.named_trainable().values())
        total = sum(p.numel() for p in self.parameters())
        return trainable, total


def clip_adapter(dim: int, reduction: int) -> nn.Sequential:
    """CLIP-Adapter's bottleneck: Linear(D, D // r) → ReLU → Linear(D // r, D) → ReLU, without biases."""
    hidden = max(1, dim // reduction)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU())


def mix_adapter(adapter: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The residual mix `0.2 · adapter(f) + 0.8 · f` of raw features f: (B, D) (normalised afterwards)."""
    f = features.float()
    return ADAPTER_RESIDUAL_RATIO * adapter(f) + (1 - ADAPTER_RESIDUAL_RATIO) * f


def probe_head(dim: int, num_classes: int | None, init: torch.Tensor | None, logit_scale: float,
               logit_bias: float | None) -> nn.Linear:
    """A linear classifier on unit image features.

    Initialised from the zero-shot classifier when `init: (C, D)` unit class embeddings are
    given: weight = logit_scale · init, bias = the logit bias (0 without one), so the probe
    starts exactly at zero-shot accuracy. The untrained head is not a candidate epoch: as for
    every method, the best of the trained epochs is kept, even one below zero-shot.
    """
    if init is not None:
        num_classes = init.shape[0]
    if not num_classes or num_classes < 1:
        raise InputError("a linear probe needs the number of classes (or the class embeddings)")
    head = nn.Linear(dim, num_classes)
    if init is not None:
        with torch.no_grad():
            head.weight.copy_(init.float() * logit_scale)
            head.bias.fill_(logit_bias if logit_bias is not None else 0.0)
    return head


def tune_model(model: nn.Module, method: str, options: MethodOptions | None = None, *, embed_dim: int | None = None,
               logit_scale: float | None = None, logit_bias: float | None = None,
               class_embeddings: torch.Tensor | None = None, num_classes: int | None = None) -> TunedModel:
    """Freeze `model`, attach `method` to it (LoRA deltas are registered on the model itself) and wrap it.

    class_embeddings: (C, D) unit zero-shot class embeddings (the probe's initialisation).
    logit_scale / logit_bias default to the model's own (exponentiated scale).
    """
    options = options or MethodOptions()
    options.check()
    check_method(method)
    for p in model.parameters():
        p.requires_grad_(False)
    towers = find_towers(model) if method in ("bitfit", "attention", "lora") else []
    for tower in towers:
        if not tower.blocks:
            raise InputError(f"cannot find the transformer blocks of the {tower.name} tower ({tower.root}) of "
                             f"{type(model).__name__}; --method {method} needs them (full, adapter and probe do not)")
    if method == "full":
        for name, p in model.named_parameters():
            if name not in FROZEN_NAMES and not name.startswith(NON_CONTRASTIVE_PREFIXES):
                p.requires_grad_(True)
    elif method == "bitfit" and options.bitfit_scope == "all":
        for name, p in model.named_parameters():
            if _is_bias(name) and name not in FROZEN_NAMES and not name.startswith(NON_CONTRASTIVE_PREFIXES):
                p.requires_grad_(True)
    elif method == "bitfit":
        for tower in towers:
            for _, block in tower.blocks:
                for name, p in block.named_parameters():
                    if _is_bias(name):
                        p.requires_grad_(True)
    elif method == "attention":
        deepest = max(len(t.blocks) for t in towers)
        if options.train_blocks is not None and options.train_blocks > deepest:
            raise InputError(f"--train-blocks {options.train_blocks}, but the model's towers have "
                             f"{' and '.join(str(len(t.blocks)) for t in towers)} blocks; pass at most {deepest}")
        for tower in towers:  # a shallower tower trains all of its blocks
            k = len(tower.blocks) if options.train_blocks is None else min(options.train_blocks, len(tower.blocks))
            for qual, block in tower.blocks[:k]:
                for proj in attention_projections(block, qual):
                    getattr(proj.owner, proj.weight_name).requires_grad_(True)
    elif method == "lora":
        for tower in towers:
            for qual, block in tower.blocks:
                _attach_block_lora(block, qual, options)
    if logit_scale is None:
        logit_scale = float(model.logit_scale.detach().float().exp())
    if logit_bias is None and getattr(model, "logit_bias", None) is not None:
        logit_bias = float(model.logit_bias.detach().float())
    if embed_dim is None:
        embed_dim = class_embeddings.shape[1] if class_embeddings is not None else infer_embed_dim(model)
    return TunedModel(model, method, options, embed_dim, logit_scale, logit_bias, class_embeddings, num_classes)


def _attach_block_lora(block: nn.Module, qual: str, options: MethodOptions) -> None:
    for proj in attention_projections(block, qual):
        if proj.role == "qkv":
            rows = getattr(proj.owner, proj.weight_name).shape[0]
            add_lora(proj.owner, proj.weight_name, fused_qv_blocks(rows), options.rank, options.alpha,
                     options.lora_style)
        elif proj.role in ("q", "v"):
            add_lora(proj.owner, proj.weight_name, None, options.rank, options.alpha, options.lora_style)
    if options.lora_mlp:
        linears = mlp_linears(block, qual)
        if not linears:
            raise InputError(f"block {qual} has no `mlp` with Linear layers; drop --lora-mlp for this model")
        for _, linear in linears:
            add_lora(linear, "weight", None, options.rank, options.alpha, options.lora_style)


def trainable_parameters(model: nn.Module, method: str, **options) -> dict[str, nn.Parameter]:
    """Attach `method` to `model` (see `tune_model`) and return its trainable parameters by name.

    options: MethodOptions fields (rank, alpha, lora_mlp, reduction, train_blocks) and
    tune_model's keywords (embed_dim, class_embeddings, num_classes, logit_scale, logit_bias).
    """
    fields = set(MethodOptions.__dataclass_fields__)
    method_options = MethodOptions(**{k: v for k, v in options.items() if k in fields})
    rest = {k: v for k, v in options.items() if k not in fields}
    return tune_model(model, method, method_options, **rest).named_trainable()


def infer_embed_dim(model: nn.Module) -> int:
    """The joint embedding width, from encoding one all-zero token row."""
    text = getattr(model, "text", None)
    length = getattr(text, "context_length", None) or getattr(model, "context_length", None) or 77
    device = next(model.parameters()).device
    with torch.no_grad():
        return int(model.encode_text(torch.zeros((1, length), dtype=torch.long, device=device),
                                     normalize=False).shape[-1])


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The open_clip model's own tensors under their original names, whatever LoRA parametrizations it carries.

    A parametrized weight is reported by its stored original (never the adapted value), so
    comparing this before and after training shows whether the frozen weights changed.
    """
    out = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if ".parametrizations." in name:
            head, rest = name.split(".parametrizations.", 1)
            weight, tail = rest.split(".", 1)
            if tail != "original":
                continue
            name = f"{head}.{weight}" if head else weight
        out[name] = tensor
    return out


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


def _strip_model(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name
