"""The options of a fine-tuning run, without torch (the CLI builds its options and their defaults from them).

`TrainConfig`: the training recipe; `MethodOptions`: each method's own options; `DataOptions`:
where the task's images, classes and prompts come from; `EvalOptions`: how the zero-shot
baseline and the accuracies are measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from ...errors import InputError

METHODS = ("full", "bitfit", "attention", "lora", "adapter", "probe")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
LORA_STYLES = ("paper", "peft")  # the IIMM paper's code (fixed scale 0.2, A ~ N(0, 0.02²)) or peft's (α/r, Kaiming)
BITFIT_SCOPES = ("blocks", "all")  # the biases inside the transformer blocks (the paper's code), or every bias
ADAPTER_TOWERS = ("both", "image")  # CLIP-Adapter on both towers (the paper's code), or the image tower only
# Starting points inside the papers' grid (1e-5 … 1e-2); sweep --lr for real calibration runs.
DEFAULT_LR = {
    "sgd": {"full": 1e-4, "attention": 1e-4, "bitfit": 1e-3, "lora": 1e-3, "adapter": 1e-2, "probe": 1e-2},
    "adamw": {"full": 1e-5, "attention": 1e-5, "bitfit": 1e-4, "lora": 1e-4, "adapter": 1e-3, "probe": 1e-3},
}

@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a fine-tuning run (SCIENCE.md's reference defaults).

    lr: None picks DEFAULT_LR[optimizer][method]. warmup: linear warm-up steps.
    val_fraction: in-domain validation share of the training images (0: keep the last epoch).
    shots / fraction: few-shot training set (K images per class, or a share of each class).
    select_on: "val" (in-domain validation) or "ood" (an out-of-domain validation set).
    """

    epochs: int = 10
    lr: float | None = None
    wd: float = 1e-4
    optimizer: str = "sgd"
    batch_size: int = 128
    schedule: str = "cosine"
    warmup: int = 0
    val_fraction: float = 0.1
    shots: int | None = None
    fraction: float | None = None
    select_on: str = "val"

    def resolved(self, method: str) -> "TrainConfig":
        """Checked, with the learning rate filled in for `method`."""
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown --optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown --schedule {self.schedule!r}; choose {' or '.join(SCHEDULES)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if not (self.wd >= 0 and math.isfinite(self.wd)):
            raise InputError(f"--wd must be a non-negative number, got {self.wd}")
        if self.batch_size < 1 or self.warmup < 0:
            raise InputError("--batch-size must be at least 1 and --warmup at least 0")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shots is not None and self.fraction is not None:
            raise InputError("both --shots and --fraction given; a few-shot run takes one of them")
        if self.select_on not in ("val", "ood"):
            raise InputError(f"--select-on must be val or ood, got {self.select_on!r}")
        return self if self.lr is not None else replace(self, lr=DEFAULT_LR[self.optimizer][method])


@dataclass(frozen=True)
class MethodOptions:
    """Options of the methods; each method reads only its own. The defaults are the IIMM paper's readings.

    rank, alpha, lora_mlp: LoRA rank r, scale numerator α (peft style only), and whether every
        Linear of each block's MLP is adapted too.
    lora_style: "paper" (update scaled by a fixed 0.2, A ~ N(0, 0.02²)) or "peft" (scaled by α/r,
        A Kaiming-uniform); the base weight stays frozen in both.
    bitfit_scope: "blocks" (the biases inside the transformer blocks, the paper's code) or "all"
        (every bias of both towers, the original BitFit).
    reduction: CLIP-Adapter bottleneck width = embed_dim // reduction (at least 1).
    adapter_towers: "both" (an adapter on each tower, the paper's code) or "image" (CLIP-Adapter's own default).
    train_blocks: attention (A-CLIP) trains the first K blocks of each tower; None = all.
    """

    rank: int = 8
    alpha: float = 16.0
    lora_mlp: bool = False
    reduction: int = 4
    train_blocks: int | None = None
    lora_style: str = "paper"
    bitfit_scope: str = "blocks"
    adapter_towers: str = "both"

    def relevant(self, method: str) -> dict:
        """The options that define a run of `method` (for records and run ids)."""
        lora = ("rank", "lora_mlp", "lora_style") + (("alpha",) if self.lora_style == "peft" else ())
        keys = {"lora": lora, "adapter": ("reduction", "adapter_towers"), "bitfit": ("bitfit_scope",),
                "attention": ("train_blocks",)}.get(method, ())
        return {k: v for k, v in asdict(self).items() if k in keys}

    def check(self) -> None:
        if self.rank < 1:
            raise InputError(f"--rank must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise InputError(f"--alpha must be positive, got {self.alpha}")
        if self.reduction < 1:
            raise InputError(f"--reduction must be at least 1, got {self.reduction}")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise InputError(f"--train-blocks must be at least 1, got {self.train_blocks}")
        for name, value, allowed in (("--lora-style", self.lora_style, LORA_STYLES),
                                     ("--bitfit-scope", self.bitfit_scope, BITFIT_SCOPES),
                                     ("--adapter-towers", self.adapter_towers, ADAPTER_TOWERS)):
            if value not in allowed:
                raise InputError(f"unknown {name} {value!r}; choose {' or '.join(allowed)}")


@dataclass(frozen=True)
class DataOptions:
    """Where a task's images, classes and prompts come from.

    test / ood_val: images with the training classes (a folder, a manifest or an ImageDataset);
        test_fraction: hold out this share of each class as the test split instead.
    evals: other tasks measured before and after (forgetting): paths, ImageDatasets or EvalTasks.
    templates / template_file / template_set: the prompts (see `resolve_templates`).
    classnames, split, domain: as for `load_image_dataset`.
    task: the task's name in the record [default: the name of the data].
    split_seed: seed of the test and validation splits (the same for every run seed).
    """

    test: Any = None
    test_fraction: float | None = None
    evals: Sequence = ()
    ood_val: Any = None
    templates: Sequence[str] | None = None
    template_file: str | None = None
    template_set: str | None = None
    classnames: Any = None
    split: str | None = None
    domain: str | None = None
    task: str | None = None
    split_seed: int = 0


@dataclass(frozen=True)
class EvalOptions:
    """How the zero-shot baseline and the accuracies are measured.

    dtype, use_cache, max_skip_frac: `embed_dataset` options of the embeddings the zero-shot scores
        are computed on (use_cache also keeps zero-shot accuracies and scores in the store).
    batch_size: images per batch when encoding and evaluating.
    score_backend: compute backend of the zero-shot scores (see `iimm.engine.score`).
    """

    dtype: str = "fp16"
    use_cache: bool = True
    max_skip_frac: float = 0.05
    batch_size: int = 64
    score_backend: str = "auto"

    def embed_kwargs(self) -> dict:
        return {"dtype": self.dtype, "use_cache": self.use_cache, "max_skip_frac": self.max_skip_frac,
                "batch_size": self.batch_size}


