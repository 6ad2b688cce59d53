"""Compute backends: the same three ops (class sums, cross reduce, pairwise) on different engines.

- `torch`: `kernels.reference`, plain PyTorch on any device; the oracle.
- `numba`: `kernels.numba_cpu`, fused single-read loops over the rows on every CPU core.
- `triton`: `kernels.triton_*`, fused GPU kernels (CPU only under `TRITON_INTERPRET=1`).

`get_backend("auto")` picks Triton on a CUDA device, else numba on the CPU, else torch;
`IIMM_BACKEND` overrides "auto". An explicitly requested backend that cannot run
raises `BackendUnavailable`, never falls back silently.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import BackendUnavailable, InputError

if TYPE_CHECKING:
    import torch

    from .reference import AllPairsSums, ClassSums, CrossReduce, PairwiseSums

# torch is imported where a backend is built, not here: the CLI reads BACKENDS for its help without torch.
BACKENDS = ("torch", "numba", "triton")
ROW_DTYPES = ("float16", "bfloat16", "float32")  # storage dtypes of the rows every backend reads


@dataclass(frozen=True)
class Backend:
    """A named set of ops bound to a device; see `kernels.reference` for the op contract."""

    name: str
    device: torch.device
    class_sums: Callable[..., ClassSums]
    cross_reduce: Callable[..., CrossReduce]
    pairwise_class_sums: Callable[..., PairwiseSums]
    all_pairs_class_sums: Callable[..., AllPairsSums]

    def tensor(self, a) -> torch.Tensor:
        """A NumPy array or tensor on this backend's device (zero-copy on the CPU)."""
        from .reference import as_tensor

        return as_tensor(a, self.device)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None) is the first CUDA device when one is usable, else the CPU."""
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"unknown device {device!r}; use --device auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} requested but no CUDA GPU is visible; use --device cpu")
    return dev


def triton_interpreted() -> bool:
    """Whether `TRITON_INTERPRET` asks for the CPU interpreter, read now: the one place iimm reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def get_backend(name: str = "auto", device: str | torch.device | None = None) -> Backend:
    """Return the backend `name` ("auto" | "torch" | "numba" | "triton") on `device`."""
    from . import reference

    name = (name or "auto").lower()
    if name == "auto":
        name = os.environ.get("IIMM_BACKEND", "auto").lower() or "auto"
    dev = resolve_device(device)
    if name == "auto":
        if dev.type == "cuda" and _importable("triton"):
            name = "triton"
        elif dev.type == "cpu" and _importable("numba"):
            name = "numba"
        else:
            name = "torch"
    if name == "torch":
        return Backend("torch", dev, reference.class_sums, reference.cross_reduce, reference.pairwise_class_sums,
                       reference.all_pairs_class_sums)
    if name == "numba":
        return _numba_backend(dev)
    if name == "triton":
        return _triton_backend(dev)
    raise InputError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def _numba_backend(dev: torch.device) -> Backend:
    if dev.type != "cpu":
        raise BackendUnavailable(f"the numba backend runs on the CPU only, not on {dev}; use --device cpu "
                                 f"or --backend triton/torch")
    try:
        from . import numba_cpu
    except ImportError as exc:
        raise BackendUnavailable(f"the numba backend needs numba ({exc}); pip install numba, "
                                 f"or use --backend torch") from exc
    return Backend("numba", dev, numba_cpu.class_sums, numba_cpu.cross_reduce, numba_cpu.pairwise_class_sums,
                   numba_cpu.all_pairs_class_sums)


def _triton_backend(dev: torch.device) -> Backend:
    if dev.type != "cuda" and not triton_interpreted():
        raise BackendUnavailable("the triton backend needs a CUDA GPU and none is in use; use --backend torch "
                                 "(or set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly, for tests)")
    try:
        from . import triton_ops
    except ImportError as exc:
        raise BackendUnavailable(f"the triton backend cannot load ({exc}); pip install triton, "
                                 f"or use --backend torch") from exc
    return Backend("triton", dev, triton_ops.class_sums, triton_ops.cross_reduce, triton_ops.pairwise_class_sums,
                   triton_ops.all_pairs_class_sums)
