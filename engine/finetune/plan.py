"""Planning a fine-tuning run: its options, splits, configuration key and run id, and reuse of a finished run.

A run is planned before any image is encoded: the options are checked, the task's splits
worked out, and the configuration key (everything the training depends on) hashed into
the run id that names `<store>/finetune/<run id>/`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ...errors import InputError
from ..embedding.data import ImageDataset, load_image_dataset
from ..embedding.sources import split_named_source
from ..embedding.store import Store, open_store
from ..files import write_json_atomic
from .config import DataOptions, EvalOptions
from .methods import MethodOptions, check_method, check_train_blocks
from .records import CHECKPOINT_FILE, RECORD_FILE, RESUME_FILE, finetune_root, index_record, read_record, run_id_of
from .subsets import TaskSplits, split_task
from .trainer import TrainConfig

CONFIG_FORMAT = 2
MIN_VAL_IMAGES = 100  # below, one image moves validation accuracy by more than a point


def split_keywords(data: DataOptions | None, evaluation: EvalOptions | None,
                   keywords: dict) -> tuple[DataOptions, EvalOptions]:
    """Fold keyword arguments named after DataOptions / EvalOptions fields into the two option groups."""
    data, evaluation = data or DataOptions(), evaluation or EvalOptions()
    data_names = {f.name for f in fields(DataOptions)}
    eval_names = {f.name for f in fields(EvalOptions)}
    extra = {}
    for name, value in keywords.items():
        if name in data_names:
            data = replace(data, **{name: value})
        elif name in eval_names:
            extra[name] = value
        else:
            raise TypeError(f"finetune() got an unexpected keyword argument {name!r}")
    return data, replace(evaluation, **extra)


class EvalTask(NamedTuple):
    """Another task measured before and after fine-tuning: its images and, when not the run's, its prompts."""

    name: str
    data: ImageDataset
    templates: list[str] | None = None


@dataclass
class RunPlan:
    """A checked, planned run: what it trains on, what it is measured on, and where it is kept."""

    model: str
    method: str
    spec: Any  # ModelSpec
    cfg: TrainConfig  # resolved: the learning rate filled in
    options: MethodOptions
    data: DataOptions
    evaluation: EvalOptions
    splits: TaskSplits
    prompts: list[str]
    others: dict[str, EvalTask]
    task: str
    config_key: dict
    run_id: str
    run_dir: Path
    evals_key: dict
    store: Store
    device: torch.device
    workers: int

    @property
    def classnames(self) -> list[str]:
        return self.splits.pool.classnames

    @property
    def scores_from(self) -> dict:
        """How the record's zero-shot scores were computed (a reused record must match it)."""
        return {"dtype": self.evaluation.dtype, "backend": self.evaluation.score_backend}


