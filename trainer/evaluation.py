"""Offline metrics of the upstream model on a time window: AUC per domain, cold start, GAUC,
and the AUC expected under known label probabilities (simulated data)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when the slice has a single class (AUC undefined)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Impression-weighted mean of per-user AUC over users that have both classes.

    `GAUC = sum_u n_u AUC_u / sum_u n_u` (Zhou et al. 2018, DIN), `n_u` = the user's rows.
    """
    users, labels, scores = map(np.asarray, (users, labels, scores))
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    total = weight = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        value = auc(labels[lo:hi], scores[lo:hi])
        if value is not None:
            total += (hi - lo) * value
            weight += hi - lo
    return total / weight if weight else None


def expected_auc(probabilities: np.ndarray, scores: np.ndarray) -> float | None:
    """The AUC of `scores` on rows whose labels are drawn with known `probabilities`, in
    expectation over the draws: every ordered pair of distinct rows `(i, j)` counts as
    (positive, negative) with weight `p_i (1 - p_j)`, scored 1 when `s_i > s_j` and 1/2 on a tie,

        sum_{i != j} p_i (1 - p_j) [s_i > s_j or 1/2 on ties] / sum_{i != j} p_i (1 - p_j).

    With 0/1 probabilities it is the ordinary AUC of those labels. On simulated data (the
    synthetic generator's `p_label`) it compares models without the noise of one draw of the
    labels, which on ~100 positives moves the AUC by about 0.02. None when undefined.
    """
    p = np.asarray(probabilities, np.float64)
    s = np.asarray(scores, np.float64)
    if p.shape != s.shape or p.ndim != 1:
        raise ValueError(f"probabilities and scores must be 1-D of one length, got {p.shape} "
                         f"and {s.shape}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    if not s.size:
        return None
    order = np.argsort(s, kind="stable")
    p, s = p[order], s[order]
    q = 1.0 - p
    below = np.concatenate([[0.0], np.cumsum(q)])  # negative weight of the rows before each
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # runs of tied scores
    ends = np.r_[starts[1:], s.size]
    same = float(np.sum(p * q))  # the i == j terms, left out of both sums
    runs = np.add.reduceat(p, starts)  # positive weight of each run of ties
    total = float(np.sum(runs * (below[starts] + 0.5 * (below[ends] - below[starts]))))
    denominator = p.sum() * q.sum() - same
    if denominator <= 0:
        return None
    return float((total - 0.5 * same) / denominator)
