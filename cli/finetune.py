"""`iimm finetune`: a reference fine-tune of a model on a task, with its record kept in the store."""

from __future__ import annotations

import click

from ..errors import InputError
from ..engine.finetune.config import METHODS, DataOptions, EvalOptions
from .commands import command
from .device_options import backend_option, device_option
from .extract_options import extraction_options
from .progress import ProgressBar
from .training_options import TRAIN_BATCH_DEFAULT, training_options
from .render import emit, to_json, writable_path


class TrainingProgress(ProgressBar):
    """`ProgressBar` plus the training lines: the trainable-parameter count (always), one line per
    finished epoch, and loss and accuracy as the bar's postfix."""

    def __init__(self, method: str, enabled: bool = True):
        super().__init__(unit="it", enabled=enabled)
        self.method = method

    def __call__(self, stage: str, done: int, total: int, metrics: dict | None = None) -> None:
        m = metrics or {}
        if stage == "task":  # calibrate: the next (task, method) run
            self.close()
            self.method = f"{m['task']} ({m['method']})"
            click.echo(f"iimm: run {done}/{total}: {m['task']} with {m['method']}", err=True)
        elif stage == "resuming":
            self.close()
            if m.get("complete"):
                what = f"seed {m.get('seed')} finished its {total} epochs there and is evaluated again"
            else:
                what = f"seed {m.get('seed')} continues after epoch {done}/{total}"
            click.echo(f"iimm: resuming the interrupted identical run {m.get('run_id')}: {what} (--restart to "
                       f"train afresh)", err=True)
        elif stage == "warning":
            self.close()
            click.echo(f"iimm: warning: {m['message']}", err=True)
        elif stage == "setup":
            self.close()
            share = 100.0 * done / total if total else 0.0
            click.echo(f"iimm: {self.method}: {done:,} trainable parameters of {total:,} ({share:.3g}%); seed "
                       f"{m.get('seed')}, {m.get('train_images')} training images", err=True)
        elif stage == "reused":
            self.close()
            click.echo(f"iimm: {self.method}: reused the finished run {m.get('run_id')} from the store", err=True)
        elif stage == "epoch finished":
            if self.enabled:
                self.close()
                val = f", val acc {m['val_acc']:.4f}" if m.get("val_acc") is not None else ""
                mark = " *" if m.get("best") else ""
                click.echo(f"seed {m.get('seed')} epoch {done}/{total}: loss {m['train_loss']:.4f}, train acc "
                           f"{m['train_acc']:.4f}{val}{mark}", err=True)
        else:
            super().__call__(stage, done, total)
            if self.enabled and "loss" in m and self._bar is not None:
                self._bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['acc']:.3f}", refresh=False)


