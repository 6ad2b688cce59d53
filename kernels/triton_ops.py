"""The Triton backend: the four ops of `kernels.reference`, each one fused kernel and its launcher.

Imported by `kernels.get_backend("triton")`. Launchers take NumPy arrays or tensors, run on the
rows' CUDA device (or on the CPU under `TRITON_INTERPRET=1`) and return exactly the reference's
NamedTuples and dtypes. `compile_for(arch)` builds every kernel variant for a GPU architecture
without a GPU (the interpreter accepts code the compiler would reject).
"""

from __future__ import annotations

import functools

import torch

from . import triton_all_pairs, triton_class_sums, triton_cross_reduce, triton_pairwise


def _on_rows_device(op):
    """Launch on the GPU that holds the rows: Triton takes its device and stream from the current CUDA
    device, which for rows on cuda:1 would otherwise be cuda:0."""
    @functools.wraps(op)
    def launch(rows, *args, **kwargs):
        if isinstance(rows, torch.Tensor) and rows.is_cuda:
            with torch.cuda.device(rows.device):
                return op(rows, *args, **kwargs)
        return op(rows, *args, **kwargs)
    return launch


class_sums = _on_rows_device(triton_class_sums.class_sums)
cross_reduce = _on_rows_device(triton_cross_reduce.cross_reduce)
pairwise_class_sums = _on_rows_device(triton_pairwise.pairwise_class_sums)
all_pairs_class_sums = _on_rows_device(triton_all_pairs.all_pairs_class_sums)

__all__ = ["all_pairs_class_sums", "class_sums", "cross_reduce", "pairwise_class_sums"]

# Row dtypes compile_for builds (quick: the first only); each kernel module lists its own variants.
COMPILE_DTYPES = ("fp16", "bf16", "fp32", "fp64")


def compile_for(arch: int = 90, quick: bool = False) -> list[str]:
    """Compile the kernel variants to a CUDA binary for compute capability `arch` without a GPU.

    Catches what the interpreter cannot (types, layouts, shared memory, control flow the compiler
    rejects). Not available under TRITON_INTERPRET=1. Returns one line per compiled variant.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_interpreted
    from .triton_common import kernels_interpreted

    if triton_interpreted() or kernels_interpreted():
        raise RuntimeError("compile_for needs the kernels built for a GPU; unset TRITON_INTERPRET")
    target = GPUTarget("cuda", arch, 32)
    dtypes = COMPILE_DTYPES[:1] if quick else COMPILE_DTYPES
    variants = [v for module in (triton_class_sums, triton_cross_reduce, triton_pairwise, triton_all_pairs)
                for v in module.compile_variants(dtypes, quick)]
    done = []
    for fn, sig, consts, cfg in variants:
        consts = {**consts, **(cfg.kwargs if cfg else {})}  # None pointer arguments are constexpr, as at launch
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages} if cfg else {}
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
        compiled = triton.compile(src, target=target, options=options)
        shown = {k: v for k, v in consts.items() if v is not None}
        done.append(f"{fn.__name__} {shown} shared={compiled.metadata.shared}")
    return done
