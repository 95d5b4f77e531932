"""A paired comparison of two scorers on the same test rows: better, worse or inconclusive,
with the smallest difference the data could have resolved.

Two scorers (a candidate and a reference: two rankers, or one proxy with two representation
versions) score the same rows. Rows of one user are not independent (one user's interests
drive all of them), so the unit of resampling is the user: a paired bootstrap draws the test
users with replacement, takes every row of each drawn user (with its multiplicity), and
recomputes both AUCs on that resample:

    delta   = AUC(candidate) - AUC(reference)            on the test rows as they are
    delta_b = the same on bootstrap resample b = 1..B     (resamples with one class dropped)
    SE      = std_b(delta_b)  (ddof 1)
    95% interval = delta +- z_0.975 SE
    detectable effect = (z_0.975 + z_0.80) SE  ~ 2.80 SE

The detectable effect is the true difference that such a test resolves (interval clear of 0)
four times out of five: a smaller one is likely to come out inconclusive at this data size.
The verdict, with a tolerance `tau >= 0` (0 unless the caller's policy has one):

    better        low > 0          the candidate is better, with 95% confidence
    worse         high < -tau      it is worse by more than `tau`, with 95% confidence
    inconclusive  otherwise        the data cannot tell (or too few clicks to measure)

With fewer than `min_clicks` clicks (or non-clicks) among the rows nothing is measured: the
verdict is inconclusive and the interval and detectable effect are None (a bootstrap of a
handful of clicks can look confident about nothing).

Every resample's AUC comes from one sort of the scores: a resample is a weighting of the rows
(`weighted_auc`), so B resamples cost one pass over a `[B, rows]` weight matrix, not B sorts.
The same statistic decides the pipeline's gates (the embedding evaluator, the downstream
ranker's blessing) and can back a benchmark's intervals.

Example::

    c = paired_comparison(users, labels, candidate_scores, reference_scores)
    c.verdict, c.delta, (c.low, c.high), c.detectable_effect
    describe(c.as_dict())  # 'inconclusive: 108 test clicks resolve only differences above ...'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np

BETTER, WORSE, INCONCLUSIVE = "better", "worse", "inconclusive"
VERDICTS = (BETTER, WORSE, INCONCLUSIVE)
Z_975 = NormalDist().inv_cdf(0.975)  # 1.960: two-sided 5%
Z_80 = NormalDist().inv_cdf(0.80)  # 0.842: 80% power
DETECTABLE_FACTOR = Z_975 + Z_80  # 2.80
RESAMPLES = 1000
MIN_CLICKS = 20
# Bootstrap weights are built this many cells (resamples x rows) at a time: ~16 MB of float64.
_CELLS = 1 << 21


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The paired comparison of a candidate scorer with a reference (module doc).

    `delta`, `candidate_auc`, `reference_auc`: None when an AUC is undefined (one class);
    `stderr`, `low`, `high`, `detectable_effect`: None when nothing was measured (fewer than
    `min_clicks` clicks or non-clicks). `resamples`: the bootstrap resamples with both classes.
    """

    verdict: str
    delta: float | None
    stderr: float | None
    low: float | None
    high: float | None
    detectable_effect: float | None
    candidate_auc: float | None
    reference_auc: float | None
    tolerance: float
    rows: int
    clicks: int
    users: int
    resamples: int
    min_clicks: int

    @property
    def measured(self) -> bool:
        return self.stderr is not None

    def as_dict(self) -> dict:
        """The fields, floats rounded to 6 digits (for JSON and ML Metadata)."""
        return {k: round(v, 6) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(self).items()}


