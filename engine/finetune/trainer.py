"""The training loop of one seed: optimizer, learning-rate schedule, best-epoch selection, resume.

Loss: cross-entropy over `logit_scale · cos(image, class prompts)` (+ SigLIP's bias), or
over the probe head's logits. Every epoch is seeded from (seed, epoch) — shuffling,
augmentation, dropout — so a resumed run continues exactly as the uninterrupted run
would have. After every epoch the resume state (trained parameters, optimizer state,
progress) is written to `last.safetensors` in one atomic write, and the parameters of
the best epoch so far to `checkpoint.safetensors`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..embedding.data import ImageDataset, collate_skipping
from ...errors import InputError
from ..embedding.models import encode_dtype
from .config import TrainConfig
from .evaluate import accuracy, autocast, class_embeddings, loss_total
from .interrupt import StopSignals
from .records import (CHECKPOINT_FILE, RESUME_FILE, RESUME_FORMAT, load_tensors, load_trainable, save_checkpoint,
                      save_tensors)

SGD_MOMENTUM = 0.9
PROGRESS_EVERY_S = 0.5  # how often the per-step progress (and its GPU sync) is reported
Progress = Callable[..., None]


def learning_rate(step: int, total_steps: int, base: float, schedule: str, warmup: int) -> float:
    """The lr of optimizer step `step` (0-based): linear warm-up to `base` over `warmup` steps, then
    constant or a cosine decay reaching 0 after `total_steps`."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    span = max(1, total_steps - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling and augmentation, from (run seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise InputError("this method leaves no parameter to train on this model")
    kind, kw = ((torch.optim.SGD, dict(momentum=SGD_MOMENTUM)) if cfg.optimizer == "sgd" else (torch.optim.AdamW, {}))
    try:  # the fused kernels are several times faster, on CPUs too; not every device / dtype has them
        return kind(params, lr=cfg.lr, weight_decay=cfg.wd, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, lr=cfg.lr, weight_decay=cfg.wd, **kw)


@dataclass
class SeedResult:
    """What one seed's training did. history: one dict per epoch (loss, accuracies, lr, seconds).

    val_images: the readable images each validation measured (0 without validation).
    """

    seed: int
    best_epoch: int
    best_val: float | None
    history: list[dict]
    train_images: int
    skipped: list[str]
    checkpoint: Path
    resumed_epochs: int = 0
    seconds: float = 0.0
    val_images: int = 0


@dataclass
class _State:
    epochs_done: int = 0
    step: int = 0
    best_epoch: int = 0
    best_val: float | None = None
    best_val_loss: float | None = None
    val_images: int = 0
    history: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    complete: bool = False
    scaler: dict = field(default_factory=dict)


def is_better(val_acc: float | None, val_loss: float | None, best_acc: float | None,
              best_loss: float | None) -> bool:
    """Whether an epoch beats the best so far: strictly greater validation accuracy (the papers' rule), and
    on equal accuracy a strictly lower validation loss. Without validation every epoch is (the last is kept)."""
    if val_acc is None or best_acc is None:
        return True
    if val_acc != best_acc:
        return val_acc > best_acc
    return val_loss is not None and best_loss is not None and val_loss < best_loss


class EpochSampler(torch.utils.data.Sampler):
    """The shuffled order of one epoch, seeded by (seed, epoch): yields `(item seed, index)` pairs.

    One DataLoader (with persistent workers) serves every epoch: `set_epoch` before iterating.
    The item seed makes each image's augmentation depend only on (seed, epoch, index), not on
    which worker decodes it or on what came before, so a resumed run continues exactly.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        key = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(key)).tolist()
        return iter([(key, i) for i in order])


class SeededItems(torch.utils.data.Dataset):
    """A dataset read at `(item seed, index)` keys: each item is transformed under its own RNG seed; the
    caller's RNG state is restored (in the main process it drives dropout)."""

    def __init__(self, items: torch.utils.data.Dataset):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        state = torch.get_rng_state()
        torch.manual_seed((seed * 1_000_003 + index) % (2 ** 63))
        try:
            return self.items[index]
        finally:
            torch.set_rng_state(state)


