"""A reference fine-tuning run end to end: splits, scores, zero-shot accuracy, seeds, evaluation, record.

`finetune(model, data, method)` measures what fine-tuning does to a task the way the
papers did: zero-shot accuracy before and fine-tuned accuracy after on the task's test
split, accuracy before and after on other tasks (`evals`, forgetting), the zero-shot
scores of the training images, and keeps the record and checkpoints in the store.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple
from pathlib import Path

import torch

from ..embedding.data import ImageDataset, load_image_dataset, resolve_templates
from ...errors import InputError
from ..files import write_json_atomic
from ..embedding.store import open_store
from .evaluate import accuracy, class_embeddings, prompt_tokens, summarize_seeds
from .methods import MethodOptions, TunedModel, check_method, check_train_blocks, tune_model
from .records import finetune_root, index_record, read_record, run_id_of, seed_dir, write_record
from .subsets import few_shot_subset, split_task, subset
from .trainer import SeedResult, TrainConfig, train_seed


@dataclass
class FinetuneResult:
    """`record`: the JSON-ready record (also in `run_dir/record.json`); `seeds`: each seed's training."""

    record: dict
    run_dir: Path
    seeds: list[SeedResult]


def finetune(model: str, data, method: str, *, pretrained: str | None = None, config: TrainConfig | None = None,
             options: MethodOptions | None = None, test=None, test_fraction: float | None = None, evals=(),
             ood_val=None, templates=None, template_file=None, template_set: str | None = None, classnames=None,
             split: str | None = None, domain: str | None = None, task: str | None = None, seeds: int = 1,
             seed: int = 0, split_seed: int = 0, device: str | torch.device = "auto", workers: int | None = None,
             store=None, resume: bool = False, reuse: bool = False, embed_options: dict | None = None,
             score_backend: str = "auto", progress=None) -> FinetuneResult:
    """Fine-tune `model` on the images `data` with `method` and record what happened.

    data / test / evals / ood_val: class-per-folder trees, .csv/.jsonl manifests or ImageDatasets.
    seeds: runs with seeds seed, seed+1, …; the record holds their mean (and `std`).
    embed_options: extra `embed_dataset` options for the scores' embeddings (dtype, use_cache,
        max_skip_frac, batch_size).
    score_backend: the compute backend of the zero-shot scores (see `iimm.engine.score`).
    reuse: return the stored record of a finished run with the same configuration, seeds and
        evaluation tasks (the same images, class names and prompts) instead of training again.
    progress: called as progress(stage, done, total) or progress(stage, done, total, metrics).
    """
    from ..embedding.extract import default_workers, embed_dataset
    from ..embedding.models import ModelPool, encode_dtype, load_model, resolve_device, resolve_model

    started = time.perf_counter()
    check_method(method)
    cfg = (config or TrainConfig()).resolved(method)
    options = options or MethodOptions()
    options.check()
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    dev = resolve_device(device)
    workers = default_workers() if workers is None else workers
    st = open_store(store)
    spec = resolve_model(model, pretrained, hash_memo=st.hash_memo())
    if method == "attention":
        check_train_blocks(options, spec.model_cfg)
    prompts = resolve_templates(templates, template_file, template_set)
    splits = split_task(data, classnames=classnames, test=test, test_fraction=test_fraction,
                        val_fraction=cfg.val_fraction, train_split=split, domain=domain, ood_val=ood_val,
                        select_on=cfg.select_on, split_seed=split_seed)
    names = splits.pool.classnames
    if len(names) < 2:
        raise InputError(f"{splits.pool.root} has {len(names)} class; fine-tuning a classifier needs at least 2")
    others = _eval_sets(evals)
    task = task or _name_of(data)
    config_key = {"format": 2, "model": spec.fingerprint, "architecture": spec.architecture,
                  "preprocess": spec.preprocess_cfg, "method": method,
                  "options": options.relevant(method), "train": asdict(cfg), "pool": splits.pool.fingerprint(),
                  "train_images": splits.train.fingerprint(), "val": splits.val.fingerprint() if splits.val else None,
                  "test": splits.test.fingerprint(), "classnames": names, "templates": prompts,
                  "split_seed": split_seed}
    run_id = run_id_of(config_key)
    run_dir = finetune_root(st) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", config_key)
    evals_key = {name: {"data": t.data.fingerprint(), "classnames": t.data.classnames,
                        "templates": t.templates or prompts} for name, t in others.items()}
    embed_kw = {"dtype": "fp16", "use_cache": True, "max_skip_frac": 0.05, "batch_size": 64, **(embed_options or {})}
    scores_from = {"dtype": embed_kw["dtype"], "backend": score_backend}
    if reuse and (run_dir / "record.json").exists():
        done = read_record(run_dir / "record.json")
        same = (done["hparams"].get("seeds"), done["hparams"].get("seed"), done.get("evals"), done.get("task"),
                done.get("scores_from"))
        if same == (seeds, seed, evals_key, task, scores_from):
            index_record(done, run_dir / "record.json", st)
            return FinetuneResult(done, run_dir, [])

    pool = ModelPool()  # one load serves the embedding and the first seed, which then trains it in place
    es, embedded = embed_dataset(spec, splits.pool, templates=prompts, store=st, device=dev,
                                 workers=workers, progress=progress, models=pool, **embed_kw)
    memo = st if embed_kw["use_cache"] else None
    scores = _zero_shot_scores(es, embedded.set_id, memo, score_backend, dev, progress)
    lm = pool.get(spec, dev)
    del pool

    eval_batch = embed_kw["batch_size"]
    versions = _versions()
    tokens = prompt_tokens(lm.tokenizer, names, prompts, dev)
    zero_shot = TunedModel(lm.model, None, MethodOptions(), 0, lm.logit_scale, lm.logit_bias)
    zs_cls = class_embeddings(zero_shot, tokens, len(names))

    def zero_shot_accuracy(ds: ImageDataset, templates: list[str], cls: Callable[[], torch.Tensor], stage: str):
        # format 2: logits in fp32 under autocast
        key = {"format": 2, **versions, "model": spec.fingerprint, "preprocess": spec.preprocess_cfg,
               "data": ds.fingerprint(), "classnames": ds.classnames, "templates": templates,
               "compute": encode_dtype(dev), "batch_size": eval_batch}
        hit = memo.get_result("zeroshot_accuracy", key) if memo else None
        if hit is not None:
            return hit["correct"] / hit["total"]
        acc = accuracy(zero_shot, ds, cls(), lm.preprocess, use_probe=False, batch_size=eval_batch, workers=workers,
                       progress=progress, stage=stage)
        value = acc.value  # raises on a dataset without a readable image: nothing is kept then
        if memo:
            memo.put_result("zeroshot_accuracy", key, {"correct": acc.correct, "total": acc.total})
        return value

    zeroshot_acc = zero_shot_accuracy(splits.test, prompts, lambda: zs_cls, "zero-shot test")
    other_tokens = {name: prompt_tokens(lm.tokenizer, t.data.classnames, t.templates or prompts, dev)
                    for name, t in others.items()}
    ood_before = {name: zero_shot_accuracy(t.data, t.templates or prompts,
                                           lambda: class_embeddings(zero_shot, other_tokens[name],
                                                                    len(t.data.classnames)),
                                           f"zero-shot {name}")
                  for name, t in others.items()}
    others = {name: t.data for name, t in others.items()}
    zero_shot = None  # its model is trained in place next; nothing else may hold it

    info = {"model": model, "pretrained": spec.pretrained, "method": method, "options": asdict(options),
            "embed_dim": int(zs_cls.shape[1]), "num_classes": len(names), "classnames": names, "templates": prompts,
            "logit_scale": lm.logit_scale, "logit_bias": lm.logit_bias, "task": task, "run_id": run_id}
    per_seed, results, counts = [], [], None
    for k, s in enumerate(range(seed, seed + seeds)):
        base = lm if k == 0 else load_model(model, pretrained, device=dev, spec=spec)
        train_ds = splits.train
        if cfg.shots is not None or cfg.fraction is not None:
            train_ds = subset(train_ds, few_shot_subset(train_ds.labels, s, shots=cfg.shots, fraction=cfg.fraction,
                                                        classnames=names, num_classes=len(names)))
        torch.manual_seed(s)
        tuned = tune_model(base.model, method, options, embed_dim=info["embed_dim"], logit_scale=lm.logit_scale,
                           logit_bias=lm.logit_bias, class_embeddings=zs_cls)
        counts = tuned.num_parameters()
        if progress is not None:
            progress("setup", counts[0], counts[1], {"trainable_params": counts[0], "total_params": counts[1],
                                                     "seed": s, "train_images": len(train_ds)})
        res = train_seed(tuned, train_ds, splits.val, tokens, len(names), lm.preprocess_train, lm.preprocess, cfg,
                         seed=s, folder=seed_dir(run_dir, s), checkpoint_info={**info, "seed": s}, resume=resume,
                         workers=workers, progress=progress)
        cls = class_embeddings(tuned, tokens, len(names))
        test_acc = accuracy(tuned, splits.test, cls, lm.preprocess, use_probe=True, batch_size=eval_batch,
                            workers=workers, progress=progress, stage=f"seed {s} test").value
        if method == "probe":  # both towers frozen: the other tasks' zero-shot classifiers are unchanged
            ood_after = dict(ood_before)
        else:
            ood_after = {name: accuracy(tuned, ds, class_embeddings(tuned, other_tokens[name], len(ds.classnames)),
                                        lm.preprocess, use_probe=False, batch_size=eval_batch, workers=workers,
                                        progress=progress, stage=f"seed {s} {name}").value
                         for name, ds in others.items()}
        per_seed.append({"seed": s, "finetuned_acc": test_acc, "ood": ood_after, "best_epoch": res.best_epoch,
                         "val_acc": res.best_val, "train_images": res.train_images, "skipped": len(res.skipped),
                         "resumed_epochs": res.resumed_epochs, "checkpoint": str(res.checkpoint),
                         "seconds": res.seconds, "history": res.history})
        results.append(res)
        del tuned, base
        lm.model = None  # trained in place by the first seed; later seeds load the base afresh
        _release(dev)

    outcome = summarize_seeds(zeroshot_acc, ood_before, per_seed)
    record = {"run_id": run_id, "model": model, "pretrained": spec.pretrained, "architecture": spec.architecture,
              "method": method, "task": task, "data": str(splits.pool.root), "embedding_set_id": embedded.set_id,
              "hparams": {**asdict(cfg), **options.relevant(method), "seeds": seeds, "seed": seed,
                          "split_seed": split_seed, "templates": prompts, "test": splits.test_source,
                          "val": splits.val_source},
              "trainable_params": counts[0], "total_params": counts[1], **outcome, "scores": scores,
              "scores_from": scores_from,
              "seconds": time.perf_counter() - started, "checkpoint": _best_checkpoint(per_seed),
              "images": {"pool": len(splits.pool), "train": len(splits.train),
                         "val": len(splits.val) if splits.val else 0, "test": len(splits.test)},
              "per_seed": per_seed, "evals": evals_key, "device": str(dev), "created": time.time(), **versions}
    write_record(run_dir, record, st)
    return FinetuneResult(record, run_dir, results)


