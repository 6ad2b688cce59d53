"""A reference fine-tuning run end to end: plan, zero-shot baseline, seeds, record.

`finetune(model, data, method)` measures what fine-tuning does to a task the way the
papers did: zero-shot accuracy before and fine-tuned accuracy after on the task's test
split, accuracy before and after on other tasks (`evals`, forgetting), the zero-shot
scores of the training images, and keeps the record and checkpoints in the store.
Its steps: `plan_run` (options, splits, run id, reuse), `zero_shot_baseline`,
`train_seeds` (the seed loop) and `build_record`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .evaluate import accuracy, class_embeddings, prompt_tokens, summarize_seeds
from .methods import MethodOptions, TunedModel, tune_model
from .plan import (DataOptions, EvalOptions, EvalTask, RunPlan, discard_run, plan_run, reused_record,
                   split_keywords, validation_warning)
from .records import seed_dir, write_record
from .subsets import few_shot_subset, subset
from .trainer import SeedResult, TrainConfig, train_seed


@dataclass
class FinetuneResult:
    """`record`: the JSON-ready record (also in `run_dir/record.json`); `seeds`: each seed's training."""

    record: dict
    run_dir: Path
    seeds: list[SeedResult]


def finetune(model: str, data, method: str, *, pretrained: str | None = None, config: TrainConfig | None = None,
             options: MethodOptions | None = None, data_options: DataOptions | None = None,
             evaluation: EvalOptions | None = None, seeds: int = 1, seed: int = 0,
             device: str | torch.device = "auto", workers: int | None = None, store=None, resume: bool = True,
             restart: bool = False, reuse: bool = False, progress=None, **keywords) -> FinetuneResult:
    """Fine-tune `model` on the images `data` with `method` and record what happened.

    data: a class-per-folder tree, a .csv/.jsonl manifest or an ImageDataset.
    config: the training hyperparameters; options: the method's options.
    data_options: the test split, other tasks, prompts, class names (DataOptions);
    evaluation: how the baseline and accuracies are measured (EvalOptions). Their fields can
        also be given as keywords (`test_fraction=0.2`, `evals=[...]`, `score_backend="torch"`).
    seeds: runs with seeds seed, seed+1, …; the record holds their mean (and `std`).
    resume: an identical run interrupted earlier (same run id) continues from its last finished epoch,
        and its finished seeds are evaluated again rather than retrained; progress reports "resuming".
    restart: discard what an identical earlier run left (checkpoints, resume states, record) and train afresh.
    reuse: return the stored record of a finished run with the same configuration, seeds and
        evaluation tasks (the same images, class names and prompts) instead of training again.
    progress: called as progress(stage, done, total) or progress(stage, done, total, metrics).
    """
    started = time.perf_counter()
    data_options, evaluation = split_keywords(data_options, evaluation, keywords)
    plan = plan_run(model, data, method, pretrained=pretrained, config=config, options=options,
                    data_options=data_options, evaluation=evaluation, seeds=seeds, device=device, workers=workers,
                    store=store)
    if restart:
        discard_run(plan.run_dir)
    elif reuse:
        done = reused_record(plan, seeds, seed)
        if done is not None:
            if progress is not None:
                progress("reused", 1, 1, {"run_id": plan.run_id})
            return FinetuneResult(done, plan.run_dir, [])
    warnings = [w for w in (validation_warning(plan),) if w]
    if progress is not None:
        for message in warnings:
            progress("warning", 0, 0, {"message": message})
    baseline = zero_shot_baseline(plan, progress)
    per_seed, results, counts = train_seeds(plan, baseline, seeds, seed, resume and not restart, progress)
    record = build_record(plan, baseline, per_seed, counts, seeds, seed, time.perf_counter() - started)
    record["warnings"] = warnings
    write_record(plan.run_dir, record, plan.store)
    return FinetuneResult(record, plan.run_dir, results)


# ---- the zero-shot baseline ---------------------------------------------------------------------------

