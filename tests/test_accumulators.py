"""The one statistics framework: any split of the rows into units and any merge tree give the whole set's
statistics (every accumulator, embedding scores' and baselines'), configurations are checked, and the
pass driver reads the rows once per pass for every score."""

import dataclasses

import numpy as np
import pytest
import torch

from iimm.engine import EmbeddingSet, InputError, score
from iimm.engine.scoring.accumulator import Accumulator
from iimm.engine.scoring.baseline_stats import ClassScatterStats, GramStats, ZeroShotJointStats
from iimm.engine.scoring.options import ScoreOptions
from iimm.engine.scoring.passes import PassResult, ScorePlan, run_pass
from iimm.engine.scoring.registry import REGISTRY, STATISTICS, resolve_keys
from iimm.engine.scoring.stats import ClassStats, ZeroShotStats
from iimm.kernels import get_backend
from synthetic import structured

STREAMED = [k for k in resolve_keys("everything") if not REGISTRY[k].quadratic]
BUDGET = 2 * 8 * 12 * 12      # two classes' 12×12 Grams per TransRate group: three groups, three passes


def task(seed):
    x, y, t = structured(seed, 150, 12, 6, dtype=np.float64)  # float64 rows: no fp32 GEMM rounding by chunk
    return EmbeddingSet.from_arrays(x, y, t)


def fields(acc):
    return {name: np.asarray(torch.as_tensor(v).double() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            for name, v in acc.state_dict().items() if name in acc.field_names}


def assert_same(got, want, where):
    if isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
        return
    assert got.state_dict().keys() == want.state_dict().keys(), where
    for name, value in fields(want).items():
        np.testing.assert_allclose(fields(got)[name], value, rtol=1e-12, atol=1e-12, err_msg=f"{where}.{name}")


def random_units(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 7), replace=False))
    return list(zip([0, *cuts], [*cuts, n]))


def merge_tree(rng, plan, k, parts):
    """Merge the units' shipped states pairwise in a random tree shape (random pairs, random order)."""
    pool = [PassResult({name: plan.new_accumulators_of(k, name).load_state_dict(state)
                        for name, state in part.items()}) for part in parts]
    while len(pool) > 1:
        i, j = sorted(rng.choice(len(pool), size=2, replace=False))
        right, left = pool.pop(j), pool.pop(i)
        for name in left:
            left[name].merge(right[name])
        pool.append(left)
    return pool[0]


@pytest.mark.parametrize("seed", range(4))
def test_random_splits_and_merge_trees_give_the_whole_sets_statistics(seed):
    rng = np.random.default_rng(seed)
    es = task(seed)
    be = get_backend("torch")
    options = ScoreOptions(gram_budget_bytes=BUDGET)
    whole = ScorePlan(es, STREAMED, options)
    split = ScorePlan(es, STREAMED, options)
    assert whole.num_passes == 4 and {n for p in whole.layout for n, _ in p} == set(STATISTICS) - {"gram"}
    for k in range(whole.num_passes):
        whole.add_pass(k, [run_pass(whole, k, es, be, chunk_rows=1000)])
        units = random_units(rng, es.n)
        chunk = int(rng.integers(1, 40))
        shipped = [run_pass(split, k, es, be, chunk, rows=unit).state_dicts() for unit in units]
        split.add_pass(k, [merge_tree(rng, split, k, shipped)])
        for name, _ in whole.layout[k]:
            assert_same(split.stat(name), whole.stat(name), f"pass {k} {name} units {units}")
    want, got = whole.finalise(es, be), split.finalise(es, be)
    for key in STREAMED:
        assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-12), key


def test_state_dicts_merge_like_accumulators():
    """add_pass takes the units' state dicts directly (what a remote executor ships) in any order."""
    es = task(7)
    be = get_backend("torch")
    keys = ["iimm", "silhouette_class", "zeroshot_top1", "leep", "sfda", "hscore"]
    whole, split = ScorePlan(es, keys), ScorePlan(es, keys)
    for k in range(whole.num_passes):
        whole.add_pass(k, [run_pass(whole, k, es, be, 64)])
        split.add_pass(k, [run_pass(split, k, es, be, 16, rows=r).state_dicts() for r in [(90, 150), (0, 33),
                                                                                          (33, 90)]])
    assert split.finalise(es, be) == pytest.approx(whole.finalise(es, be), rel=1e-10, abs=1e-12)


