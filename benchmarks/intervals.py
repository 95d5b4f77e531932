"""95% intervals of paired differences between two scorings of the same test rows, over seeds.

For each seed s, two scorings `a` and `b` of the same rows (two rankers, or one ranker with and
without a feature group masked) give a difference `d_s = metric(a) - metric(b)` and, from a
paired bootstrap over the rows' users (`BOOTSTRAP` resamples of users with replacement, every
row of a drawn user taken), its test-sampling variance `v_s`. Over k seeds:

    mean = mean_s d_s,   SE^2 = (s^2 + mean_s v_s) / k,   interval = mean +- t_{k-1, 0.975} SE

(`s^2`: the per-seed differences' variance, ddof 1: the training seeds' spread). The
difference *holds* when the interval excludes 0; the smallest difference such a run could
detect (80% power at the 5% level) is `(t_{k-1, 0.975} + t_{k-1, 0.80}) * SE` (5.4 SE at 3
seeds, 2.8 SE as k grows). The metric is the AUC in expectation over the
labels' draw where the simulator's oracle gives each row's click probability (then `v_s` is
small: only the rows are resampled), else the drawn-label AUC.

Example::

    d = paired_bootstrap(users, (rows, scores_a, None), (rows, scores_b, None), seed=0)
    interval([0.004, 0.006, 0.005], [d.var(ddof=1)] * 3)   # {"mean": 0.005, "low": ...}
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from common import features
from trainer.evaluation import auc, expected_auc

BOOTSTRAP = 200


def detectable_factor(k: int) -> float:
    """`t_{k-1, 0.975} + t_{k-1, 0.80}` (normal quantiles when k = 1): the smallest detectable
    difference in units of SE, at 5% two-sided and 80% power."""
    if k > 1:
        return float(scipy_stats.t.ppf(0.975, k - 1) + scipy_stats.t.ppf(0.80, k - 1))
    return float(scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.80))


def metric(rows, scores, probabilities) -> float | None:
    """Expected AUC when `probabilities` (the oracle's, per row) are given, else the AUC of
    `rows[F.LABEL]`; None when it is undefined (one class only)."""
    if probabilities is not None:
        return expected_auc(probabilities, scores)
    return auc(rows[features.LABEL], scores)


def paired_bootstrap(users, a, b, seed: int, draws: int = BOOTSTRAP) -> np.ndarray:
    """`draws` paired differences metric(a) - metric(b), each over one resample of `users`.

    Args:
      users: [n] each row's user (the resampling unit).
      a, b: (rows, scores [n], probabilities [n] or None) on the same rows.
    """
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(users, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    members = [order[starts[k]:starts[k + 1]] for k in range(len(uniq))]
    out = []
    for _ in range(draws):
        take = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        values = []
        for rows, scores, probabilities in (a, b):
            sub = {features.LABEL: rows[features.LABEL][take]}
            values.append(metric(sub, scores[take],
                                 None if probabilities is None else probabilities[take]))
        if None not in values:
            out.append(values[0] - values[1])
    return np.array(out)


def interval(differences: list[float], boot_variances: list[float]) -> dict:
    """The module doc's interval of a mean paired difference over seeds: mean, low, high, se,
    detectable (`detectable_factor(k) * se`), holds, seeds."""
    k = len(differences)
    if k == 0:
        raise ValueError("interval needs at least one difference")
    d = np.asarray(differences, dtype=np.float64)
    seed_var = float(d.var(ddof=1)) if k > 1 else 0.0
    se = math.sqrt((seed_var + float(np.mean(boot_variances))) / k)
    t = float(scipy_stats.t.ppf(0.975, k - 1)) if k > 1 else 1.96
    mean = float(d.mean())
    low, high = mean - t * se, mean + t * se
    return {"mean": mean, "low": low, "high": high, "se": se,
            "detectable": detectable_factor(k) * se, "holds": bool(low > 0 or high < 0),
            "seeds": k}


def describe(i: dict) -> str:
    """`+0.0050 [+0.0031, +0.0069] holds` or `... not resolved (detectable 0.0120)`."""
    text = f"{i['mean']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}]"
    return text + (" holds" if i["holds"] else f" not resolved (detects ≥{i['detectable']:.4f})")