def _zero_shot_scores(es, set_id: str | None, memo, backend: str, device: torch.device,
                      progress) -> dict[str, float]:
    """Every embedding score of the zero-shot embeddings, computed once per embedding set when `memo` is a Store."""
    from ... import __version__
    from ..scoring.scores import score

    key = {"format": 1, "embedding_set": set_id, "iimm_version": __version__, "backend": backend}
    hit = memo.get_result("zeroshot_scores", key) if memo and set_id else None
    if hit is not None:
        return hit
    scores = score(es, backend=backend, device=device, progress=progress).scores
    if memo and set_id:
        memo.put_result("zeroshot_scores", key, scores)
    return scores


class EvalTask(NamedTuple):
    """Another task measured before and after fine-tuning: its images and, when not the run's, its prompts."""

    name: str
    data: ImageDataset
    templates: list[str] | None = None


def _eval_sets(evals) -> dict[str, EvalTask]:
    """evals: paths, ImageDatasets or EvalTasks -> {name: EvalTask}, names made unique."""
    out: dict[str, EvalTask] = {}
    for item in evals or ():
        if not isinstance(item, EvalTask):
            ds = item if isinstance(item, ImageDataset) else load_image_dataset(item)
            item = EvalTask(_name_of(item), ds)
        name, k = item.name, 2
        while name in out:
            name, k = f"{item.name}-{k}", k + 1
        out[name] = item._replace(name=name)
    return out


def _name_of(data) -> str:
    root = data.root if isinstance(data, ImageDataset) else str(data)
    p = Path(os.path.normpath(root))
    return p.stem if p.suffix.lower() in (".csv", ".jsonl") else p.name


def _best_checkpoint(per_seed: list[dict]) -> str:
    """The checkpoint of the seed with the best validation accuracy (the first seed without validation)."""
    scored = [p for p in per_seed if p["val_acc"] is not None]
    if not scored:
        return per_seed[0]["checkpoint"]
    return max(scored, key=lambda p: p["val_acc"])["checkpoint"]


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _versions() -> dict:
    import open_clip

    from ... import __version__
    return {"iimm_version": __version__, "torch_version": torch.__version__, "open_clip_version": open_clip.__version__}


__all__ = ["FinetuneResult", "finetune"]
