"""Low-rank adaptation (LoRA) computed out of place: the frozen weight is never written.

A `LowRankDelta` is registered as a `torch.nn.utils.parametrize` parametrization of a
projection weight `W: (out, in)`. Every read of the weight returns a new tensor
`W + s·B A` (restricted to chosen row blocks for a fused Q/K/V weight), built from
the untouched original, which parametrize keeps as `parametrizations.<name>.original`
with `requires_grad=False`. The reference code's defect — adding `B A` into the frozen
weight on every forward pass, so that the base weights drift — cannot happen here.

Two styles (`LORA_STYLES`): "paper", the IIMM paper's code, scales by a fixed s = 0.2 and draws
A ~ N(0, 0.02²); "peft", Hugging Face peft's convention, scales by s = α/r and draws A
Kaiming-uniform. B starts at zero in both, so the delta starts at 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .config import LORA_STYLES

PAPER_SCALE = 0.2
PAPER_INIT_STD = 0.02


class LowRankDelta(nn.Module):
    """Parametrization `W -> W + s·B_j A_j` on row blocks j of `W: (out, in)`.

    blocks: `(name, start, stop)` row ranges; `[("", 0, out)]` adapts the whole matrix, a
        fused `[q; k; v]` weight of 3·a rows uses `[("q", 0, a), ("v", 2a, 3a)]`.
    style "paper": s = 0.2, A_j: (r, in) ~ N(0, 0.02²); "peft": s = α/r, A_j Kaiming-uniform.
    B_j: (stop − start, r) zeros, so the delta starts at 0.
    """

    def __init__(self, weight: torch.Tensor, blocks: list[tuple[str, int, int]], rank: int, alpha: float,
                 style: str = "paper"):
        super().__init__()
        if style not in LORA_STYLES:
            raise ValueError(f"unknown LoRA style {style!r}; choose {' or '.join(LORA_STYLES)}")
        out_features, in_features = weight.shape
        self.rank, self.alpha, self.style = int(rank), float(alpha), style
        self.scale = PAPER_SCALE if style == "paper" else float(alpha) / int(rank)
        self.blocks = [(name, int(lo), int(hi)) for name, lo, hi in sorted(blocks, key=lambda b: b[1])]
        for name, lo, hi in self.blocks:
            if not 0 <= lo < hi <= out_features:
                raise ValueError(f"row block {name!r} [{lo}, {hi}) outside a weight of {out_features} rows")
            a = torch.empty(rank, in_features, dtype=torch.float32, device=weight.device)
            if style == "paper":
                nn.init.normal_(a, std=PAPER_INIT_STD)
            else:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b = torch.zeros(hi - lo, rank, dtype=torch.float32, device=weight.device)
            self.register_parameter(_param_name("lora_A", name), nn.Parameter(a.to(weight.dtype)))
            self.register_parameter(_param_name("lora_B", name), nn.Parameter(b.to(weight.dtype)))

    def delta(self, name: str) -> torch.Tensor:
        """(stop − start, in) the low-rank update of one block, already scaled."""
        a = getattr(self, _param_name("lora_A", name))
        b = getattr(self, _param_name("lora_B", name))
        return (b @ a) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        pieces, cursor = [], 0
        for name, lo, hi in self.blocks:
            if lo > cursor:
                pieces.append(weight[cursor:lo])
            pieces.append(weight[lo:hi] + self.delta(name).to(weight.dtype))
            cursor = hi
        if cursor < weight.shape[0]:
            pieces.append(weight[cursor:])
        return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]


def add_lora(owner: nn.Module, weight_name: str, blocks: list[tuple[str, int, int]] | None, rank: int,
             alpha: float, style: str = "paper") -> LowRankDelta:
    """Attach a LowRankDelta to `owner.<weight_name>`; blocks None adapts every row."""
    weight = getattr(owner, weight_name)
    if parametrize.is_parametrized(owner, weight_name):
        raise ValueError(f"{type(owner).__name__}.{weight_name} already carries a parametrization")
    delta = LowRankDelta(weight.detach(), blocks if blocks is not None else [("", 0, weight.shape[0])], rank, alpha,
                         style)
    parametrize.register_parametrization(owner, weight_name, delta)
    getattr(owner, "parametrizations")[weight_name].original.requires_grad_(False)
    return delta


def fused_qv_blocks(rows: int) -> list[tuple[str, int, int]]:
    """Row blocks of Q and V in a fused `[q; k; v]` weight of `rows` = 3·a rows."""
    if rows % 3:
        raise ValueError(f"a fused q/k/v weight needs a row count divisible by 3, got {rows}")
    a = rows // 3
    return [("q", 0, a), ("v", 2 * a, 3 * a)]


def _param_name(kind: str, block: str) -> str:
    return f"{kind}_{block}" if block else kind