def verdict(low: float, high: float, tolerance: float = 0.0) -> str:
    """`better` when the interval `[low, high]` lies above 0, `worse` when it lies below
    `-tolerance`, else `inconclusive` (module doc)."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if low > high:
        raise ValueError(f"the interval's low end {low} is above its high end {high}")
    if low > 0:
        return BETTER
    if high < -tolerance:
        return WORSE
    return INCONCLUSIVE


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of `scores` with row weights, for several weightings at once:

        AUC_b = sum_{i pos, j neg} w_bi w_bj ([s_i > s_j] + [s_i == s_j] / 2)
                / (sum_{i pos} w_bi  *  sum_{j neg} w_bj)

    With integer weights it is the AUC of the rows repeated that many times (a bootstrap
    resample); with unit weights the ordinary AUC (ties count one half).

    Args:
      labels: [rows] 0/1.
      scores: [rows].
      weights: [B, rows] non-negative.
    Returns:
      [B] AUCs, NaN where a weighting leaves one class only.
    """
    labels = np.asarray(labels, np.float64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != labels.shape[0] or scores.shape != labels.shape:
        raise ValueError(f"weighted_auc needs labels [rows], scores [rows] and weights "
                         f"[B, rows]; got {labels.shape}, {scores.shape} and {weights.shape}")
    if labels.size == 0:
        return np.full(weights.shape[0], np.nan)
    order, starts = _runs(scores)
    return _sorted_auc(labels[order], starts, weights[:, order])


def _runs(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in score order, and where each run of tied scores starts in that order."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    return order, np.flatnonzero(np.r_[True, s[1:] != s[:-1]])


def _sorted_auc(y: np.ndarray, starts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`weighted_auc` of rows already in score order (`_runs`): y [rows], w [B, rows]."""
    pos = np.add.reduceat(w * y, starts, axis=1)  # [B, runs] positive weight per run
    neg = np.add.reduceat(w * (1.0 - y), starts, axis=1)  # [B, runs]
    below = np.cumsum(neg, axis=1) - neg  # [B, runs] negative weight strictly below each run
    concordant = np.sum(pos * (below + 0.5 * neg), axis=1)  # [B]
    pairs = pos.sum(axis=1) * neg.sum(axis=1)  # [B]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, concordant / pairs, np.nan)


def bootstrap_deltas(users: np.ndarray, labels: np.ndarray, candidate: np.ndarray,
                     reference: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = 0) -> np.ndarray:
    """`AUC(candidate) - AUC(reference)` on `resamples` paired resamples of the users (module
    doc); resamples that drew one class only are left out.

    Args:
      users: [rows] each row's user (any hashable dtype numpy sorts: bytes, str, int).
      labels, candidate, reference: [rows].
    Returns:
      [<= resamples] the resampled deltas.
    """
    users = np.asarray(users).reshape(-1)
    _, inverse = np.unique(users, return_inverse=True)
    n_users = int(inverse.max()) + 1 if inverse.size else 0
    labels = np.asarray(labels, np.float64).reshape(-1)
    runs = []  # per scorer: its score order, its runs of ties, the labels in that order
    for scores in (candidate, reference):
        order, starts = _runs(np.asarray(scores, np.float64).reshape(-1))
        runs.append((order, starts, labels[order]))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS // max(users.size, n_users, 1))
    out = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        # [b, users] how often each user is drawn; [b, rows] each row's weight
        counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=b)
        aucs = [_sorted_auc(y, starts, counts[:, inverse[order]].astype(np.float64))
                for order, starts, y in runs]
        deltas = aucs[0] - aucs[1]
        out.append(deltas[np.isfinite(deltas)])
    return np.concatenate(out) if out else np.zeros(0)


def paired_comparison(users: np.ndarray, labels: np.ndarray, candidate: np.ndarray,
                      reference: np.ndarray, tolerance: float = 0.0,
                      resamples: int = RESAMPLES, seed: int = 0,
                      min_clicks: int = MIN_CLICKS) -> Comparison:
    """The candidate's scores against the reference's on the same rows (module doc).

    Args:
      users: [rows] the resampling unit.
      labels: [rows] 0/1 clicks.
      candidate, reference: [rows] the two scorers' scores of the same rows.
      tolerance: how far below the reference the candidate must be shown to be for `worse`.
      resamples: bootstrap resamples (the SE's own relative error is about 1/sqrt(2 B)).
      seed: the resamples' seed (the same seed draws the same resamples).
      min_clicks: fewer clicks or non-clicks than this: not measured (inconclusive).
    """
    labels = np.asarray(labels).reshape(-1)
    candidate = np.asarray(candidate, np.float64).reshape(-1)
    reference = np.asarray(reference, np.float64).reshape(-1)
    users = np.asarray(users).reshape(-1)
    n = labels.shape[0]
    if not (users.shape[0] == candidate.shape[0] == reference.shape[0] == n):
        raise ValueError(f"users, labels and both scorers' scores must have one value per row; "
                         f"got {users.shape[0]}, {n}, {candidate.shape[0]} and "
                         f"{reference.shape[0]}")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got the values {np.unique(labels)[:5].tolist()}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    for name, scores in (("candidate", candidate), ("reference", reference)):
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"the {name}'s scores hold {int(np.sum(~np.isfinite(scores)))} "
                             "NaN or infinite values")
    clicks = int(labels.sum())
    ones = np.ones((1, n))
    aucs = [float(weighted_auc(labels, s, ones)[0]) for s in (candidate, reference)]
    aucs = [None if math.isnan(a) else a for a in aucs]
    delta = None if None in aucs else aucs[0] - aucs[1]
    common = {"candidate_auc": aucs[0], "reference_auc": aucs[1], "tolerance": float(tolerance),
              "rows": int(n), "clicks": clicks, "users": int(np.unique(users).size),
              "min_clicks": int(min_clicks)}
    if delta is None or min(clicks, n - clicks) < max(1, min_clicks):
        return Comparison(INCONCLUSIVE, delta, None, None, None, None, resamples=0, **common)
    deltas = bootstrap_deltas(users, labels, candidate, reference, resamples, seed)
    if deltas.size < 2:
        return Comparison(INCONCLUSIVE, delta, None, None, None, None,
                          resamples=int(deltas.size), **common)
    se = float(np.std(deltas, ddof=1))
    low, high = delta - Z_975 * se, delta + Z_975 * se
    return Comparison(verdict(low, high, tolerance), delta, se, low, high,
                      DETECTABLE_FACTOR * se, resamples=int(deltas.size), **common)


def describe(comparison: Mapping) -> str:
    """The comparison in plain words, from `Comparison.as_dict()` (or the same keys read back
    from ML Metadata), e.g.

        inconclusive: 108 test clicks resolve only differences above 0.051 AUC (delta
        -0.0130, 95% interval [-0.0493, +0.0233])
        better: +0.0210 AUC, 95% interval [+0.0080, +0.0340] (412 test clicks resolve
        differences above 0.018)
        inconclusive: 12 test clicks, too few to compare AUCs (at least 20 needed)
    """
    clicks, kind = comparison.get("clicks"), comparison["verdict"]
    rows = comparison.get("rows")
    if comparison.get("detectable_effect") is None:
        least = comparison.get("min_clicks")
        few = clicks if rows is None or clicks is None else min(clicks, rows - clicks)
        if few is not None and least is not None and 0 < few < least:
            what = "clicks" if few == clicks else "non-clicks"
            return f"{kind}: {few} test {what}, too few to compare AUCs (at least {least} needed)"
        return f"{kind}: the {rows} test rows hold {clicks} clicks, no AUC to compare"
    interval = f"95% interval [{comparison['low']:+.4f}, {comparison['high']:+.4f}]"
    mde = comparison["detectable_effect"]
    if kind == INCONCLUSIVE:
        return (f"{kind}: {clicks} test clicks resolve only differences above {mde:.3f} AUC "
                f"(delta {comparison['delta']:+.4f}, {interval})")
    return (f"{kind}: {comparison['delta']:+.4f} AUC, {interval} ({clicks} test clicks resolve "
            f"differences above {mde:.3f})")
