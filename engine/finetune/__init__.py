"""Reference fine-tuning: six methods, in-domain and out-of-domain accuracy, few-shot runs, records.

`finetune(model, data, method, ...)` runs a fine-tune the way the papers did and keeps its
record in the store; `list_finetune_records` reads the records back (for calibration).
"""

from .evaluate import Accuracy, accuracy, outcome, summarize_seeds
from .methods import METHODS, MethodOptions, TunedModel, base_state_dict, trainable_parameters, tune_model
from .records import list_finetune_records, load_finetuned, read_checkpoint
from .plan import DataOptions, EvalOptions, EvalTask
from .run import FinetuneResult, finetune
from .subsets import TaskSplits, few_shot_subset, split_task, stratified_split
from .trainer import DEFAULT_LR, TrainConfig, learning_rate

__all__ = ["finetune", "FinetuneResult", "EvalTask", "DataOptions", "EvalOptions", "METHODS", "MethodOptions",
           "TrainConfig", "DEFAULT_LR", "TunedModel", "tune_model", "trainable_parameters", "base_state_dict",
           "list_finetune_records", "load_finetuned", "read_checkpoint", "Accuracy", "accuracy", "outcome",
           "summarize_seeds", "TaskSplits", "split_task", "few_shot_subset", "stratified_split", "learning_rate"]
