"""What the registry points at: how each statistic is built and how each score is finalised.

Builders: `build_*(plan, index) -> Accumulator`, given the plan (shapes, options, device and the
merged statistics of earlier passes). Finalisers: `finalise(plan) -> float`, reading merged
statistics with `plan.stat(name)`; a quantity several finalisers share is computed once with
`plan.memo(name, fn)`. Everything is float64.
"""

from __future__ import annotations

import numpy as np
import torch

from . import baseline_formulas as bf
from .baseline_stats import (ClassScatterStats, GramStats, LeepSum, SfdaMixedStats, SfdaProbabilitySum,
                             ZeroShotJointStats)
from .stats import ClassStats, SilhouetteClassStats, SilhouetteModalityStats, ZeroShotStats, silhouette_values

# ---- builders -----------------------------------------------------------------------------------


def build_class_stats(plan, index=0):
    return ClassStats(plan.c, plan.d, plan.device)


def build_zeroshot_stats(plan, index=0):
    return ZeroShotStats(plan.text_tensor(), plan.device)


def build_silhouette_class_stats(plan, index=0):
    return SilhouetteClassStats(plan.stat("class"), plan.device)


def build_modality_stats(plan, index=0):
    return SilhouetteModalityStats(plan.stat("class"), plan.text_tensor(), plan.device)


def build_gram_light(plan, index=0):
    return GramStats(plan.c, plan.d, with_scatter=False)


def build_gram_scatter(plan, index=0):
    return GramStats(plan.c, plan.d, with_scatter=True)


def build_zeroshot_joint(plan, index=0):
    return ZeroShotJointStats(plan.text, plan.options.logit_scale)


def build_leep(plan, index=0):
    joint = plan.stat("zeroshot_joint")
    return LeepSum(joint, bf.leep_conditional(joint))


def build_sfda_mix(plan, index=0):
    gram = plan.stat("gram_scatter")
    coef, intercept, shrinkage = bf.sfda_classifier(gram, plan.present)
    return SfdaMixedStats(plan.c, plan.present, coef, intercept, bf.sfda_other_means(gram, plan.present), shrinkage)


def build_sfda_refit(plan, index=0):
    mixed = plan.stat("sfda_mix")
    coef, intercept, _ = bf.sfda_classifier(mixed, plan.present, mixed.shrinkage)
    return SfdaProbabilitySum(mixed, coef, intercept)


