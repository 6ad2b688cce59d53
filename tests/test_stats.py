"""Statistics merge by addition: halves scored separately give the scores of the whole."""

import numpy as np
import pytest
import torch

from iimm.engine import ClassStats, EmbeddingSet, InputError, score
from iimm.engine.scoring.scores import finalize_linear, run_pass1, run_pass2
from iimm.kernels import get_backend
from synthetic import structured

PASS2 = {"zeroshot", "silhouette_class", "modality"}


def halves(seed=0):
    x, y, t = structured(seed, 180, 29, 5)
    whole = EmbeddingSet.from_arrays(x, y, t)
    return whole, EmbeddingSet.from_arrays(x[:70], y[:70], t), EmbeddingSet.from_arrays(x[70:], y[70:], t)


def test_pass1_merge_equals_whole():
    be = get_backend("torch")
    whole, a, b = halves()
    merged = run_pass1(a, be, 16).merge(run_pass1(b, be, 16))
    ref = run_pass1(whole, be, 1000)
    for name in ("sums", "counts", "sq_norm_sum"):
        torch.testing.assert_close(getattr(merged, name), getattr(ref, name), rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_then_two_pass_merge_gives_whole_scores():
    be = get_backend("torch")
    whole, a, b = halves(1)
    text = torch.as_tensor(whole.text)
    # each worker: pass 1 on its rows, ship the state; the driver merges and broadcasts
    state_a, state_b = run_pass1(a, be, 16).state_dict(), run_pass1(b, be, 16).state_dict()
    merged = ClassStats(whole.c, whole.d).load_state_dict(state_a)
    merged.merge(ClassStats(whole.c, whole.d).load_state_dict(state_b))
    p2a = run_pass2(a, be, 16, PASS2, merged, text)
    p2b = run_pass2(b, be, 16, PASS2, merged, text)
    for key in p2a:
        shipped = run_pass2(b, be, 16, {key}, merged, text)[key]
        shipped.load_state_dict(p2b[key].state_dict())
        p2a[key].merge(shipped)
    got = finalize_linear(merged, text, p2a)
    want = score(whole, [k for k in got], backend="torch").scores
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-7, abs=1e-12), key  # chunking changes fp32 gemm rounding


def test_load_state_dict_rejects_other_shapes():
    stats = ClassStats(3, 4)
    with pytest.raises(InputError, match="same task and model"):
        stats.load_state_dict(ClassStats(3, 5).state_dict())


def test_merge_does_not_alias_inputs():
    be = get_backend("torch")
    _, a, b = halves(2)
    sa, sb = run_pass1(a, be, 32), run_pass1(b, be, 32)
    before = sb.sums.clone()
    sa.merge(sb)
    assert torch.equal(sb.sums, before)
    assert np.isclose(float(sa.counts.sum()), 180)


def test_bad_row_error_reads_tensors_of_any_dtype():
    """The bad-row message is built from the offending row as the backend holds it (a bf16 or GPU tensor)."""
    from iimm.errors import bad_row_error

    assert "row 3 has NaN or Inf" in str(bad_row_error(3, torch.tensor([0.0, float("nan")], dtype=torch.bfloat16)))
    assert "row 4 is all zeros" in str(bad_row_error(4, torch.zeros(3, dtype=torch.bfloat16)))