def train_seed(tuned, train_ds: ImageDataset, val_ds: ImageDataset | None, tokens: torch.Tensor, num_classes: int,
               train_transform: Callable, eval_transform: Callable, cfg: TrainConfig, *, seed: int, folder: Path,
               checkpoint_info: dict, resume: bool = False, workers: int = 0,
               progress: Progress | None = None) -> SeedResult:
    """Train `tuned` on `train_ds`; keep the best epoch on `val_ds` (see `is_better`; the last without it).

    tokens: (C·T, L) class-major prompt tokens of the task's classes. On return, `tuned`
    holds the parameters of the selected epoch. With resume, a finished seed is loaded
    instead of trained and an interrupted one continues from its last finished epoch (reported
    as progress("resuming", epochs done, epochs, {"seed", "run_id", "complete"})).
    SIGINT / SIGTERM stop the run promptly (see `interrupt.StopSignals`); the epochs finished
    before are kept for resume.
    """
    with StopSignals() as stops:
        return _train_seed(tuned, train_ds, val_ds, tokens, num_classes, train_transform, eval_transform, cfg,
                           seed=seed, folder=Path(folder), checkpoint_info=checkpoint_info, resume=resume,
                           workers=workers, progress=progress, stops=stops)


def _train_seed(tuned, train_ds, val_ds, tokens, num_classes, train_transform, eval_transform, cfg: TrainConfig, *,
                seed: int, folder: Path, checkpoint_info: dict, resume: bool, workers: int, progress,
                stops: StopSignals) -> SeedResult:
    started = time.perf_counter()
    device = tokens.device
    params = tuned.named_trainable()
    names = list(params)
    optimizer = make_optimizer(cfg, list(params.values()))
    use_scaler = device.type == "cuda" and encode_dtype(device) == "float16"  # fp16 autocast needs loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    state = _State()
    folder.mkdir(parents=True, exist_ok=True)
    resume_path, best_path = folder / RESUME_FILE, folder / CHECKPOINT_FILE
    if resume and resume_path.is_file():
        state = _load_resume(resume_path, tuned, optimizer, names, scaler)
        if progress is not None:
            progress("resuming", state.epochs_done, cfg.epochs,
                     {"seed": seed, "run_id": checkpoint_info.get("run_id"), "complete": state.complete})
        if state.complete:
            load_trainable(tuned, load_tensors(best_path, device)[0], str(best_path))
            return _result(seed, state, train_ds, best_path, state.epochs_done, started)
    resumed = state.epochs_done
    frozen_text = _frozen_text(tuned, tokens)
    skipped = set(state.skipped)
    stage = f"seed {seed}"
    sampler = EpochSampler(len(train_ds), seed)
    loader = torch.utils.data.DataLoader(
        SeededItems(train_ds.torch_dataset(train_transform)), batch_size=cfg.batch_size, sampler=sampler,
        num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_skipping,
        pin_memory=device.type == "cuda")
    for epoch in range(state.epochs_done, cfg.epochs):
        t_epoch = time.perf_counter()
        torch.manual_seed(epoch_seed(seed, epoch))  # dropout
        sampler.set_epoch(epoch)
        tuned.train()
        # running sums stay on the device: reading them every step would wait for the GPU three times a step
        loss_sum = loss_total(device)
        hits = torch.zeros((), dtype=torch.int64, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        seen, reported = 0, time.perf_counter()
        for batch, (images, labels, _, dropped) in enumerate(loader):
            stops.check()
            skipped.update(train_ds.items[i].path for i in dropped)
            if images is None:
                continue
            lr = learning_rate(state.step, total_steps, cfg.lr, cfg.schedule, cfg.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with autocast(device):
                logits = _logits(tuned, images, tokens, num_classes, frozen_text)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state.step += 1
            finite &= torch.isfinite(loss.detach())
            loss_sum += loss.detach().to(loss_sum.dtype) * len(labels)
            hits += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            last = batch + 1 == steps_per_epoch
            if progress is not None and (last or time.perf_counter() - reported > PROGRESS_EVERY_S):
                _check_finite_loss(finite, seed, epoch, state.step)
                progress(f"{stage} epoch {epoch + 1}/{cfg.epochs}", batch + 1, steps_per_epoch,
                         {"loss": float(loss_sum) / seen, "acc": int(hits) / seen, "lr": lr})
                reported = time.perf_counter()
        stops.check()
        if not seen:
            raise InputError(f"no readable training image in epoch {epoch + 1}; check the training data")
        _check_finite_loss(finite, seed, epoch, state.step)  # before anything of this epoch is saved
        loss_sum, hits = float(loss_sum), int(hits)
        val_acc = val_loss = None
        if val_ds is not None:
            val_cls = class_embeddings(tuned, tokens, num_classes)
            measured = accuracy(tuned, val_ds, val_cls, eval_transform, use_probe=True, batch_size=cfg.batch_size,
                                workers=workers, progress=progress, stage=f"{stage} validating")
            val_acc, val_loss, state.val_images = measured.value, measured.loss, measured.total
            stops.check()
        state.history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": hits / seen,
                              "val_acc": val_acc, "val_loss": val_loss, "lr": lr,
                              "seconds": time.perf_counter() - t_epoch})
        improved = is_better(val_acc, val_loss, state.best_val, state.best_val_loss)
        with stops.deferred():  # the epoch is kept whole: a signal here stops the run right after
            if improved:
                state.best_epoch, state.best_val, state.best_val_loss = epoch + 1, val_acc, val_loss
                save_checkpoint(best_path, params, {**checkpoint_info, "epoch": epoch + 1, "val_acc": val_acc})
            state.epochs_done, state.complete = epoch + 1, epoch + 1 == cfg.epochs
            state.skipped, state.scaler = sorted(skipped), scaler.state_dict() if use_scaler else {}
            _save_resume(resume_path, params, optimizer, names, state)
        if progress is not None:
            progress("epoch finished", epoch + 1, cfg.epochs, {**state.history[-1], "seed": seed, "best": improved})
        stops.check()
    if state.best_epoch != state.epochs_done:
        load_trainable(tuned, load_tensors(best_path, device)[0], str(best_path))
    return _result(seed, state, train_ds, best_path, resumed, started)


