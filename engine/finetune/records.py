"""Fine-tune records and checkpoints in the store, written atomically.

Layout under the store root:

    finetune/<run id>/record.json                  the outcome of the run (all seeds)
    finetune/<run id>/seed-<s>/checkpoint.safetensors   trained parameters of the best epoch
    finetune/<run id>/seed-<s>/last.safetensors         resume state: parameters, optimizer, progress

Each written record is also a row of the registry's `finetune_runs` table (run id, model, method,
task, embedding set, accuracies, gain, forgetting, record path), for SQL over many runs.
The run id hashes everything the training depends on (model weights, data, splits,
method, hyperparameters), so `--resume` finds an interrupted run by its configuration.
The --eval tasks are not part of it: a rerun with other --eval tasks and --resume
re-evaluates the trained checkpoints and rewrites the record.
Checkpoints hold only the trained parameters (for full fine-tuning, both towers); their
safetensors metadata names the model, method and options, which is all
`load_finetuned` needs to rebuild the fine-tuned model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ...errors import InputError
from ..files import write_atomic, write_json_atomic
from ..embedding.store import ID_CHARS, open_store
from ..hashing import hash_json

FINETUNE_RUNS_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS finetune_runs (run_id TEXT PRIMARY KEY, model TEXT NOT NULL, pretrained TEXT, "
    "method TEXT NOT NULL, task TEXT, embedding_set_id TEXT REFERENCES embedding_sets(id), zeroshot_acc REAL, "
    "finetuned_acc REAL, gain REAL, normalized_gain REAL, forgetting REAL, path TEXT NOT NULL, created REAL NOT NULL)",
]
FINETUNE_DIR = "finetune"
RECORD_FILE = "record.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
RESUME_FILE = "last.safetensors"
CHECKPOINT_FORMAT = "iimm-finetune-checkpoint/1"
RESUME_FORMAT = "iimm-finetune-resume/1"


def finetune_root(store=None) -> Path:
    """`<store root>/finetune` for a store given as None (the default root), a path or a `Store`."""
    root = open_store(store).root / FINETUNE_DIR
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_id_of(config: dict) -> str:
    """A run's id: 24 hex digits of the hash of its training configuration."""
    return hash_json(config)[:ID_CHARS]


def seed_dir(run_dir: Path, seed: int) -> Path:
    folder = Path(run_dir) / f"seed-{int(seed)}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_record(run_dir: Path, record: dict, store=None) -> Path:
    """Write `record.json` atomically and index it in the store's `finetune_runs` table.

    Non-finite numbers are refused (they would not be valid JSON). store: the Store (or root) that
    holds `run_dir`; None is the default store.
    """
    _check_finite(record, "record")
    path = Path(run_dir) / RECORD_FILE
    write_json_atomic(path, record)
    index_record(record, path, store)
    return path


def index_record(record: dict, path: Path, store=None) -> None:
    """Insert or refresh the record's row of the registry's `finetune_runs` table."""
    st = open_store(store)
    st.migrate("finetune_runs", 1, FINETUNE_RUNS_SCHEMA)
    with st.connect() as con:
        con.execute("INSERT OR REPLACE INTO finetune_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record["run_id"], record["model"], record.get("pretrained"), record["method"], record.get("task"),
                     record.get("embedding_set_id"), record["zeroshot_acc"], record["finetuned_acc"], record["gain"],
                     record.get("normalized_gain"), record.get("forgetting"), str(path), record["created"]))


def read_record(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read fine-tune record {path}: {exc}; delete the run folder and rerun it") from exc


def list_finetune_records(store_root=None, model: str | None = None, method: str | None = None,
                          task: str | None = None) -> list[dict]:
    """Every finished fine-tune record in the store, oldest first, optionally filtered.

    store_root: None (the default store), a path or a `Store`. Filters compare equal to the
    record's `model`, `method` and `task` fields. Each record carries `run_id` and `path`.
    """
    root = finetune_root(store_root)
    out = []
    for path in sorted(root.glob(f"*/{RECORD_FILE}")):
        rec = read_record(path)
        if model is not None and rec.get("model") != model:
            continue
        if method is not None and rec.get("method") != method:
            continue
        if task is not None and rec.get("task") != task:
            continue
        rec.setdefault("run_id", path.parent.name)
        rec["path"] = str(path)
        out.append(rec)
    return sorted(out, key=lambda r: (r.get("created", 0.0), r["run_id"]))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (tensors copied to contiguous CPU memory)."""
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_atomic(Path(path), save(flat, metadata={k: str(v) for k, v in metadata.items()}))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path), device=str(device)), metadata
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot read {path}: {exc}; the file is damaged, delete it and rerun") from exc


def save_checkpoint(path: Path, trainable: dict[str, torch.Tensor], info: dict) -> None:
    """The trained parameters of a run with what rebuilds the model: info is JSON-able (model, method, …)."""
    save_tensors(path, trainable, {"format": CHECKPOINT_FORMAT, "info": json.dumps(info, sort_keys=True)})


def read_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(trained parameters by name, info) of a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}; pass the `checkpoint` path of a fine-tune record")
    tensors, metadata = load_tensors(path, device)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not an iimm fine-tune checkpoint (format {metadata.get('format')!r})")
    return tensors, json.loads(metadata["info"])


def load_trainable(tuned, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy saved tensors into a TunedModel's trainable parameters; names must match exactly."""
    params = tuned.named_trainable()
    missing = sorted(set(params) - set(tensors))
    extra = sorted(set(tensors) - set(params))
    if missing or extra:
        first = (missing or extra)[0]
        raise InputError(f"{where} does not match this model and method ({len(missing)} missing, {len(extra)} "
                         f"unexpected parameters, e.g. {first}); it belongs to another run")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise InputError(f"{where}: parameter {name} has shape {tuple(tensors[name].shape)}, the model "
                                 f"expects {tuple(p.shape)}; it belongs to another model")
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))


def load_finetuned(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a fine-tuned model from a checkpoint -> (TunedModel, LoadedModel of its base, info)."""
    from ..embedding.models import load_model
    from .methods import MethodOptions, tune_model

    tensors, info = read_checkpoint(checkpoint)
    lm = load_model(info["model"], info.get("pretrained"), device=device)
    # checkpoints written before the readings were options trained LoRA in peft's style
    options = {"lora_style": "peft", **info.get("options", {})}
    tuned = tune_model(lm.model, info["method"], MethodOptions(**options),
                       embed_dim=info["embed_dim"], logit_scale=info["logit_scale"], logit_bias=info.get("logit_bias"),
                       num_classes=info.get("num_classes"))
    load_trainable(tuned, tensors, str(checkpoint))
    return tuned.eval(), lm, info


def _check_finite(obj, where: str) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise InputError(f"{where} is {obj}; a fine-tune record holds only finite numbers (the run diverged: "
                         f"lower --lr)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")