def plan_run(model: str, data, method: str, *, pretrained: str | None, config: TrainConfig | None,
             options: MethodOptions | None, data_options: DataOptions, evaluation: EvalOptions, seeds: int,
             device, workers: int | None, store) -> RunPlan:
    """Check the options, work out the splits and the run id; create the run folder with its config.json."""
    from ..embedding.extract import default_workers
    from ..embedding.models import resolve_device, resolve_model

    check_method(method)
    cfg = (config or TrainConfig()).resolved(method)
    options = options or MethodOptions()
    options.check()
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    dev = resolve_device(device)
    st = open_store(store)
    spec = resolve_model(model, pretrained, hash_memo=st.hash_memo())
    if method == "attention":
        check_train_blocks(options, spec.model_cfg)
    d = data_options
    splits = split_task(data, classnames=d.classnames, test=d.test, test_fraction=d.test_fraction,
                        val_fraction=cfg.val_fraction, train_split=d.split, domain=d.domain, ood_val=d.ood_val,
                        select_on=cfg.select_on, split_seed=d.split_seed)
    prompts = splits.pool.prompts(list(d.templates) if d.templates else None, d.template_file, d.template_set)
    names = splits.pool.classnames
    if len(names) < 2:
        raise InputError(f"{splits.pool.root} has {len(names)} class; fine-tuning a classifier needs at least 2")
    others = eval_sets(d.evals)
    config_key = {"format": CONFIG_FORMAT, "model": spec.fingerprint, "architecture": spec.architecture,
                  "preprocess": spec.preprocess_cfg, "method": method,
                  "options": options.relevant(method), "train": asdict(cfg), "pool": splits.pool.fingerprint(),
                  "train_images": splits.train.fingerprint(), "val": splits.val.fingerprint() if splits.val else None,
                  "test": splits.test.fingerprint(), "classnames": names, "templates": prompts,
                  "split_seed": d.split_seed}
    run_id = run_id_of(config_key)
    run_dir = finetune_root(st) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", config_key)
    evals_key = {name: {"data": t.data.fingerprint(), "classnames": t.data.classnames,
                        "templates": t.templates or prompts} for name, t in others.items()}
    return RunPlan(model, method, spec, cfg, options, d, evaluation, splits, prompts, others,
                   d.task or name_of(data), config_key, run_id, run_dir, evals_key, st, dev,
                   default_workers() if workers is None else workers)


def reused_record(plan: RunPlan, seeds: int, seed: int) -> dict | None:
    """The stored record of a finished run with the same seeds, evaluation tasks, task name and scores, if any."""
    path = plan.run_dir / RECORD_FILE
    if not path.exists():
        return None
    done = read_record(path)
    same = (done["hparams"].get("seeds"), done["hparams"].get("seed"), done.get("evals"), done.get("task"),
            done.get("scores_from"))
    if same != (seeds, seed, plan.evals_key, plan.task, plan.scores_from):
        return None
    index_record(done, path, plan.store)
    return done


def discard_run(run_dir: Path) -> None:
    """Remove what an earlier run with this id left: its record, and every seed's checkpoint and resume state."""
    for path in [run_dir / RECORD_FILE, *run_dir.glob(f"seed-*/{RESUME_FILE}"),
                 *run_dir.glob(f"seed-*/{CHECKPOINT_FILE}")]:
        path.unlink(missing_ok=True)


def validation_warning(plan: RunPlan) -> str | None:
    """A warning when the validation split is too small to tell epochs apart, else None."""
    val = plan.splits.val
    if val is None or len(val) >= MIN_VAL_IMAGES:
        return None
    return (f"the validation split has {len(val)} images: its accuracy moves in steps of {1 / len(val):.3g}, too "
            f"coarse to tell epochs apart (ties go to the lower validation loss); raise --val-fraction or pass "
            f"--ood-val with at least {MIN_VAL_IMAGES} images")


def eval_sets(evals) -> dict[str, EvalTask]:
    """evals: paths, ImageDatasets or EvalTasks -> {name: EvalTask}, names made unique."""
    out: dict[str, EvalTask] = {}
    for item in evals or ():
        if not isinstance(item, EvalTask):
            ds = item if isinstance(item, ImageDataset) else load_image_dataset(item)
            item = EvalTask(name_of(item), ds, ds.templates)
        name, k = item.name, 2
        while name in out:
            name, k = f"{item.name}-{k}", k + 1
        out[name] = item._replace(name=name)
    return out


def name_of(data) -> str:
    """A task's default name: its folder's name, its manifest's stem, or the NAME of NAME@ROOT."""
    root = data.root if isinstance(data, ImageDataset) else str(data)
    named = split_named_source(root)
    if named is not None:
        return named[0].split(":")[-1]
    p = Path(os.path.normpath(root))
    return p.stem if p.suffix.lower() in (".csv", ".jsonl") else p.name


__all__ = ["DataOptions", "EvalOptions", "EvalTask", "RunPlan", "plan_run", "reused_record", "discard_run",
           "validation_warning", "eval_sets",
           "name_of", "split_keywords"]
