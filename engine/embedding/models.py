"""Vision-language dual encoders through open_clip: names, weights, preprocessing, tokenizer, encoders.

A model is named by one of the paper's aliases (`clip`, `siglip`, `coca`, `eva02`), an
open_clip architecture (with `pretrained` a tag or a weights file), `hf-hub:ORG/REPO`
or `local-dir:PATH` (a folder with `open_clip_config.json` and the weights).

`resolve_model` works out everything that identifies a model — architecture config,
preprocessing, the weights file and a fingerprint of the weights — without building it,
so the embedding store can answer a cache hit without loading any weights.
`load_model` builds it. Weights are read from safetensors, or from `.pt`/`.bin` only
through `torch.load(weights_only=True)`; a checkpoint that needs arbitrary unpickling
is refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, MutableMapping

import torch
import torch.nn.functional as F

from ...kernels import resolve_device
from ...errors import InputError, IimmError
from ..hashing import file_sha256, hash_json
from .model_catalog import MODEL_ALIASES, is_cached

RANDOM_WEIGHTS = "random"
RANDOM_INIT_SEED = 0
TEXT_BATCH = 256
_HASH_MEMO: dict[str, str] = {}


class ModelUnavailable(IimmError):
    """Weights, config or tokenizer of a model could not be fetched (no network, offline mode)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything that identifies a model, resolved without building it.

    Attributes:
        name: the name as given (`clip`, `ViT-B-32`, `hf-hub:org/repo`, `local-dir:/path`).
        architecture: the open_clip name used to build it (built-in name, or the
            `hf-hub:` / `local-dir:` name itself).
        pretrained: the tag or weights file; "random" for random (seeded) weights.
        checkpoint: local path of the weights file, or None.
        model_cfg: the open_clip architecture config.
        preprocess_cfg: the eval preprocessing (size, mean, std, interpolation, resize_mode, fill_color).
        fingerprint: sha256 over the architecture config and the weights' content, computed (the
            weights read in full, unless `hash_memo` knows them) on first use only.
    """

    name: str
    architecture: str
    pretrained: str | None
    checkpoint: str | None
    model_cfg: dict
    preprocess_cfg: dict
    hash_memo: MutableMapping[str, str] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        import open_clip

        random_init = f"random-init:seed={RANDOM_INIT_SEED}:torch={torch.__version__}:open_clip={open_clip.__version__}"
        weights_id = file_fingerprint(self.checkpoint, self.hash_memo) if self.checkpoint else random_init
        return "sha256:" + hash_json({"model_cfg": self.model_cfg, "weights": weights_id})


@dataclass
class LoadedModel:
    """A built model with its preprocessing and tokenizer.

    `logit_scale` is the (exponentiated) temperature multiplying cosine similarities;
    `logit_bias` is SigLIP's learned bias, None for models without one.
    """

    model: torch.nn.Module
    preprocess: Callable
    preprocess_train: Callable
    tokenizer: Callable
    name: str
    architecture: str
    pretrained: str | None
    device: torch.device
    logit_scale: float
    logit_bias: float | None
    precision: str = "fp32"
    spec: ModelSpec | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str | None:
        return self.spec.fingerprint if self.spec else None


def resolve_model(name: str, pretrained: str | None = None, *,
                  hash_memo: MutableMapping[str, str] | None = None) -> ModelSpec:
    """Identify a model without building it (downloading its weights when needed).

    For an alias, `pretrained` overrides the alias's tag (a tag or a weights file).
    For a built-in architecture, `pretrained=None` (or "random") means seeded random weights.
    """
    from open_clip.factory import parse_model_name

    if not name:
        raise InputError("no model given; pass --model (an alias such as clip, an open_clip architecture, "
                         "hf-hub:ORG/REPO or local-dir:PATH)")
    if pretrained == RANDOM_WEIGHTS:
        pretrained = None
        random_requested = True
    else:
        random_requested = False
    if name in MODEL_ALIASES:
        architecture, tag = MODEL_ALIASES[name]
        if pretrained is None and not random_requested:
            pretrained = tag
    else:
        architecture = name
    try:
        schema, identifier = parse_model_name(architecture)
    except ValueError as exc:
        raise InputError(f"model name {name!r}: {exc}; give a path after local-dir: or ORG/REPO after hf-hub:") from exc

    if schema == "local-dir":
        # absolute: the weights file is recorded in the store and in reports, read from any folder later
        model_cfg, preprocess_overlay, checkpoint = _resolve_local_dir(name, Path(identifier).expanduser().absolute())
        pretrained = checkpoint
    elif schema == "hf-hub":
        model_cfg, preprocess_overlay, checkpoint = _resolve_hf_hub(name, identifier)
        pretrained = identifier
    else:
        model_cfg = builtin_model_config(architecture, name)
        architecture = architecture.replace("/", "-")
        checkpoint = _resolve_builtin_weights(name, architecture, pretrained)
        preprocess_overlay = trained_as = _trained_as(name, architecture, pretrained, checkpoint)
        if trained_as.get("quick_gelu"):  # e.g. the openai tags: open_clip's plain config says GELU
            model_cfg = {**model_cfg, "quick_gelu": True}
        if pretrained is None:  # records say "random", never null
            pretrained = RANDOM_WEIGHTS
    preprocess_cfg = _final_preprocess_cfg(model_cfg, preprocess_overlay)
    return ModelSpec(name, architecture, pretrained, checkpoint, model_cfg, preprocess_cfg, hash_memo)


def load_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32", *, spec: ModelSpec | None = None) -> LoadedModel:
    """Build a model in eval mode with its preprocessing and tokenizer.

    precision: "fp32", "fp16", "bf16" (weights cast) — open_clip's precision names.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    spec = spec or resolve_model(name, pretrained)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.default_generator.manual_seed(RANDOM_INIT_SEED)  # built on the CPU; CUDA generators untouched
        try:
            model = open_clip.create_model(spec.architecture, pretrained=None, load_weights=False,
                                           precision="fp32", device="cpu", pretrained_image=False,
                                           pretrained_text=False, force_preprocess_cfg=spec.preprocess_cfg,
                                           force_quick_gelu=bool(spec.model_cfg.get("quick_gelu")))
        except (RuntimeError, OSError, ValueError, AssertionError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(f"cannot build model {spec.name!r}: {reason}; check its open_clip config "
                             f"(and that timm / transformers are installed for timm- or HF-based towers)") from exc
    if spec.checkpoint:
        _load_weights(model, spec.checkpoint, spec.name)
    try:
        model = _to_device_precision(model, dev, precision)
    except ValueError as exc:
        raise InputError(f"{exc}; pass --precision fp32, fp16 or bf16") from exc
    model.eval()
    pp = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    tokenizer = _tokenizer(spec)
    logit_bias = getattr(model, "logit_bias", None)
    return LoadedModel(
        model=model, preprocess=image_transform_v2(pp, is_train=False),
        preprocess_train=image_transform_v2(pp, is_train=True), tokenizer=tokenizer, name=spec.name,
        architecture=spec.architecture, pretrained=spec.pretrained, device=dev,
        logit_scale=float(model.logit_scale.detach().float().exp().item()),
        logit_bias=float(logit_bias.detach().float().item()) if logit_bias is not None else None,
        precision=precision, spec=spec)


class ModelPool:
    """Built models kept for reuse, one per (weights file, configs, device): a model that encodes many
    datasets (screening a catalog) is loaded once. Dropping the pool releases its models."""

    def __init__(self):
        self._loaded: dict[tuple[str, str, str, str], LoadedModel] = {}

    def get(self, spec: ModelSpec, device: str | torch.device = "auto") -> LoadedModel:
        dev = resolve_device(device)
        key = (spec.architecture, str(spec.checkpoint), hash_json([spec.model_cfg, spec.preprocess_cfg]), str(dev))
        if key not in self._loaded:
            self._loaded[key] = load_model(spec.name, device=dev, spec=spec)
        return self._loaded[key]


def encode_images(lm: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """images: (B, 3, H, W) preprocessed -> (B, D) float32 raw (not normalised) image embeddings.

    Runs without gradients; on CUDA with fp32 weights it runs under autocast (bf16 where supported).
    """
    with torch.no_grad(), _autocast(lm):
        x = images.to(lm.device, dtype=PRECISION_DTYPES[lm.precision], non_blocking=True)
        return lm.model.encode_image(x, normalize=False).float()


def encode_texts(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    """texts: n strings -> (n, D) float32 raw (not normalised) text embeddings, without gradients."""
    out = []
    with torch.no_grad(), _autocast(lm):
        for lo in range(0, len(texts), TEXT_BATCH):
            tokens = lm.tokenizer(list(texts[lo:lo + TEXT_BATCH])).to(lm.device)
            out.append(lm.model.encode_text(tokens, normalize=False).float())
    if not out:
        raise InputError("no texts to encode; give at least one class name and one template")
    return torch.cat(out)


def class_text_embeddings(lm: LoadedModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """One text embedding per class: (C, D) float32, unit norm, on the model's device.

    Each prompt `template.replace("{}", name)` is encoded and L2-normalised; a class's
    prompts are averaged and the mean is renormalised (the CLIP prompt ensemble).
    """
    from .prompts import fill_template

    if not classnames:
        raise InputError("no class names; a dataset needs at least one class")
    if not templates:
        raise InputError("no prompt templates; pass --template 'a photo of a {}.' or a --templates file")
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    emb = F.normalize(encode_texts(lm, prompts).double(), dim=-1)
    if not torch.isfinite(emb).all():
        raise InputError(f"model {lm.name} produced NaN/Inf text embeddings; try --precision fp32")
    mean = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    norms = mean.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        bad = classnames[int(torch.nonzero(norms.squeeze(-1) == 0)[0])]
        raise InputError(f"the prompts of class {bad!r} average to a zero vector; use other templates")
    return (mean / norms).float()


def file_fingerprint(path: str | os.PathLike, memo: MutableMapping[str, str] | None = None) -> str:
    """sha256 of a file's content, memoised by (real path, size, mtime) in `memo` and in-process."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
    digest = _HASH_MEMO.get(key)
    stored = memo.get(key) if memo is not None else None
    if digest is None:
        digest = stored
    if digest is None:
        digest = "sha256:" + file_sha256(p)
    _HASH_MEMO[key] = digest
    if memo is not None and stored != digest:
        memo[key] = digest
    return digest


def _resolve_local_dir(name: str, folder: Path) -> tuple[dict, dict, str | None]:
    from open_clip.factory import _find_checkpoint_in_dir

    config_path = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}; local-dir: needs a folder holding "
                         f"open_clip_config.json and the weights")
    if not config_path.is_file():
        raise InputError(f"{folder} has no open_clip_config.json; a local-dir: model folder needs it beside the "
                         f"weights (open_clip_model.safetensors)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {config_path}: {exc}; fix or replace the JSON file") from exc
    if "model_cfg" not in config:
        raise InputError(f"{config_path} has no 'model_cfg' entry; write it as open_clip does "
                         f"({{\"model_cfg\": ..., \"preprocess_cfg\": ...}})")
    checkpoint = _find_checkpoint_in_dir(folder)
    return config["model_cfg"], config.get("preprocess_cfg", {}), checkpoint


def _resolve_hf_hub(name: str, repo: str) -> tuple[dict, dict, str]:
    from huggingface_hub import hf_hub_download
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        hf_hub_download(repo, "open_clip_config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: it must come from the network
        _check_network(name, f"hf-hub:{repo}")
    try:
        config_path = download_pretrained_from_hf(repo, filename="open_clip_config.json")
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        checkpoint = download_pretrained_from_hf(repo)
    except Exception as exc:  # huggingface_hub raises many types (offline, HTTP, missing file)
        raise _unavailable(name, f"hf-hub:{repo}", exc) from exc
    if "model_cfg" not in config:
        raise InputError(f"hf-hub:{repo} has an open_clip_config.json without 'model_cfg'; it is not an "
                         f"open_clip model repository")
    return config["model_cfg"], config.get("preprocess_cfg", {}), checkpoint


def builtin_model_config(architecture: str, name: str | None = None) -> dict:
    """open_clip's config of a built-in architecture (`/` or `-` spelt); an unknown name is an InputError."""
    import open_clip

    model_cfg = open_clip.get_model_config(architecture.replace("/", "-"))
    if model_cfg is None:
        raise InputError(f"unknown model {name or architecture!r}; use an alias ({', '.join(MODEL_ALIASES)}), an "
                         f"open_clip architecture (list them with `iimm models`), hf-hub:ORG/REPO or local-dir:PATH")
    return model_cfg


def _resolve_builtin_weights(name: str, architecture: str, pretrained: str | None) -> str | None:
    """The local weights file of a tag (downloaded when needed) or of a file path; None for random weights."""
    import open_clip

    if pretrained is None:
        return None

    tag_cfg = open_clip.get_pretrained_cfg(architecture, pretrained)
    if tag_cfg:
        source = tag_cfg.get("hf_hub") or tag_cfg.get("url") or ""
        what = f"{architecture} pretrained '{pretrained}' ({source.rstrip('/')})"
        if not is_cached(architecture, pretrained):
            _check_network(name, what)
        try:
            with _quiet_open_clip():  # huggingface_hub logs every retry as a warning
                checkpoint = open_clip.download_pretrained(tag_cfg)
        except Exception as exc:  # network / offline / missing-file errors of urllib and huggingface_hub
            raise _unavailable(name, what, exc) from exc
        return checkpoint
    if os.path.isfile(pretrained):
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if looks_like_path(pretrained):
        raise InputError(f"--pretrained file not found: {pretrained}; pass an existing .safetensors/.pt file, a tag "
                         f"of {architecture} ({', '.join(tags) or 'it has none'}) or 'random'")
    raise InputError(f"--pretrained {pretrained!r} is neither a weights file nor a tag of {architecture}; "
                     f"tags: {', '.join(tags) or 'none'} (or 'random' for random weights)")


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def looks_like_path(text: str) -> bool:
    """True for a --pretrained value meant as a file (a folder separator or a weights suffix), not a tag."""
    return os.sep in text or "/" in text or text.lower().endswith(WEIGHT_SUFFIXES)


def _trained_as(name: str, architecture: str, pretrained: str | None, checkpoint: str | None) -> dict:
    """The pretrained config the weights were trained with: the tag's, or the alias's for a weights file."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(architecture, pretrained) if pretrained else {}
    if not cfg and checkpoint and name in MODEL_ALIASES:
        cfg = open_clip.get_pretrained_cfg(*MODEL_ALIASES[name])
    return cfg or {}


def _final_preprocess_cfg(model_cfg: dict, overlay: dict) -> dict:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict
    from open_clip.utils import to_2tuple

    cfg = merge_preprocess_dict(PreprocessCfg(), overlay or {})
    cfg["size"] = to_2tuple(model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"]))
    return json.loads(json.dumps(cfg))  # tuples -> lists, as a stable JSON-like value


def _load_weights(model: torch.nn.Module, checkpoint: str, name: str) -> None:
    """open_clip's checkpoint loading, minus its fallback to unrestricted torch.load on TypeError."""
    from open_clip.convert import convert_state_dict, load_big_vision_weights
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    if Path(checkpoint).suffix in (".npz", ".npy"):  # big_vision (SigLIP) numpy weights; np.load without pickle
        load_big_vision_weights(model, checkpoint)
        return
    sd = convert_state_dict(model, read_state_dict(checkpoint))
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        if key in sd and getattr(model, key, None) is not None and getattr(model, key).ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(getattr(model, key).shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    sd.pop("text.transformer.embeddings.position_ids", None)  # dropped by transformers>=4.31 text towers
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"weights {checkpoint} do not fit model {name}: {first}; pass the weights of the same "
                         f"architecture") from exc


def read_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: safetensors, or torch.load(weights_only=True) — never arbitrary unpickling."""
    path = str(checkpoint)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            ckpt = load_file(path, device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"refusing to load {path}: it needs arbitrary unpickling (Python objects, not only "
                         f"tensors), which can run code; save the state dict as .safetensors or as plain tensors "
                         f"with torch.save(model.state_dict())") from exc
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError, KeyError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"cannot read weights {path} safely ({type(exc).__name__}: {first}); check the file is a "
                         f"complete .safetensors or tensor-only .pt/.bin checkpoint") from exc
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise InputError(f"{path} holds no state dict of tensors; pass a checkpoint saved from model.state_dict()")
    if next(iter(ckpt)).startswith("module."):
        ckpt = {k[7:]: v for k, v in ckpt.items()}
    return ckpt


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _to_device_precision(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {precision!r}")
    return model.to(device=device, dtype=PRECISION_DTYPES[precision])


def _tokenizer(spec: ModelSpec) -> Callable:
    import open_clip

    try:
        return open_clip.get_tokenizer(spec.architecture)
    except Exception as exc:  # HF tokenizer downloads fail with many exception types
        raise _unavailable(spec.name, "its tokenizer", exc) from exc


@contextlib.contextmanager
def _quiet_open_clip():
    """Silence open_clip's "no pretrained weights loaded" warning: iimm loads the weights itself."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def encode_dtype(device: torch.device, precision: str = "fp32") -> str:
    """What encoding computes in: fp32 weights on CUDA run under bf16 autocast (fp16 without native bf16)."""
    if device.type == "cuda" and precision == "fp32":
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    return str(PRECISION_DTYPES[precision]).removeprefix("torch.")


def _autocast(lm: LoadedModel):
    if lm.device.type == "cuda" and lm.precision == "fp32":
        return torch.autocast("cuda", dtype=getattr(torch, encode_dtype(lm.device)))
    return torch.autocast("cpu", enabled=False)


def _check_network(name: str, what: str) -> None:
    """Fail at once, instead of after minutes of retries, when the Hub's host does not even resolve."""
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise _unavailable(name, what, OSError(f"no network: {host} cannot be resolved")) from exc


def _unavailable(name: str, what: str, exc: BaseException) -> ModelUnavailable:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
    else:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = first if len(first) <= 120 else first[:117].rsplit(" ", 1)[0] + " …"
    return ModelUnavailable(
        f"model {name!r}: {what} could not be downloaded ({reason}); supply it offline with --pretrained FILE "
        f"(a .safetensors file), --model local-dir:PATH (open_clip_config.json + weights), or by placing it in "
        f"the Hugging Face cache (HF_HOME) from a machine with network access; to try iimm without weights, "
        f"--pretrained {RANDOM_WEIGHTS} builds it with random weights (scores then mean nothing)")