@dataclass
class Baseline:
    """The model before fine-tuning, measured.

    lm: the loaded base model (the first seed trains it in place). tokens: (C·T, L) prompt tokens of
    the task; class_emb: (C, D) its zero-shot class embeddings. other_tokens: each other task's tokens.
    """

    lm: object
    embedding_set_id: str | None
    scores: dict[str, float]
    tokens: torch.Tensor
    class_emb: torch.Tensor
    accuracy: float
    ood_before: dict[str, float]
    other_tokens: dict[str, torch.Tensor]
    shifted_test: float | None = None  # zero-shot accuracy on the out-of-domain test split (WILDS "test")


def zero_shot_baseline(plan: RunPlan, progress) -> Baseline:
    """Embed the training pool once (the scores' embeddings), score it, and measure zero-shot accuracy on the
    test split and on every other task; results are kept in the store when caching is on."""
    from ..embedding.extract import embed_dataset
    from ..embedding.models import ModelPool
    from ..scoring.stored import stored_scores

    ev = plan.evaluation
    pool = ModelPool()  # one load serves the embedding and the first seed, which then trains it in place
    es, embedded = embed_dataset(plan.spec, plan.splits.pool, templates=plan.prompts, store=plan.store,
                                 device=plan.device, workers=plan.workers, progress=progress, models=pool,
                                 **ev.embed_kwargs())
    memo = plan.store if ev.use_cache else None
    # every embedding score of the zero-shot embeddings, computed once per embedding set when memo is a Store
    scores = stored_scores(es, embedded.set_id, memo, backend=ev.score_backend, device=plan.device,
                           progress=progress)[0]
    lm = pool.get(plan.spec, plan.device)
    tokens = prompt_tokens(lm.tokenizer, plan.classnames, plan.prompts, plan.device)
    zero_shot = TunedModel(lm.model, None, MethodOptions(), 0, lm.logit_scale, lm.logit_bias)
    measure = ZeroShotAccuracy(plan, zero_shot, lm.preprocess, memo, progress)
    zs_cls = class_embeddings(zero_shot, tokens, len(plan.classnames))
    acc = measure(plan.splits.test, plan.prompts, tokens, "zero-shot test", class_emb=zs_cls)
    other_tokens = {name: prompt_tokens(lm.tokenizer, t.data.classnames, t.templates or plan.prompts, plan.device)
                    for name, t in plan.others.items()}
    ood_before = {name: measure(t.data, t.templates or plan.prompts, other_tokens[name], f"zero-shot {name}")
                  for name, t in plan.others.items()}
    shifted = plan.splits.ood_test
    shifted_acc = measure(shifted, plan.prompts, tokens, "zero-shot OOD test", class_emb=zs_cls) \
        if shifted is not None else None
    return Baseline(lm, embedded.set_id, scores, tokens, zs_cls, acc, ood_before, other_tokens, shifted_acc)


class ZeroShotAccuracy:
    """Zero-shot accuracy of the base model on a dataset, looked up in (and kept in) the store's results."""

    def __init__(self, plan: RunPlan, zero_shot: TunedModel, transform, memo, progress):
        from ..embedding.models import encode_dtype

        self.plan, self.zero_shot, self.transform, self.memo, self.progress = plan, zero_shot, transform, memo, progress
        self.compute = encode_dtype(plan.device)
        self.versions = versions()

    def key(self, ds, templates: list[str]) -> dict:
        # format 2: logits in fp32 under autocast
        return {"format": 2, **self.versions, "model": self.plan.spec.fingerprint,
                "preprocess": self.plan.spec.preprocess_cfg, "data": ds.fingerprint(), "classnames": ds.classnames,
                "templates": templates, "compute": self.compute, "batch_size": self.plan.evaluation.batch_size}

    def __call__(self, ds, templates: list[str], tokens: torch.Tensor, stage: str,
                 class_emb: torch.Tensor | None = None) -> float:
        """ds: the images; tokens: (C·T, L) its prompts' tokens (class_emb: (C, D) when already computed)."""
        key = self.key(ds, templates)
        hit = self.memo.get_result("zeroshot_accuracy", key) if self.memo else None
        if hit is not None:
            return hit["correct"] / hit["total"]
        if class_emb is None:
            class_emb = class_embeddings(self.zero_shot, tokens, len(ds.classnames))
        acc = accuracy(self.zero_shot, ds, class_emb, self.transform, use_probe=False,
                       batch_size=self.plan.evaluation.batch_size, workers=self.plan.workers,
                       progress=self.progress, stage=stage)
        value = acc.value  # raises on a dataset without a readable image: nothing is kept then
        if self.memo:
            self.memo.put_result("zeroshot_accuracy", key, {"correct": acc.correct, "total": acc.total})
        return value