def record_table(record: dict) -> str:
    """The record as a two-column table for people."""
    std = record.get("std", {})

    def acc(value, spread=None):
        return f"{value:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")

    model = record["model"] if record["architecture"] == record["model"] else \
        f"{record['model']} ({record['architecture']})"
    rows = [["model", model],
            ["method", f"{record['method']}: {record['trainable_params']:,} trainable of {record['total_params']:,}"],
            ["task", f"{record['task']}  (train {record['images']['train']}, val {record['images']['val']}, "
                     f"test {record['images']['test']})"],
            ["zero-shot accuracy", acc(record["zeroshot_acc"])],
            ["fine-tuned accuracy", acc(record["finetuned_acc"], std.get("finetuned_acc"))],
            ["gain", f"{record['gain']:+.4f}"],
            ["normalized gain", "n/a (zero-shot accuracy is 1)" if record["normalized_gain"] is None
             else f"{record['normalized_gain']:+.4f}"]]
    for name, v in record["ood"].items():
        change = f"{v['before']:.4f} → {v['after']:.4f} ({v['after'] - v['before']:+.4f})"
        rows.append([f"{name} before → after", change])
    if record["forgetting"] is not None:
        rows.append(["forgetting", f"{record['forgetting']:+.4f}  (mean after − before: below 0 is forgotten)"])
    if "iimm" in record["scores"]:
        rows.append(["iimm (zero-shot)", f"{record['scores']['iimm']:.6f}"])
    seeds = record["per_seed"]
    rows += [["seed" if len(seeds) == 1 else "seeds", ", ".join(str(p["seed"]) for p in seeds)],
             ["best epoch", ", ".join(str(p["best_epoch"]) for p in seeds)],
             ["checkpoint", record["checkpoint"]],
             ["record", record.get("path", "")],
             ["seconds", f"{record['seconds']:.1f}"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@command("finetune")
@extraction_options
@training_options
@click.option("--method", type=click.Choice(METHODS), required=True,
              help="full, bitfit (biases), attention (A-CLIP: Q/K/V input projections), lora (Q and V), "
                   "adapter (CLIP-Adapter) or probe (linear head on frozen image features); see docs/finetuning.md.")
@click.option("--test", "test_path",
              help="Test images with the training classes (folder or manifest).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Hold out this share of each class of --data as the test split.")
@click.option("--eval", "eval_paths", multiple=True,
              help="Another task (its own classes) measured before and after: forgetting. Repeatable.")
@click.option("--ood-val",
              help="Out-of-domain validation images with the training classes (for --select-on ood).")
@click.option("--task", help="Task name in the record [default: the name of --data].")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run with the same settings (the default; says so when it does).")
@click.option("--restart", is_flag=True,
              help="Discard what an identical earlier run left (checkpoints, resume state) and train afresh.")
@click.option("--reuse", is_flag=True,
              help="Print the stored record of a finished run with the same settings and --eval tasks instead of "
                   "training again.")
@device_option()
@backend_option("Backend of the zero-shot scores.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=writable_path,
              help="Write the result here instead of stdout.")
@click.option("--progress/--no-progress", default=True, help="Progress bars and epoch lines on stderr.")
def finetune(extract, training, method, test_path, test_fraction, eval_paths, ood_val, task, resume, restart, reuse,
             device, backend, fmt, output, progress):
    """--batch-size is the training batch (default 128, the papers') and the encoding batch.
    The record (JSON) and the checkpoints stay in the store (<store>/finetune/<run id>/),
    where calibration reads them back. An interrupted identical run continues from its last finished
    epoch (--restart discards it).
    """
    from ..engine.finetune import finetune as run_finetune

    if resume and restart:
        raise InputError("--resume and --restart contradict each other; pass one (resuming is the default)")
    if not extract.given:
        raise InputError("nothing to fine-tune; pass --model M --data PATH --method METHOD")
    extract.check()
    cfg = training.config(extract.batch_size or TRAIN_BATCH_DEFAULT)
    options = training.method_options()
    if options.train_blocks is not None and method != "attention":
        raise InputError(f"--train-blocks chooses the blocks of --method attention; drop it for --method {method}")
    kw = extract.embed_kwargs()
    data_options = DataOptions(test=test_path, test_fraction=test_fraction, evals=eval_paths, ood_val=ood_val,
                               templates=kw["templates"], template_file=kw["template_file"],
                               template_set=kw["template_set"], classnames=kw["classnames"], split=kw["split"],
                               domain=kw["domain"], task=task, split_seed=training.split_seed)
    evaluation = EvalOptions(dtype=kw["dtype"], use_cache=kw["use_cache"], max_skip_frac=kw["max_skip_frac"],
                             batch_size=kw["batch_size"], score_backend=backend)
    with TrainingProgress(method, enabled=progress) as bar:
        result = run_finetune(extract.model, extract.data, method, pretrained=kw["pretrained"], config=cfg,
                              options=options, data_options=data_options, evaluation=evaluation,
                              seeds=training.seeds, seed=training.seed, device=device, workers=kw["workers"],
                              store=kw["store"], restart=restart, reuse=reuse, progress=bar)
    record = {**result.record, "path": str(result.run_dir / "record.json")}
    emit(to_json(record) if fmt == "json" else record_table(record), output)
