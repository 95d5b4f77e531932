"""The computations behind the notebooks' figures, kept here so they are tested: paired
ablation differences, volatility of representations between model versions (paper Sec. 5.3.2),
cluster purity (Sec. 5.3.4) and the click-through rate per cluster (Sec. 5.3.5)."""

from __future__ import annotations

import numpy as np


def paired_differences(result: dict, metric: str, baseline: str = "none") -> dict[str, dict]:
    """Per ablation row, `row - baseline` on `metric`, paired by seed (the same upstream and
    the same downstream seed on both sides), from `benchmarks.ablation`'s `per_seed`.

    Returns {row: {"mean", "std" (over seeds; None with one seed), "holds" (seeds where the
    row is better), "seeds"}}; rows without the metric (e.g. no oracle) are left out."""
    per_seed = result["per_seed"]
    if baseline not in per_seed:
        raise KeyError(f"the ablation result has no {baseline!r} row; rows: {sorted(per_seed)}")
    out = {}
    for row, runs in per_seed.items():
        pairs = [(r.get(metric), b.get(metric)) for r, b in zip(runs, per_seed[baseline],
                                                                strict=True)]
        diffs = np.array([r - b for r, b in pairs if r is not None and b is not None])
        if diffs.size:
            out[row] = {"mean": float(diffs.mean()),
                        "std": float(diffs.std()) if diffs.size > 1 else None,
                        "holds": int((diffs > 0).sum()), "seeds": int(diffs.size)}
    return out


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` ([n, d] each); a zero
    row gives 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [n, d] arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def shares_above(values: np.ndarray, thresholds=(0.99, 0.95)) -> dict[float, float]:
    """The share of `values` strictly above each threshold (the paper reports 76.0% of user
    embeddings above 0.99 and 95.7% above 0.95 five minutes apart)."""
    values = np.asarray(values)
    if values.size == 0:
        raise ValueError("no values")
    return {t: float((values > t).mean()) for t in thresholds}


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Cluster purity: the share of points whose label is their cluster's most common one
    (1 = every cluster holds one label; the share of the commonest label = no structure)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.size == 0:
        raise ValueError(f"need labels and clusters of one non-empty shape, got {labels.shape} "
                         f"and {clusters.shape}")
    total = 0
    for cluster in np.unique(clusters):
        _, counts = np.unique(labels[clusters == cluster], return_counts=True)
        total += counts.max()
    return total / labels.size


def cluster_rates(clusters: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per cluster (one entry per row: the row's cluster and its 0/1 label): `cluster`,
    `impressions`, `clicks`, `ctr` and its binomial standard error `stderr`, sorted by cluster."""
    clusters, labels = np.asarray(clusters), np.asarray(labels, np.float64)
    if clusters.shape != labels.shape:
        raise ValueError(f"clusters {clusters.shape} and labels {labels.shape} differ")
    ids, inverse = np.unique(clusters, return_inverse=True)
    impressions = np.bincount(inverse, minlength=ids.size).astype(np.int64)
    clicks = np.bincount(inverse, weights=labels, minlength=ids.size)
    ctr = clicks / impressions
    return {"cluster": ids, "impressions": impressions, "clicks": clicks.astype(np.int64),
            "ctr": ctr, "stderr": np.sqrt(ctr * (1 - ctr) / impressions)}
