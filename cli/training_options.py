"""Training options shared by `iimm finetune` and `iimm calibrate`: the run's TrainConfig and MethodOptions."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ..engine.finetune.config import (ADAPTER_TOWERS, BITFIT_SCOPES, LORA_STYLES, OPTIMIZERS, SCHEDULES, DataOptions,
                                       MethodOptions, TrainConfig)
from .option_group import option_group

_TRAIN = TrainConfig()  # the CLI's defaults are the engine's
_METHOD = MethodOptions()
TRAIN_BATCH_DEFAULT = _TRAIN.batch_size


@dataclass
class TrainingOptions:
    epochs: int
    lr: float | None
    wd: float
    optimizer: str
    schedule: str
    warmup: int
    val_fraction: float
    shots: int | None
    fraction: float | None
    seeds: int
    seed: int
    split_seed: int
    select_on: str
    rank: int
    alpha: float
    lora_mlp: bool
    reduction: int
    train_blocks: int | None
    lora_style: str
    bitfit_scope: str
    adapter_towers: str

    def config(self, batch_size: int = TRAIN_BATCH_DEFAULT) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, wd=self.wd, optimizer=self.optimizer,
                           batch_size=batch_size, schedule=self.schedule, warmup=self.warmup,
                           val_fraction=self.val_fraction, shots=self.shots, fraction=self.fraction,
                           select_on=self.select_on)

    def method_options(self) -> MethodOptions:
        return MethodOptions(rank=self.rank, alpha=self.alpha, lora_mlp=self.lora_mlp, reduction=self.reduction,
                             train_blocks=self.train_blocks, lora_style=self.lora_style,
                             bitfit_scope=self.bitfit_scope, adapter_towers=self.adapter_towers)


_OPTIONS = [
    click.option("--epochs", type=click.IntRange(min=1), default=_TRAIN.epochs, show_default=True),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                 help="Learning rate [default: per method and optimizer, e.g. sgd full 1e-4, lora 1e-3]."),
    click.option("--wd", type=click.FloatRange(min=0), default=_TRAIN.wd, show_default=True, help="Weight decay."),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_TRAIN.optimizer, show_default=True,
                 help="sgd (momentum 0.9) or adamw."),
    click.option("--schedule", type=click.Choice(SCHEDULES), default=_TRAIN.schedule, show_default=True),
    click.option("--warmup", type=click.IntRange(min=0), default=_TRAIN.warmup, show_default=True,
                 help="Linear warm-up steps."),
    click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=_TRAIN.val_fraction,
                 show_default=True,
                 help="Share of each class held out to choose the best epoch (0: keep the last epoch)."),
    click.option("--shots", type=click.IntRange(min=1), help="Few-shot: train on K images per class."),
    click.option("--fraction", type=click.FloatRange(0, 1, min_open=True),
                 help="Few-shot: train on this share of each class."),
    click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Repeat the run with this many seeds; report mean and standard deviation."),
    click.option("--seed", type=int, default=0, show_default=True, help="First seed."),
    click.option("--split-seed", type=int, default=DataOptions().split_seed, show_default=True,
                 help="Seed of the test/validation splits (the same for every run seed)."),
    click.option("--select-on", type=click.Choice(["val", "ood"]), default=_TRAIN.select_on, show_default=True,
                 help="Choose the best epoch on in-domain validation, or on --ood-val."),
    click.option("--rank", type=click.IntRange(min=1), default=_METHOD.rank, show_default=True, help="LoRA rank."),
    click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=_METHOD.alpha, show_default=True,
                 help="LoRA alpha (--lora-style peft: updates scaled by alpha/rank)."),
    click.option("--lora-style", type=click.Choice(LORA_STYLES), default=_METHOD.lora_style, show_default=True,
                 help="paper: updates scaled by 0.2, A ~ N(0, 0.02²) (the IIMM paper's code); peft: scaled by "
                      "alpha/rank, A Kaiming-uniform."),
    click.option("--bitfit-scope", type=click.Choice(BITFIT_SCOPES), default=_METHOD.bitfit_scope,
                 show_default=True,
                 help="blocks: the biases inside the transformer blocks (the paper's code); all: every bias."),
    click.option("--adapter-towers", type=click.Choice(ADAPTER_TOWERS), default=_METHOD.adapter_towers,
                 show_default=True,
                 help="CLIP-Adapter on both towers (the paper's code) or on the image tower only."),
    click.option("--lora-mlp", is_flag=True, help="LoRA also on every Linear of each block's MLP."),
    click.option("--reduction", type=click.IntRange(min=1), default=_METHOD.reduction, show_default=True,
                 help="CLIP-Adapter bottleneck reduction."),
    click.option("--train-blocks", type=click.IntRange(min=1),
                 help="attention: train the first K blocks of each tower."),
]


training_options = option_group(TrainingOptions, _OPTIONS, "training")
"""Decorator: add the training options and pass them as `training=TrainingOptions(...)`."""