def transrate_classes_per_group(plan) -> int:
    return max(1, plan.options.gram_budget_bytes // (8 * plan.d * plan.d))


def transrate_group_count(plan) -> int:
    per_group = transrate_classes_per_group(plan)
    return (len(plan.present) + per_group - 1) // per_group


def build_transrate_group(plan, index):
    per_group = transrate_classes_per_group(plan)
    return ClassScatterStats(plan.present[index * per_group:(index + 1) * per_group], plan.stat("gram_scatter").mean)


# ---- embedding scores ---------------------------------------------------------------------------


def linear_terms(plan) -> dict:
    """Pass-1 quantities of the linear scores, once: sums (C, D), counts (C,), t (C, D), n, c, S, T, Σ x̂·t_y."""
    def compute():
        stats = plan.stat("class")
        sums, counts = stats.sums.double().cpu(), stats.counts.cpu()
        t = plan.text_tensor().double().cpu()
        n, c = int(counts.sum()), t.shape[0]
        # NumPy for the (C, D) reductions: one thread, so a busy core cannot stall them at a thread barrier
        s, tn = sums.numpy(), t.numpy()
        total, text_sum = torch.from_numpy(s.sum(0)), torch.from_numpy(tn.sum(0))
        correct = float(np.einsum("cd,cd->", s, tn))
        intra = (float(total @ total) - float(stats.sq_norm_sum)) / (n * (n - 1))
        return dict(sums=sums, counts=counts, t=t, n=n, c=c, total=total, text_sum=text_sum, correct=correct,
                    intra=intra)
    return plan.memo("linear_terms", compute)


def intra_image(plan) -> float:
    return linear_terms(plan)["intra"]


def acs(plan) -> float:
    lt = linear_terms(plan)
    return lt["correct"] / lt["n"]


def gap(plan) -> float:
    lt = linear_terms(plan)
    return float(torch.linalg.vector_norm(lt["total"] / lt["n"] - lt["text_sum"] / lt["c"]))


def inter_modal(plan) -> float:
    lt = linear_terms(plan)
    return (float(lt["total"] @ lt["text_sum"]) - lt["correct"]) / (lt["n"] * (lt["c"] - 1))


def iimm(plan) -> float:
    return 0.5 * (intra_image(plan) + inter_modal(plan))


def uniformity_text(plan) -> float:
    lt = linear_terms(plan)
    rest = lt["n"] - lt["counts"].double()
    t = lt["t"].numpy()
    per_class = torch.from_numpy(lt["total"].numpy() @ t.T - np.einsum("cd,cd->c", lt["sums"].numpy(), t)
                                 ) / rest.clamp_min(1.0)
    return float(per_class[rest > 0].mean())


def inter_text(plan) -> float:
    lt = linear_terms(plan)
    t, c = lt["t"], lt["c"]
    return (float(lt["text_sum"] @ lt["text_sum"]) - float(np.einsum("cd,cd->", t.numpy(), t.numpy()))) / (c * (c - 1))


def _zeroshot(plan) -> dict[str, float]:
    return plan.memo("zeroshot", lambda: plan.stat("zeroshot").compute(plan.counts))


def zeroshot_top1(plan) -> float:
    return _zeroshot(plan)["top1"]


def zeroshot_top5(plan) -> float:
    return _zeroshot(plan)["top5"]


def zeroshot_balanced(plan) -> float:
    return _zeroshot(plan)["balanced"]


def silhouette_class(plan) -> float:
    return plan.stat("silhouette_class").compute()


def silhouette_modality(plan) -> float:
    """Images (from pass 2) and class texts (closed form from S and T) as two clusters, cosine distance."""
    lt = linear_terms(plan)
    t, total, n = lt["t"], lt["total"], lt["n"]
    c = t.shape[0]
    text_s = torch.zeros(c, dtype=torch.float64)
    if c > 1:
        own = t @ t.sum(0)
        a = ((c - 1.0) - (own - t.square().sum(1))) / (c - 1.0)
        b = 1.0 - (t @ total) / n
        text_s = silhouette_values(a, b, torch.full_like(a, float(c)))
    return (float(plan.stat("modality").s_sum) + float(text_s.sum())) / (n + c)


def all_pairs(key: str):
    """The finaliser of an all-pairs score: its value from the one tiled sweep of every planned all-pairs key."""
    def finalise(plan) -> float:
        return plan.all_pairs()[key]
    finalise.__name__ = f"all_pairs_{key}"
    return finalise


# ---- baselines ----------------------------------------------------------------------------------


def logme_passes(plan) -> tuple[str, ...]:
    """LogME streams FᵀF (D × D) when N ≥ D; below that it uses the N × N Gram of the row sample."""
    return ("gram_scatter",) if plan.n >= plan.d else ()


def logme(plan) -> float:
    if plan.n >= plan.d:
        return bf.logme_streamed(plan.stat("gram_scatter"), plan.present)
    x, labels, k = plan.baseline_rows()
    plan.note(f"logme: N = {plan.n} < D = {plan.d}, evidence from the N×N Gram FFᵀ of the rows")
    return bf.logme_rows(x, labels, k)


def _zeroshot_source_note(plan) -> None:
    plan.note(f"leep, nce: source classifier = zero-shot softmax(logit_scale · cos) over the {plan.c} class "
              f"prompts, logit_scale = {plan.options.logit_scale:g}")


def leep(plan) -> float:
    _zeroshot_source_note(plan)
    return plan.stat("leep").compute()


def nce_score(plan) -> float:
    _zeroshot_source_note(plan)
    return bf.nce(plan.stat("zeroshot_joint"))


def hscore_score(plan) -> float:
    return bf.hscore(plan.stat("gram_scatter"), plan.present)


def gbc_spherical(plan) -> float:
    return bf.gbc(plan.stat("gram"), plan.present, "spherical")


def gbc_diagonal(plan) -> float:
    return bf.gbc(plan.stat("gram"), plan.present, "diagonal")


def sfda(plan) -> float:
    return plan.stat("sfda_refit").compute()


def transrate_score(plan) -> float:
    groups = plan.stat("transrate")
    if len(groups) > 1:
        plan.note(f"transrate: per-class Gram matrices in {len(groups)} groups (one pass each) to stay within "
                  f"{plan.options.gram_budget_bytes >> 20} MiB")
    return bf.transrate(plan.stat("gram_scatter"), groups)


def ncti_part(key: str):
    """The finaliser of one raw NCTI part; the three come from one computation on the row sample."""
    def finalise(plan) -> float:
        def parts():
            x, labels, k = plan.baseline_rows()
            plan.note("ncti_sc, ncti_cls, ncti_nc: raw NCTI parts; NCTI itself needs several models "
                      "(combine_ncti min–max normalises each part across them)")
            return bf.ncti_parts(x, labels, k)
        return plan.memo("ncti_parts", parts)[key]
    finalise.__name__ = f"ncti_part_{key}"
    return finalise


def emms_score(plan) -> float:
    return bf.emms(plan.stat("gram_scatter"), plan.present, [plan.text, *plan.options.label_sets])
