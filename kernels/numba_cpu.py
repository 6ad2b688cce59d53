"""The numba CPU backend: the three ops of `kernels.reference`, fused over the rows, on every core.

Same signatures, results and dtypes as `kernels.reference` (float64 sums, int64 counts,
int32 ranks, first_bad as a Python int). Rows arrive as NumPy arrays (memory-mapped,
read-only, float16/float32/float64) or CPU tensors (bfloat16 is widened to float32);
each row is read from memory once, normalised on the fly and reduced in the same loop.

- `class_sums`: `kernels.numba_class_sums` (pass 1: per-class sums, counts, squared norms);
- `cross_reduce`: `kernels.numba_cross_reduce` (pass 2: per-row reductions against a (K, D) matrix);
- `pairwise_class_sums`: `kernels.numba_pairwise` (tiled all-pairs distances per key class);
- `all_pairs_class_sums`: `kernels.numba_all_pairs` (all pairs of one row set, SGEMM tiles added to both sides).

Kernels compile on first use per input dtype and are cached beside the modules
(`cache=True`); numba's thread count (`NUMBA_NUM_THREADS`, `numba.set_num_threads`) sets the cores used.
"""

from .numba_all_pairs import all_pairs_class_sums
from .numba_class_sums import class_sums
from .numba_cross_reduce import cross_reduce
from .numba_pairwise import pairwise_class_sums

__all__ = ["all_pairs_class_sums", "class_sums", "cross_reduce", "pairwise_class_sums"]
