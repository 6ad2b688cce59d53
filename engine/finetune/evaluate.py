"""Accuracy of a (fine-tuned or zero-shot) model on an image dataset, and the outcome arithmetic.

Accuracies are fractions in [0, 1] over the readable images; unreadable ones are
counted and left out. `outcome` and `summarize_seeds` turn accuracies into the record's
gain, normalised gain and forgetting.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..embedding.data import ImageDataset, collate_skipping
from ..embedding.prompts import fill_template
from ...errors import InputError
from ..embedding.models import encode_dtype

Progress = Callable[..., None]


@dataclass
class Accuracy:
    """Top-1 hits over the readable images of a dataset; loss_sum: their summed cross-entropy."""

    correct: int
    total: int
    skipped: list[str] = field(default_factory=list)
    loss_sum: float = 0.0

    @property
    def loss(self) -> float:
        """Mean cross-entropy of the logits over the readable images."""
        if self.total == 0:
            raise InputError("no readable image to measure a loss on; check the evaluation data")
        return self.loss_sum / self.total

    @property
    def value(self) -> float:
        if self.total == 0:
            raise InputError("no readable image to measure accuracy on; check the evaluation data")
        return self.correct / self.total


def autocast(device: torch.device):
    """bf16 autocast on CUDA where supported, else fp16 (the trainer adds a grad scaler); nothing on a CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, encode_dtype(device)))
    return contextlib.nullcontext()


def prompt_tokens(tokenizer: Callable, classnames: list[str], templates: list[str],
                  device: torch.device) -> torch.Tensor:
    """(C·T, L) tokens of every class's prompts, class-major (class 0's T prompts first)."""
    if not classnames or not templates:
        raise InputError("fine-tuning needs at least one class name and one prompt template")
    return tokenizer([fill_template(t, c) for c in classnames for t in templates]).to(device)


def class_embeddings(tuned, tokens: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) unit prompt-ensemble class embeddings of a TunedModel, without gradients."""
    device = tokens.device
    with torch.no_grad(), autocast(device):
        emb = tuned.class_embeddings(tokens, num_classes).float()
    if not torch.isfinite(emb).all():
        raise InputError("the model produced NaN/Inf class text embeddings; the weights are damaged or the run "
                         "diverged (lower --lr)")
    return emb


def accuracy(tuned, ds: ImageDataset, class_emb: torch.Tensor, transform: Callable, *, use_probe: bool,
             batch_size: int = 128, workers: int = 0, progress: Progress | None = None,
             stage: str = "evaluating") -> Accuracy:
    """Top-1 accuracy of `tuned` on `ds` with classes `class_emb: (C, D)` (ignored by a probe when use_probe).

    transform: the evaluation preprocessing. The model is put in eval mode.
    """
    device = class_emb.device
    was_training = tuned.training
    tuned.eval()
    loader = torch.utils.data.DataLoader(ds.torch_dataset(transform), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=collate_skipping,
                                         pin_memory=device.type == "cuda")
    correct = total = done = 0
    loss_sum = loss_total(device)
    skipped: list[str] = []
    try:
        with torch.no_grad(), autocast(device):
            for images, labels, _, dropped in loader:
                skipped += [ds.items[i].path for i in dropped]
                done += len(dropped)
                if images is not None:
                    feats = tuned.encode_image(images.to(device, non_blocking=True))
                    logits = tuned.logits(feats, class_emb, use_probe=use_probe).float()
                    if not torch.isfinite(logits).all():
                        raise InputError(f"the model produced NaN/Inf outputs on {ds.root}; the run diverged "
                                         f"(lower --lr)")
                    correct += int((logits.argmax(dim=1).cpu() == labels).sum())
                    loss_sum += F.cross_entropy(logits, labels.to(device), reduction="sum").to(loss_sum.dtype)
                    total += len(labels)
                    done += len(labels)
                if progress is not None:
                    progress(stage, done, len(ds))
    finally:
        tuned.train(was_training)
    return Accuracy(correct, total, skipped, float(loss_sum))


def outcome(zeroshot_acc: float, finetuned_acc: float, ood: dict[str, dict[str, float]]) -> dict:
    """gain = finetuned − zeroshot; normalized_gain = gain / (1 − zeroshot) (None when zeroshot is 1);
    forgetting = mean over the other tasks of (after − before) (None without any)."""
    gain = finetuned_acc - zeroshot_acc
    normalized = gain / (1.0 - zeroshot_acc) if zeroshot_acc < 1.0 else None
    forgetting = statistics.fmean(v["after"] - v["before"] for v in ood.values()) if ood else None
    return {"zeroshot_acc": zeroshot_acc, "finetuned_acc": finetuned_acc, "gain": gain,
            "normalized_gain": normalized, "ood": ood, "forgetting": forgetting}


def summarize_seeds(zeroshot_acc: float, ood_before: dict[str, float], after: list[dict]) -> dict:
    """The record's outcome over seeds.

    after: one entry per seed, `{"finetuned_acc": float, "ood": {name: float}}`.
    Means over seeds give finetuned_acc and each task's `after`; gain, normalized_gain and
    forgetting follow from them. With two or more seeds, `std` holds the sample standard
    deviations (n − 1) over seeds of finetuned_acc, gain, normalized_gain, forgetting and each
    task's `after`.
    """
    if not after:
        raise ValueError("no seed finished")
    ft = statistics.fmean(a["finetuned_acc"] for a in after)
    ood = {name: {"before": before, "after": statistics.fmean(a["ood"][name] for a in after)}
           for name, before in ood_before.items()}
    out = outcome(zeroshot_acc, ft, ood)
    if len(after) > 1:
        per_seed = [outcome(zeroshot_acc, a["finetuned_acc"],
                            {n: {"before": b, "after": a["ood"][n]} for n, b in ood_before.items()}) for a in after]
        std = {k: _std([p[k] for p in per_seed]) for k in ("finetuned_acc", "gain", "normalized_gain", "forgetting")}
        std["ood"] = {name: statistics.stdev(a["ood"][name] for a in after) for name in ood_before}
        out["std"] = std
    return out


def _std(values: list) -> float | None:
    return None if any(v is None for v in values) else statistics.stdev(values)


def loss_total(device: torch.device) -> torch.Tensor:
    """A zero scalar to add losses into on `device`: float64, except float32 on MPS (which has no float64)."""
    return torch.zeros((), dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
