"""Finalisers of the transferability baselines: each score from streamed statistics or from rows.

Conventions follow the authors' released code unless a note says otherwise:
LogME (thuml/LogME, the fixed-point `_fit_fixed_point`), LEEP (Nguyen et al. 2020), NCE
(Tran et al. 2019), H-Score (Bao et al. 2019, YaojieBao/An-Information-theoretic-Metric-of-
Transferability), GBC (Pandy et al. 2022, google-research stable_transfer/gbc.py), TransRate
(Huang et al. 2022), SFDA (Shao et al. 2022, TencentARC/SFDA), NCTI (Wang et al. 2023,
BUserName/NCTI), EMMS (Meng et al. 2023, OpenGVLab/Multitask-Model-Selector).
`present` is always the (K,) index array of the classes that have rows, K ≥ 2.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
from scipy import linalg

from ...errors import InputError

from .baseline_stats import ClassScatterStats, GramStats, ZeroShotJointStats, gram_matrix, softmax

LOGME_EPSILON = 1e-5          # thuml/LogME adds it to both denominators of the fixed-point update
GBC_VARIANCE_FLOOR = 1e-4
TRANSRATE_EPSILON = 1e-4
SFDA_POWER_ITERATIONS = 3
NCTI_PCA_COMPONENTS = 64
NCTI_SHRINKAGE_COMPONENTS = 32
EMMS_STD_EPSILON = 1e-8


try:
    from threadpoolctl import threadpool_limits
except ImportError:                      # only speed depends on it
    threadpool_limits = None


def one_blas_thread(func):
    """Run `func` with one BLAS thread: the D×D eigen/Cholesky/SVD work here gains little from
    threads, and OpenBLAS's threaded LAPACK slows down by orders of magnitude on a busy machine."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        limit = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
        with limit:
            return func(*args, **kwargs)
    return wrapper


def _rank_cut(eigenvalues: np.ndarray, size: int) -> float:
    """Numerical-rank tolerance for a PSD spectrum: size · eps · λ_max (scipy.linalg.pinvh's default)."""
    return size * np.finfo(np.float64).eps * max(float(eigenvalues.max(initial=0.0)), 0.0)


# --- LogME -------------------------------------------------------------------------------------

def logme_from_spectrum(sigma: np.ndarray, proj2: np.ndarray, y_sq: np.ndarray, n: int, d: int,
                        tol: float = 1e-10, max_iter: int = 10_000) -> float:
    """Mean over classes of the maximised log evidence per row.

    sigma: (k,) non-zero eigenvalues of FᵀF; proj2: (k, K) squared coordinates of each class
    indicator y_c on the matching left singular vectors; y_sq: (K,) ‖y_c‖² = n_c.
    The fixed-point iteration of You et al. (arXiv 2110.10545) runs for all classes at once
    until α/β changes by less than `tol` (the reference stops at 1e-3 or 11 steps). The
    log-determinant counts the d − k zero eigenvalues as log α (the reference omits them,
    which only matters when N < D). The updates keep the reference's ε = 1e-5 in both
    denominators; it caps α and β where the evidence has no finite maximum (a one-row
    class: the evidence grows as α → ∞), and elsewhere moves the result by < 1e-9.
    """
    s = sigma[:, None]
    res_x2 = np.maximum(y_sq - proj2.sum(0), 0.0)
    alpha = np.ones(proj2.shape[1])
    beta = np.ones(proj2.shape[1])

    def terms(t, cols):
        gamma = (s / (s + t)).sum(0)
        m2 = (s * proj2[:, cols] / (t + s) ** 2).sum(0)
        res2 = (proj2[:, cols] / (1.0 + s / t) ** 2).sum(0) + res_x2[cols]
        return gamma, m2, res2

    active = np.arange(proj2.shape[1])
    for _ in range(max_iter):           # classes leave the loop as they converge
        t = alpha[active] / beta[active]
        gamma, m2, res2 = terms(t, active)
        alpha[active] = gamma / (m2 + LOGME_EPSILON)
        beta[active] = (n - gamma) / (res2 + LOGME_EPSILON)
        active = active[np.abs(alpha[active] / beta[active] - t) > tol * t]
        if not len(active):
            break
    _, m2, res2 = terms(alpha / beta, slice(None))
    log_det = np.log(alpha + beta * s).sum(0) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * log_det
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2 * math.pi))
    return float(np.mean(evidence / n))


