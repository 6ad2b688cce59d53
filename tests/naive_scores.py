"""Obviously correct float64 implementations of every score of docs/scores.md, straight from the definitions.

Full N×N and N×C matrices, loops where the definition loops. For tests only.
"""

from __future__ import annotations

import numpy as np


def unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def intra(x) -> float:
    x = unit(x)
    g = x @ x.T
    i, j = np.triu_indices(len(x), k=1)
    return float(g[i, j].mean())


def inter(x, y, t) -> float:
    x, t = unit(x), unit(t)
    c = len(t)
    per_image = [np.mean([x[i] @ t[k] for k in range(c) if k != y[i]]) for i in range(len(x))]
    return float(np.mean(per_image))


def acs(x, y, t) -> float:
    x, t = unit(x), unit(t)
    return float(np.mean([x[i] @ t[y[i]] for i in range(len(x))]))


def gap(x, t) -> float:
    return float(np.linalg.norm(unit(x).mean(0) - unit(t).mean(0)))


def uniformity_text(x, y, t) -> float:
    x, t = unit(x), unit(t)
    per_class = []
    for c in range(len(t)):
        others = [x[i] @ t[c] for i in range(len(x)) if y[i] != c]
        if others:
            per_class.append(np.mean(others))
    return float(np.mean(per_class))


def inter_text(t) -> float:
    return intra(t)


def zeroshot(x, y, t) -> tuple[float, float, float]:
    sims = unit(x) @ unit(t).T
    pred = sims.argmax(1)
    top5 = np.argsort(-sims, axis=1)[:, :5]
    hit5 = np.array([y[i] in top5[i] for i in range(len(y))])
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return float(np.mean(pred == y)), float(hit5.mean()), float(np.mean(recalls))


def silhouette(dist: np.ndarray, labels) -> float:
    """Mean silhouette from a full distance matrix (scikit-learn's conventions)."""
    labels = np.asarray(labels)
    s = np.zeros(len(labels))
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() == 1:
            continue
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == c].mean() for c in np.unique(labels) if c != labels[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(s.mean())


def cosine_distances(x, z=None) -> np.ndarray:
    x = unit(x)
    z = x if z is None else unit(z)
    return 1.0 - x @ z.T


def euclidean_distances(x) -> np.ndarray:
    x = unit(x)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def silhouette_class(x, y) -> float:
    return silhouette(cosine_distances(x), y)


def silhouette_class_euclidean(x, y) -> float:
    return silhouette(euclidean_distances(x), y)


def silhouette_modality(x, t) -> float:
    both = np.vstack([unit(x), unit(t)])
    labels = np.r_[np.zeros(len(x), int), np.ones(len(t), int)]
    return silhouette(cosine_distances(both), labels)


def power_mean(d: np.ndarray, p: float) -> float:
    if len(d) == 0:
        return 0.0
    if p == 0:
        return float(np.exp(np.mean(np.log(d))))
    return float(np.mean(d ** p) ** (1.0 / p))


def gensil(x, y, p: float = 1.0, zero_eps: float = 1e-6) -> float:
    """Generalised silhouette: power means of the non-zero cosine distances to each class."""
    dist = cosine_distances(x)
    y = np.asarray(y)
    s = np.zeros(len(y))
    for i in range(len(y)):
        own = (y == y[i])
        if own.sum() == 1:
            continue
        others = np.ones(len(y), bool)
        others[i] = False
        keep = others & (dist[i] > zero_eps)
        a = power_mean(dist[i, own & keep], p)
        b = min(power_mean(dist[i, (y == c) & keep], p) for c in np.unique(y) if c != y[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(s.mean())


def all_scores(x, y, t, p: float = 1.0) -> dict[str, float]:
    i, e = intra(x), inter(x, y, t)
    top1, top5, bal = zeroshot(x, y, t)
    return {"iimm": 0.5 * (i + e), "iimm_intra_image": i, "iimm_inter_modal": e, "acs": acs(x, y, t),
            "gap": gap(x, t), "uniformity_text": uniformity_text(x, y, t), "inter_text": inter_text(t),
            "zeroshot_top1": top1, "zeroshot_top5": top5, "zeroshot_balanced": bal,
            "silhouette_modality": silhouette_modality(x, t), "silhouette_class": silhouette_class(x, y),
            "silhouette_class_euclidean": silhouette_class_euclidean(x, y), "gensil": gensil(x, y, p)}
