"""One streaming-statistics framework for every score: accumulators whose fields declare how they merge.

An `Accumulator` subclass declares its fields in `__init__` with `add_state(name, default, merge)`,
in the spirit of torchmetrics' `Metric.add_state(name, default, dist_reduce_fx)`:

- `merge="sum"`: the field of the union is the sum of the parts' fields (counts, sums, Grams about a
  fixed centre);
- `merge=callable(self, other) -> value`: any other parallel update, computed from both parts
  *before* any field changes (Chan et al.'s pairwise update of centred moments, see `GramStats`).

Its configuration (the keyword arguments that fix its shapes and meaning: C, D, metric, p, ...) is
given to `Accumulator.__init__` and travels in `state_dict` under `"<Kind>.<name>"` keys beside the
fields, so a state from another kind of statistic or another configuration is refused by
`load_state_dict`, and `merge` refuses another class or configuration, each with one line.
Context an accumulator reads but does not own (the class texts, the merged pass-1 statistics a
pass-2 statistic is measured against) is a constructor argument outside the configuration.

Fields are float64 (int64 for counts): torch tensors on the backend device for the embedding
scores, NumPy arrays for the baselines. `update(chunk)` adds one `engine.scoring.chunk.Chunk`;
`compute()` turns the statistics into what the finalisers read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import torch

from ...errors import InputError

Merge = Union[str, Callable[["Accumulator", "Accumulator"], Any]]


@dataclass(frozen=True)
class StateField:
    name: str
    merge: Merge


class Accumulator:
    """Base of every streamed statistic: `add_state`, `update`, `merge`, `compute`, `state_dict`."""

    def __init__(self, **config):
        self._config = dict(config)
        self._fields: dict[str, StateField] = {}

    # ---- declaration -----------------------------------------------------------------------------

    def add_state(self, name: str, default, merge: Merge = "sum") -> None:
        """Declare field `name` (a tensor or array, set as its initial value) and how parts of it merge."""
        if merge != "sum" and not callable(merge):
            raise ValueError(f"merge of {name!r} must be 'sum' or a callable, got {merge!r}")
        self._fields[name] = StateField(name, merge)
        setattr(self, name, default)

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def config(self) -> dict:
        """The configuration (JSON-like values) this accumulator was built with."""
        return dict(self._config)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self._fields)

    # ---- the stream --------------------------------------------------------------------------------

    def update(self, chunk) -> None:
        raise TypeError(f"{self.kind} is filled by its own update(); this one takes no chunk")

    def compute(self):
        """What the finalisers read; by default the accumulator itself (its fields are the statistics)."""
        return self

    # ---- merging -------------------------------------------------------------------------------------

    def check_compatible(self, other: "Accumulator") -> None:
        """InputError unless `other` is the same kind of statistic with the same configuration."""
        if type(other) is not type(self):
            raise InputError(f"cannot merge {other.kind} statistics into {self.kind}; merge only statistics of "
                             f"the same kind")
        if other._config != self._config:
            raise InputError(f"cannot merge {self.kind} statistics of configuration {_show(other._config)} into "
                             f"{_show(self._config)}; merge only statistics of the same task and model")

    def merge(self, other: "Accumulator") -> "Accumulator":
        """Add `other` (same class and configuration) into self; `other` is not changed. Returns self."""
        self.check_compatible(other)
        return self.merge_fields(other)

    def merge_fields(self, other: "Accumulator") -> "Accumulator":
        """`merge` without the compatibility check: for an `update` that merges in its chunk's own part."""
        new = {}
        for f in self._fields.values():      # every custom merge sees both parts before any field changes
            if f.merge != "sum":
                new[f.name] = f.merge(self, other)
        for f in self._fields.values():
            if f.merge == "sum":
                new[f.name] = _add(getattr(self, f.name), getattr(other, f.name))
        for name, value in new.items():
            setattr(self, name, value)
        return self

    # ---- persistence -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{field: a CPU copy (tensor or array), "<Kind>.<config name>": value}; safe to pickle or ship."""
        out = {name: _copy_out(getattr(self, name)) for name in self._fields}
        out.update({f"{self.kind}.{k}": v for k, v in self._config.items()})
        return out

    def load_state_dict(self, state: dict) -> "Accumulator":
        """Replace the fields by `state`'s; InputError when it is another kind, configuration or shape."""
        prefix = f"{self.kind}."
        theirs = {k for k in state if "." in k}
        if not theirs or any(not k.startswith(prefix) for k in theirs):
            other = sorted({k.split(".", 1)[0] for k in theirs}) or ["unnamed"]
            raise InputError(f"these are {'/'.join(other)} statistics, not {self.kind}; load only statistics of "
                             f"the same kind")
        config = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if config != self._config:
            raise InputError(f"{self.kind} statistics of configuration {_show(config)} cannot load into "
                             f"{_show(self._config)}; merge only statistics of the same task and model")
        for name in self._fields:
            if name not in state:
                raise InputError(f"{self.kind} statistics lack the field {name!r}; save them with state_dict()")
            setattr(self, name, _copy_in(state[name], getattr(self, name), name))
        return self


def _add(a, b):
    if isinstance(a, torch.Tensor):
        return a + torch.as_tensor(b).to(a.device, a.dtype)
    return a + np.asarray(b, dtype=np.asarray(a).dtype)


def _copy_out(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return np.array(value, copy=True)


def _copy_in(value, current, name: str):
    if isinstance(current, torch.Tensor):
        new = torch.as_tensor(value)
        shape, want = tuple(new.shape), tuple(current.shape)
    else:
        new = np.asarray(value, dtype=np.asarray(current).dtype)
        shape, want = new.shape, np.shape(current)
    if shape != want:
        raise InputError(f"statistics '{name}' have shape {shape}, expected {want}; merge only statistics of the "
                         f"same task and model")
    if isinstance(current, torch.Tensor):
        return new.to(current.device, current.dtype).clone()
    return new.copy() if isinstance(new, np.ndarray) and new.ndim else new[()]


def _show(config: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")"
