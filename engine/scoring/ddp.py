"""Scoring inside a torchrun / DDP job: combine each rank's accumulators across the process group.

Each rank feeds its own rows (its `DistributedSampler` share) to its accumulators with
`update`; `all_reduce_accumulators` then leaves every rank holding the statistics of all
rows. Accumulators whose fields all merge by addition and are torch tensors are summed in
place by `all_reduce` (one collective per field, no copy through Python); the others (the
baselines' NumPy statistics, the Gram statistics' pairwise update) are gathered as
`state_dict`s and merged with their own `merge`, in rank order, so every rank gets the same numbers.

    torch.distributed.init_process_group("nccl")
    stats = ClassStats(num_classes, dim, device)
    for start, rows, labels in my_rows:          # start: the rows' global index
        stats.update(Chunk(None, labels, start, rows=rows, backend=backend))
    all_reduce_accumulators([stats])
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from .accumulator import Accumulator


def is_additive(acc) -> bool:
    """True when every field of `acc` is a torch tensor merged by addition (the embedding statistics)."""
    return (isinstance(acc, Accumulator) and type(acc).merge is Accumulator.merge
            and all(f.merge == "sum" and isinstance(getattr(acc, f.name), torch.Tensor) for f in acc._fields.values()))


def all_reduce_accumulators(accumulators: Sequence, group=None) -> None:
    """Replace every accumulator's statistics, on every rank, by their merge over the ranks of `group`.

    accumulators: the same accumulators (same classes, same configuration, same order) on every rank.
    """
    import torch.distributed as dist

    others = []
    for acc in accumulators:
        if is_additive(acc):
            for name in acc.field_names:
                value = getattr(acc, name).contiguous()
                dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
                setattr(acc, name, value)
        else:
            others.append(acc)
    if not others:
        return
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, [acc.state_dict() for acc in others], group=group)
    for k, acc in enumerate(others):
        template = copy.deepcopy(acc)
        total = copy.deepcopy(template).load_state_dict(gathered[0][k])
        for states in gathered[1:]:
            total.merge(copy.deepcopy(template).load_state_dict(states[k]))
        acc.load_state_dict(total.state_dict())