def test_merge_refuses_another_class_or_configuration_in_one_line():
    with pytest.raises(InputError, match="cannot merge GramStats statistics into ClassStats") as err:
        ClassStats(3, 4).merge(GramStats(3, 4))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"with_scatter=False.*same task and model"):
        GramStats(3, 4).merge(GramStats(3, 4, with_scatter=False))
    with pytest.raises(InputError, match=r"classes=\[0, 2\]"):
        ClassScatterStats([0, 1], np.zeros(4)).merge(ClassScatterStats([0, 2], np.zeros(4)))
    text = np.eye(3, 4)
    with pytest.raises(InputError, match="logit_scale"):
        ZeroShotJointStats(text, 100.0).merge(ZeroShotJointStats(text, 50.0))


def test_state_dict_carries_the_configuration_and_load_checks_it():
    text = np.eye(3, 4)
    state = ZeroShotJointStats(text, 50.0).state_dict()
    assert state["ZeroShotJointStats.logit_scale"] == 50.0 and state["ZeroShotJointStats.num_classes"] == 3
    with pytest.raises(InputError, match="configuration .*logit_scale=50.0.* cannot load into .*logit_scale=100.0"):
        ZeroShotJointStats(text, 100.0).load_state_dict(state)
    with pytest.raises(InputError, match="these are GramStats statistics, not ClassStats"):
        ClassStats(3, 4).load_state_dict(GramStats(3, 4).state_dict())
    with pytest.raises(InputError, match="ZeroShotStats statistics of configuration"):
        ZeroShotStats(torch.eye(3, 4)).load_state_dict(ZeroShotStats(torch.eye(5, 4)).state_dict())
    loaded = ClassStats(3, 4).load_state_dict(ClassStats(3, 4).state_dict())
    assert loaded.config == {"num_classes": 3, "dim": 4}


def test_a_field_merge_sees_both_parts_before_any_field_changes():
    class MeanAndCount(Accumulator):
        def __init__(self):
            super().__init__()
            self.add_state("n", np.float64(0.0))
            self.add_state("mean", np.float64(0.0),
                           merge=lambda a, b: (a.n * a.mean + b.n * b.mean) / max(a.n + b.n, 1.0))

    a, b = MeanAndCount(), MeanAndCount()
    a.n, a.mean, b.n, b.mean = 1.0, 2.0, 3.0, 6.0
    a.merge(b)
    assert (a.n, a.mean) == (4.0, 5.0)


@dataclasses.dataclass
class CountingSet(EmbeddingSet):
    """An EmbeddingSet that counts its reads: iter_chunks calls and rows yielded."""

    reads: list = dataclasses.field(default_factory=list)

    def iter_chunks(self, chunk_rows):
        self.reads.append(0)
        for start, rows, labels in super().iter_chunks(chunk_rows):
            self.reads[-1] += len(rows)
            yield start, rows, labels


def test_everything_reads_the_rows_once_per_pass():
    x, y, t = structured(3, 400, 16, 5)
    es = CountingSet([x], y, t)
    report = score(es, "everything", backend="torch", chunk_rows=64, quadratic_limit=300)
    assert len(report.scores) == len(resolve_keys("everything"))
    # pass 1: class sums, zero-shot hits, Gram statistics, zero-shot joint; pass 2: the pass-2 silhouettes,
    # LEEP, SFDA's mixed rows, TransRate; pass 3: SFDA's refit. The old code read 2 + 3 = 5 times.
    # (The all-pairs scores and NCTI read their seeded 300-row sample, a set of its own, by index.)
    assert es.reads == [400, 400, 400]
    es.reads.clear()
    score(es, "everything", backend="torch", chunk_rows=64)
    assert es.reads == [400, 400, 400]   # N ≤ the quadratic limit: the all-pairs sweep reads the blocks whole
    es.reads.clear()
    score(es, ["iimm", "acs", "zeroshot_top1", "gbc_spherical", "nce"], backend="torch", chunk_rows=64)
    assert es.reads == [400]


def test_a_plan_travels_to_workers_and_their_states_come_back():
    """The README's per-unit flow with every unit run on an unpickled copy of the plan (as a remote worker would)."""
    import pickle

    es = task(9)
    be = get_backend("torch")
    keys = resolve_keys("everything")
    plan = ScorePlan(es, keys, ScoreOptions(quadratic_limit=100, baseline_sample=120), be.device)
    for k in range(plan.num_passes):
        shipped = pickle.dumps(plan)
        parts = [run_pass(pickle.loads(shipped), k, es, be, 32, rows=r).state_dicts() for r in [(0, 71), (71, 150)]]
        plan.add_pass(k, pickle.loads(pickle.dumps(parts)))
    got = plan.finalise(es, be)
    want = score(es, keys, backend="torch", quadratic_limit=100, baseline_sample=120).scores
    assert list(got) == list(want)
    for key in keys:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    with pytest.raises(InputError, match="pass 9 does not exist"):
        plan.new_accumulators(9)
