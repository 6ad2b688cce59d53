"""The Triton backend: the three ops of `kernels.reference`, each one fused kernel and its launcher.

Imported by `kernels.get_backend("triton")`. Launchers take NumPy arrays or tensors, run on the
rows' CUDA device (or on the CPU under `TRITON_INTERPRET=1`) and return exactly the reference's
NamedTuples and dtypes. `compile_for(arch)` builds every kernel variant for a GPU architecture
without a GPU (the interpreter accepts code the compiler would reject).
"""

from __future__ import annotations

import functools

import torch

from . import triton_class_sums, triton_cross_reduce, triton_pairwise


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

__all__ = ["class_sums", "cross_reduce", "pairwise_class_sums"]


def _signatures(quick: bool):
    """(kernel, signature, constexprs, config) for the kernel variants the launchers can produce."""
    from . import triton_settings as settings
    from .triton_class_sums import _class_sums_kernel, _merge_items_kernel
    from .triton_cross_reduce import _cross_reduce_kernel
    from .triton_pairwise import _pairwise_kernel, _row_norms_kernel

    dtypes = ["fp16"] if quick else ["fp16", "bf16", "fp32", "fp64"]
    parts = {"fp16": 2, "bf16": 3, "fp32": 1, "fp64": 1}
    for dt in dtypes:
        fp64 = dt == "fp64"
        cdt = "fp64" if fp64 else "fp32"
        prec = "ieee" if fp64 else "tf32x3"
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "order_ptr": "*i64", "item_start_ptr": "*i64",
               "item_end_ptr": "*i64", "part_sums_ptr": "*fp64", "part_sq_ptr": "*fp64", "part_bad_ptr": "*i64",
               "n": "i32", "D": "i32"}
        fitting = [c for c in settings.class_sums_configs()
                   if c.kwargs["BLOCK_N"] * 1024 <= settings.CLASS_SUMS_TILE_ELEMENTS]
        for cfg in fitting[:1] if quick else fitting:
            yield _class_sums_kernel.fn, sig, {"IS_FP64": fp64, "BLOCK_D": 1024}, cfg
        if dt == dtypes[0]:
            yield (_merge_items_kernel, {"part_sums_ptr": "*fp64", "first_item_ptr": "*i64", "item_count_ptr": "*i64",
                                         "sums_ptr": "*fp64", "D": "i32"}, {"BLOCK": 256}, None)
        sig = {"x_ptr": f"*{dt}", "stride_x": "i32", "order_ptr": "*i64", "labels_ptr": "*i64",
               "parts_ptr": f"*{dt}", "unscale_ptr": "*fp32", "scale_ptr": "*fp64", "valid_ptr": "*i8",
               "correct_ptr": "*fp64", "other_ptr": "*fp64", "rank_ptr": "*i32", "best_ptr": "*fp64",
               "sq_norm_ptr": "*fp64", "bad_ptr": "*i8", "n": "i32", "K": "i32", "D": "i32"}
        for one_tile in (True,) if quick else (True, False):
            # one tile: the zero-shot call (rows in order, no column scale); several: the silhouette call
            absent = ("order_ptr", "scale_ptr", "valid_ptr") if one_tile else ()
            absent += ("unscale_ptr",) if dt != "fp16" else ()
            consts = {"P": parts[dt], "GATHER": not one_tile, "HAS_UNSCALE": dt == "fp16", "HAS_SCALE": not one_tile,
                      "HAS_VALID": not one_tile, "ONE_TILE": one_tile, "IS_FP64": fp64, "UPCAST": False, "PREC": prec,
                      "BLOCK_K": 16 if one_tile else settings.CROSS_MAX_BLOCK_K, **{name: None for name in absent}}
            yield _cross_reduce_kernel.fn, sig, consts, settings.cross_reduce_configs()[0]
        sig = {"q_ptr": f"*{dt}", "stride_q": "i32", "k_ptr": f"*{dt}", "stride_k": "i32",
               "key_order_ptr": "*i64", "sorted_labels_ptr": "*i32", "q_denom_ptr": f"*{cdt}",
               "q_sq_ptr": f"*{cdt}", "k_denom_ptr": f"*{cdt}", "k_sq_ptr": f"*{cdt}", "sums_ptr": "*fp64",
               "counts_ptr": "*i64",
               "m": "i32", "n": "i32", "C": "i32", "D": "i32", "keys_per_split": "i32", "query_offset": "i32",
               "key_offset": "i32", "p": "fp32", "zero_eps": "fp32"}
        for power in (1,) if quick else (0, 1, 2):
            consts = {"EUCLIDEAN": power != 0, "POWER": power, "IS_FP64": fp64, "UPCAST": False, "PREC": prec,
                      "NEAR_SQ_DIST": settings.NEAR_SQ_DIST}
            yield _pairwise_kernel.fn, sig, consts, settings.pairwise_configs()[0]
        block_r, block_dk = settings.ROW_NORMS_BLOCK
        yield (_row_norms_kernel, {"x_ptr": f"*{dt}", "stride_x": "i32", "denom_ptr": f"*{cdt}", "sq_ptr": f"*{cdt}",
                                   "n": "i32", "D": "i32"},
               {"IS_FP64": fp64, "BLOCK_R": block_r, "BLOCK_DK": block_dk}, None)


def compile_for(arch: int = 90, quick: bool = False) -> list[str]:
    """Compile the kernel variants to a CUDA binary for compute capability `arch` without a GPU.

    Catches what the interpreter cannot (types, layouts, shared memory, control flow the compiler
    rejects). Not available under TRITON_INTERPRET=1. Returns one line per compiled variant.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_settings as settings

    if settings.INTERPRETED:
        raise RuntimeError("compile_for needs the kernels built for a GPU; unset TRITON_INTERPRET")
    target = GPUTarget("cuda", arch, 32)
    done = []
    for fn, sig, consts, cfg in _signatures(quick):
        consts = {**consts, **(cfg.kwargs if cfg else {})}  # None pointer arguments are constexpr, as at launch
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages} if cfg else {}
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
        compiled = triton.compile(src, target=target, options=options)
        shown = {k: v for k, v in consts.items() if v is not None}
        done.append(f"{fn.__name__} {shown} shared={compiled.metadata.shared}")
    return done