# ---- the seeds ----------------------------------------------------------------------------------------

def checkpoint_info(plan: RunPlan, baseline: Baseline) -> dict:
    """What a checkpoint needs to rebuild its model (see `load_finetuned`)."""
    lm = baseline.lm
    return {"model": plan.model, "pretrained": plan.spec.pretrained, "method": plan.method,
            "options": asdict(plan.options), "embed_dim": int(baseline.class_emb.shape[1]),
            "num_classes": len(plan.classnames), "classnames": plan.classnames, "templates": plan.prompts,
            "logit_scale": lm.logit_scale, "logit_bias": lm.logit_bias, "task": plan.task, "run_id": plan.run_id}


def train_seeds(plan: RunPlan, baseline: Baseline, seeds: int, seed: int, resume: bool,
                progress) -> tuple[list[dict], list[SeedResult], tuple[int, int]]:
    """Train and evaluate seeds seed … seed+seeds−1 -> (per-seed record entries, results, (trainable, total))."""
    from ..embedding.models import load_model

    lm, names, cfg = baseline.lm, plan.classnames, plan.cfg
    info = checkpoint_info(plan, baseline)
    per_seed, results, counts = [], [], (0, 0)
    for k, s in enumerate(range(seed, seed + seeds)):
        base = lm if k == 0 else load_model(plan.model, plan.spec.pretrained, device=plan.device, spec=plan.spec)
        train_ds = plan.splits.train
        if cfg.shots is not None or cfg.fraction is not None:
            train_ds = subset(train_ds, few_shot_subset(train_ds.labels, s, shots=cfg.shots, fraction=cfg.fraction,
                                                        classnames=names, num_classes=len(names)))
        torch.manual_seed(s)
        tuned = tune_model(base.model, plan.method, plan.options, embed_dim=info["embed_dim"],
                           logit_scale=lm.logit_scale, logit_bias=lm.logit_bias, class_embeddings=baseline.class_emb)
        counts = tuned.num_parameters()
        if progress is not None:
            progress("setup", counts[0], counts[1], {"trainable_params": counts[0], "total_params": counts[1],
                                                     "seed": s, "train_images": len(train_ds)})
        res = train_seed(tuned, train_ds, plan.splits.val, baseline.tokens, len(names), lm.preprocess_train,
                         lm.preprocess, cfg, seed=s, folder=seed_dir(plan.run_dir, s),
                         checkpoint_info={**info, "seed": s}, resume=resume, workers=plan.workers, progress=progress)
        per_seed.append(evaluate_seed(plan, baseline, tuned, res, progress))
        results.append(res)
        del tuned, base
        lm.model = None  # trained in place by the first seed; later seeds load the base afresh
        _release(plan.device)
    return per_seed, results, counts


