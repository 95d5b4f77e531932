"""Offline metrics of the upstream model on a time window: AUC per domain, cold start, GAUC."""

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