def _result(seed: int, state: _State, train_ds: ImageDataset, best_path: Path, resumed: int,
            started: float) -> SeedResult:
    return SeedResult(seed, state.best_epoch, state.best_val, state.history, len(train_ds), state.skipped,
                      best_path, resumed, time.perf_counter() - started, state.val_images)


def _check_finite_loss(finite: torch.Tensor, seed: int, epoch: int, step: int) -> None:
    if not bool(finite):
        raise InputError(f"the training loss became NaN or Inf (seed {seed}, epoch {epoch + 1}, by step {step}); "
                         f"lower --lr")


def _frozen_text(tuned, tokens: torch.Tensor) -> torch.Tensor | None:
    """Raw text-tower outputs (C·T, D) computed once when the towers are frozen (adapter, probe)."""
    if tuned.towers_train:
        return None
    with torch.no_grad(), autocast(tokens.device):
        return tuned.text_tower(tokens).float()


def _logits(tuned, images: torch.Tensor, tokens: torch.Tensor, num_classes: int,
            frozen_text: torch.Tensor | None) -> torch.Tensor:
    feats = tuned.encode_image(images)
    if tuned.probe is not None:
        return tuned.logits(feats, None)
    cls = tuned.class_embeddings(tokens, num_classes, raw=frozen_text)
    return tuned.logits(feats, cls)


def _save_resume(path: Path, params: dict, optimizer: torch.optim.Optimizer, names: list[str], state: _State) -> None:
    tensors = {f"param/{n}": p for n, p in params.items()}
    for name, p in zip(names, optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            if value is not None:
                tensors[f"optim/{name}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    save_tensors(path, tensors, {"format": RESUME_FORMAT, "state": json.dumps(asdict(state))})


def _load_resume(path: Path, tuned, optimizer: torch.optim.Optimizer, names: list[str], scaler) -> _State:
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != RESUME_FORMAT:
        raise InputError(f"{path} is not an iimm resume state; delete it to start the run afresh")
    state = _State(**json.loads(metadata["state"]))
    load_trainable(tuned, {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}, str(path))
    for name, p in zip(names, optimizer.param_groups[0]["params"]):
        prefix = f"optim/{name}/"
        saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if saved:
            # fused optimizers keep `step` on the parameter's device as float32, others on the CPU
            step_device = p.device if optimizer.defaults.get("fused") else torch.device("cpu")
            optimizer.state[p] = {k: v.to(step_device, torch.float32) if k == "step" else v.to(p.device)
                                  for k, v in saved.items()}
    if state.scaler and scaler.is_enabled():
        scaler.load_state_dict(state.scaler)
    return state