def evaluate_seed(plan: RunPlan, baseline: Baseline, tuned: TunedModel, res: SeedResult, progress) -> dict:
    """One seed's record entry: its test accuracy and every other task's accuracy after training."""
    lm, ev, s = baseline.lm, plan.evaluation, res.seed
    kw = dict(batch_size=ev.batch_size, workers=plan.workers, progress=progress)
    cls = class_embeddings(tuned, baseline.tokens, len(plan.classnames))
    test_acc = accuracy(tuned, plan.splits.test, cls, lm.preprocess, use_probe=True, stage=f"seed {s} test",
                        **kw).value
    shifted = plan.splits.ood_test
    shifted_acc = accuracy(tuned, shifted, cls, lm.preprocess, use_probe=True, stage=f"seed {s} OOD test",
                           **kw).value if shifted is not None else None
    if plan.method == "probe":  # both towers frozen: the other tasks' zero-shot classifiers are unchanged
        ood_after = dict(baseline.ood_before)
    else:
        ood_after = {}
        for name, t in plan.others.items():
            other_cls = class_embeddings(tuned, baseline.other_tokens[name], len(t.data.classnames))
            ood_after[name] = accuracy(tuned, t.data, other_cls, lm.preprocess, use_probe=False,
                                       stage=f"seed {s} {name}", **kw).value
    return {"seed": s, "finetuned_acc": test_acc, "ood_test_acc": shifted_acc, "ood": ood_after,
            "best_epoch": res.best_epoch, "val_acc": res.best_val, "val_images": res.val_images,
            "train_images": res.train_images, "skipped": len(res.skipped),
            "resumed_epochs": res.resumed_epochs, "checkpoint": str(res.checkpoint),
            "seconds": res.seconds, "history": res.history}


# ---- the record ---------------------------------------------------------------------------------------

def build_record(plan: RunPlan, baseline: Baseline, per_seed: list[dict], counts: tuple[int, int], seeds: int,
                 seed: int, seconds: float) -> dict:
    """The run's record: the outcome over seeds (see `summarize_seeds`), the scores and what produced them."""
    splits = plan.splits
    outcome = summarize_seeds(baseline.accuracy, baseline.ood_before, per_seed)
    return {"run_id": plan.run_id, "model": plan.model, "pretrained": plan.spec.pretrained,
            "architecture": plan.spec.architecture, "method": plan.method, "task": plan.task,
            "data": str(splits.pool.root), "data_path": splits.pool.root_path,
            "embedding_set_id": baseline.embedding_set_id,
            "hparams": {**asdict(plan.cfg), **plan.options.relevant(plan.method), "seeds": seeds, "seed": seed,
                        "split_seed": plan.data.split_seed, "templates": plan.prompts, "test": splits.test_source,
                        "val": splits.val_source},
            "trainable_params": counts[0], "total_params": counts[1], **outcome, "scores": baseline.scores,
            "scores_from": plan.scores_from, "seconds": seconds, "checkpoint": _best_checkpoint(per_seed),
            "images": {"pool": len(splits.pool), "train": len(splits.train),
                       "val": len(splits.val) if splits.val else 0, "test": len(splits.test)},
            "per_seed": per_seed, "evals": plan.evals_key, "device": str(plan.device), "created": time.time(),
            **_test_splits(splits, baseline, outcome, per_seed), **versions()}


def _test_splits(splits, baseline: Baseline, outcome: dict, per_seed: list[dict]) -> dict:
    """WILDS: the in-domain (id_test) and out-of-domain (test) accuracies side by side, before and after."""
    if splits.ood_test is None:
        return {}
    after = sum(p["ood_test_acc"] for p in per_seed) / len(per_seed)
    return {"test_splits": {"id_test": {"before": baseline.accuracy, "after": outcome["finetuned_acc"]},
                            "test": {"before": baseline.shifted_test, "after": after}}}


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


def versions() -> dict:
    import open_clip

    from ... import __version__
    return {"iimm_version": __version__, "torch_version": torch.__version__, "open_clip_version": open_clip.__version__}


__all__ = ["FinetuneResult", "finetune", "EvalTask", "DataOptions", "EvalOptions", "Baseline", "zero_shot_baseline",
           "train_seeds", "build_record"]
