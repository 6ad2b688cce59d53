"""Reference fine-tuning: six methods, in-domain and out-of-domain accuracy, few-shot runs, records.

`finetune(model, data, method, ...)` runs a fine-tune the way the papers did and keeps its
record in the store; `list_finetune_records` reads the records back (for calibration).
Names load on first use (PEP 562): the options in `config` are read without importing torch.
"""

from __future__ import annotations

import importlib

from .config import DEFAULT_LR, METHODS, DataOptions, EvalOptions, MethodOptions, TrainConfig

_EXPORTS = {
    ".evaluate": ["Accuracy", "accuracy", "outcome", "summarize_seeds"],
    ".methods": ["TunedModel", "base_state_dict", "trainable_parameters", "tune_model"],
    ".records": ["list_finetune_records", "load_finetuned", "read_checkpoint"],
    ".plan": ["EvalTask"],
    ".run": ["FinetuneResult", "finetune"],
    ".subsets": ["TaskSplits", "few_shot_subset", "split_task", "stratified_split"],
    ".trainer": ["learning_rate"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["DEFAULT_LR", "METHODS", "DataOptions", "EvalOptions", "MethodOptions", "TrainConfig", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