@one_blas_thread
def logme_streamed(stats: GramStats, present: np.ndarray) -> float:
    """LogME from the eigen-decomposition of FᵀF (D, D) and the class sums (exact for any N)."""
    n, d = stats.n, stats.scatter.shape[0]
    sigma, v = np.linalg.eigh(stats.gram)
    keep = sigma > _rank_cut(sigma, max(n, d))
    sigma, v = sigma[keep], v[:, keep]
    proj = (v.T @ stats.class_sum[present].T) / np.sqrt(sigma)[:, None]
    return logme_from_spectrum(sigma, proj ** 2, stats.count[present].astype(np.float64), n, d)


@one_blas_thread
def logme_rows(x: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LogME from the eigen-decomposition of FFᵀ (N, N); x: (N, D) unit rows, labels compact (N,) in [0, K)."""
    n, d = x.shape
    sigma, u = np.linalg.eigh(x @ x.T)
    keep = sigma > _rank_cut(sigma, max(n, d))
    sigma, u = sigma[keep], u[:, keep]
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), labels] = 1.0
    proj = u.T @ onehot
    return logme_from_spectrum(sigma, proj ** 2, onehot.sum(0), n, d)


# --- LEEP and NCE ------------------------------------------------------------------------------

def leep_conditional(joint: ZeroShotJointStats) -> np.ndarray:
    """(C, C) empirical P̂(y | z) = P̂(y, z) / P̂(z) from the soft joint (N cancels); columns with P̂(z) = 0 are 0."""
    p_z = joint.soft_joint.sum(0, keepdims=True)
    return np.divide(joint.soft_joint, p_z, out=np.zeros_like(joint.soft_joint), where=p_z > 0)


def nce(joint: ZeroShotJointStats) -> float:
    """−H(Y | Z) with Z the zero-shot argmax (Tran et al. 2019), from the hard joint counts."""
    counts = joint.hard_joint.astype(np.float64)
    p_yz = counts / counts.sum()
    p_z = np.broadcast_to(p_yz.sum(0, keepdims=True), p_yz.shape)
    nz = p_yz > 0
    return float(np.sum(p_yz[nz] * np.log(p_yz[nz] / p_z[nz])))


# --- H-Score -----------------------------------------------------------------------------------

@one_blas_thread
def hscore(stats: GramStats, present: np.ndarray) -> float:
    """tr(pinv(Cov f) · Cov(E[f | y])) (Bao et al. 2019); both covariances with N − 1, which cancels.

    The reference calls pinv with rcond=1e-15, which inverts rounding noise when Cov f is
    singular (N ≤ D, duplicated rows); the cut here is the numerical rank, D · eps · λ_max.
    """
    lam, v = np.linalg.eigh(stats.scatter)
    keep = lam > _rank_cut(lam, lam.shape[0])
    dev = (stats.class_means(present) - stats.mean) * np.sqrt(stats.count[present, None])
    proj = v[:, keep].T @ dev.T
    return float(np.sum(proj ** 2 / lam[keep, None]))


# --- GBC ---------------------------------------------------------------------------------------

@one_blas_thread
def gbc(stats: GramStats, present: np.ndarray, kind: str) -> float:
    """−Σ_{c≠c'} exp(−Bhattacharyya(c, c')) between per-class Gaussians (Pandy et al. 2022).

    Per-class population variance per dimension, floored at 1e-4. "spherical": one variance
    per class, the mean of the floored per-dimension variances, and (as in the released
    code) the log-variance terms taken once, not D times. Every ordered pair counts.
    """
    means = stats.class_means(present)
    var = np.maximum(stats.class_sq_dev[present] / stats.count[present, None], GBC_VARIANCE_FLOOR)
    k = len(present)
    off_diagonal = ~np.eye(k, dtype=bool)
    if kind == "spherical":
        s = var.mean(1)
        sq = np.square(means).sum(1)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * means @ means.T, 0.0)
        avg = 0.5 * (s[:, None] + s[None, :])
        bd = dist2 / avg / 8.0 + 0.5 * (np.log(avg) - 0.5 * np.log(s)[:, None] - 0.5 * np.log(s)[None, :])
        return float(-np.exp(-bd)[off_diagonal].sum())
    if kind != "diagonal":
        raise ValueError(f"GBC kind must be 'spherical' or 'diagonal', got {kind!r}")
    log_var = np.log(var).sum(1)
    total = 0.0
    block = max(1, (1 << 22) // max(1, k * var.shape[1]))
    for lo in range(0, k, block):
        hi = min(k, lo + block)
        avg = 0.5 * (var[lo:hi, None, :] + var[None, :, :])
        first = (np.square(means[lo:hi, None, :] - means[None, :, :]) / avg).sum(2) / 8.0
        second = np.log(avg).sum(2) - 0.5 * log_var[lo:hi, None] - 0.5 * log_var[None, :]
        total += float(np.exp(-(first + 0.5 * second))[off_diagonal[lo:hi]].sum())
    return -total


# --- TransRate ---------------------------------------------------------------------------------

def coding_rate(gram: np.ndarray, n: int, eps: float = TRANSRATE_EPSILON) -> float:
    """½ log det(I + ZᵀZ / (n ε)) for a Gram ZᵀZ (D, D) of n rows (Huang et al.'s released code)."""
    m = gram / (n * eps)
    m[np.diag_indices_from(m)] += 1.0
    chol = np.linalg.cholesky(0.5 * (m + m.T))
    return float(np.log(np.diag(chol)).sum())


@one_blas_thread
def transrate(stats: GramStats, groups: list[ClassScatterStats]) -> float:
    """R(Z) − mean_c R(Z_c), Z the globally centred rows, Z_c its rows of class c (not re-centred)."""
    rates = [coding_rate(g, int(stats.count[c])) for grp in groups for c, g in zip(grp.classes, grp.scatter)]
    return coding_rate(stats.scatter, stats.n) - float(np.mean(rates))


# --- SFDA --------------------------------------------------------------------------------------

def power_iteration_estimate(a: np.ndarray, iterations: int = SFDA_POWER_ITERATIONS) -> float:
    """The SFDA reference's `iterative_A`: a few power steps from A·1, returning xᵀ A y."""
    x = a.sum(axis=1)
    y = x
    for _ in range(iterations):
        temp = a @ x
        y = temp / np.linalg.norm(temp)
        temp = a @ y
        x = temp / np.linalg.norm(temp)
    return float(x @ a @ y)


@one_blas_thread
def sfda_classifier(stats: GramStats, present: np.ndarray, shrinkage: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Regularised Fisher discriminant of SFDA -> (coef (K, D), intercept (K,), shrinkage).

    Sw = Σ_c prior_c · Cov_c (biased) is shrunk to (1 − s)·Sw + s·tr(Sw)/D·I with
    s = max(exp(−5 λ̂), 1e-10), λ̂ the reference's 3-step power estimate of λ_max(Sw).
    The reference takes coef = M·V·Vᵀ with V all D generalised eigenvectors of (Sb, Sw_s),
    normalised so Vᵀ Sw_s V = I; that product is exactly M·Sw_s⁻¹, solved here by Cholesky.
    """
    n = stats.n
    priors = stats.count[present] / n
    means = stats.class_means(present)
    sw = stats.within_scatter(present) / n
    _require_spread(sw, np.trace(stats.scatter) / n, "sfda")
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * power_iteration_estimate(sw)), 1e-10)
    coef = linalg.cho_solve(linalg.cho_factor(_shrunk(sw, shrinkage)), means.T).T
    intercept = -0.5 * np.einsum("kd,kd->k", means, coef) + np.log(priors)
    return coef, intercept, shrinkage


def sfda_other_means(stats: GramStats, present: np.ndarray) -> np.ndarray:
    """(K, D) for each class, the unweighted mean of the other classes' means (ConfMix target)."""
    means = stats.class_means(present)
    return (means.sum(0) - means) / (len(present) - 1)


# --- EMMS --------------------------------------------------------------------------------------

def sparsemax(z: np.ndarray) -> np.ndarray:
    """Euclidean projection of a vector (K,) onto the probability simplex (Martins & Astudillo 2016)."""
    zs = np.sort(z)[::-1]
    cums = np.cumsum(zs)
    k = np.arange(1, len(z) + 1)
    support = k[1.0 + k * zs > cums].max()
    tau = (cums[support - 1] - 1.0) / support
    return np.maximum(z - tau, 0.0)


@one_blas_thread
def emms(stats: GramStats, present: np.ndarray, label_sets: list[np.ndarray], max_iter: int = 100,
         tol: float = 1e-12) -> float:
    """EMMS (Meng et al. 2023) from streamed statistics: −min ‖X̃w − Σ_k t_k Ỹ_k‖² / (N·L).

    X̃: rows z-scored per dimension; Ỹ_k: (N, L) label embeddings of encoder k, row i = L_k[y_i],
    z-scored per dimension; both with population std + 1e-8 as in the released code. The
    alternating minimisation (least squares in w, then least squares in t projected on the
    simplex by sparsemax) runs until t stops moving (the released code does one round).
    The squared residual is averaged over N·L entries (the released `/ N*D2` multiplies by
    L through operator precedence; the ranking of models is the same). Since Ỹ_k depends on
    the row only through its class, every product reduces to class sums and X̃ᵀX̃.
    label_sets: (C, L) label embeddings per encoder (all the same width L).
    """
    n = stats.n
    counts = stats.count[present].astype(np.float64)
    weights = counts / n
    mu = stats.mean
    inv_std = 1.0 / (np.sqrt(np.maximum(np.diag(stats.scatter), 0.0) / n) + EMMS_STD_EPSILON)
    g = stats.scatter * inv_std[:, None] * inv_std[None, :]
    s_tilde = (stats.class_sum[present] - counts[:, None] * mu) * inv_std
    lam, v = np.linalg.eigh(g)
    keep = lam > _rank_cut(lam, max(n, lam.shape[0]))
    half = (s_tilde @ v[:, keep]) / np.sqrt(lam[keep])
    projector = half @ half.T                      # S̃ G⁺ S̃ᵀ (K, K): class-level X̃(X̃ᵀX̃)⁺X̃ᵀ
    ys = []
    for labels in label_sets:
        lp = np.asarray(labels, dtype=np.float64)[present]
        nu = weights @ lp
        tau = np.sqrt(weights @ np.square(lp - nu))
        ys.append((lp - nu) / (tau + EMMS_STD_EPSILON))
    ys = np.stack(ys)                               # (E, K, L)
    width = ys.shape[2]
    ata = np.einsum("ekl,fkl,k->ef", ys, ys, counts)
    t = np.full(len(ys), 1.0 / len(ys))

    def residual(t):
        b = np.tensordot(t, ys, axes=1)
        return float(np.einsum("kl,k->", np.square(b), counts) - np.sum(b * (projector @ b))), b

    ata_pinv = np.linalg.pinv(ata)
    for _ in range(max_iter):
        fitted = projector @ np.tensordot(t, ys, axes=1)
        atb = np.einsum("ekl,kl->e", ys, fitted)
        t_new = sparsemax(ata_pinv @ atb)
        done = np.max(np.abs(t_new - t)) <= tol
        t = t_new
        if done:
            break
    value, _ = residual(t)
    return -max(value, 0.0) / (n * width)


# --- NCTI --------------------------------------------------------------------------------------

@one_blas_thread
def ncti_parts(x: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """The three raw NCTI parts (Wang et al. 2023) from rows: x (N, D) unit rows, labels compact in [0, K).

    As BUserName/NCTI: PCA to 64 components (fewer when N or D is smaller); LDA with the
    eigen solver and shrinkage max(exp(−Σ top-32 PCA variances), 1e-10), scikit-learn's
    conventions (its "svd" fallback needs that sum ≥ 23, impossible for unit rows).
    ncti_sc: nuclear norm of the centred LDA projection (SELI geometry);
    ncti_cls: mean LDA probability of the true class (nearest-centre classifier);
    ncti_nc: log Σ_c nuclear norm of the class-c probability rows (within-class variability).
    """
    n, d = x.shape
    k = min(NCTI_PCA_COMPONENTS, n, d)
    centred = x - x.mean(0)
    var, comp = np.linalg.eigh(gram_matrix(centred) / (n - 1))
    top = np.argsort(var)[::-1][:k]
    xp = centred @ comp[:, top]
    shrinkage = max(math.exp(-float(var[top][:NCTI_SHRINKAGE_COMPONENTS].sum())), 1e-10)

    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    priors = counts / n
    means = np.stack([np.bincount(labels, weights=col, minlength=num_classes) for col in xp.T], axis=1)
    means /= counts[:, None]
    sw = gram_matrix(xp - means[labels]) / n
    _require_spread(sw, float(var.sum()), "ncti")
    sw = _shrunk(sw, shrinkage)
    st = _shrunk(gram_matrix(xp) / n, shrinkage)       # xp is centred
    evals, evecs = linalg.eigh(st - sw, sw)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.einsum("kd,kd->k", means, coef) + np.log(priors)

    low = xp @ evecs[:, :min(num_classes - 1, k)]
    low -= low.mean(0)
    prob = softmax(xp @ coef.T + intercept)
    class_nuclear = sum(np.linalg.svd(prob[labels == c], compute_uv=False).sum() for c in range(num_classes))
    return {"ncti_sc": float(np.linalg.svd(low, compute_uv=False).sum()),
            "ncti_cls": float(prob[np.arange(n), labels].mean()),
            "ncti_nc": float(math.log(class_nuclear))}


def _require_spread(within_cov: np.ndarray, total_variance: float, key: str) -> None:
    """The discriminants shrink Sw towards tr(Sw)/D·I: impossible when no class has any spread."""
    if not np.trace(within_cov) > 1e-12 * total_variance:
        raise InputError(f"{key} needs rows that vary within their class, but every class here is a single "
                         f"repeated point; leave {key} out of --metrics")


def _shrunk(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    out = (1.0 - shrinkage) * cov
    out[np.diag_indices_from(out)] += shrinkage * np.trace(cov) / cov.shape[0]
    return out
