"""benchmarks.intervals: the paired difference's interval over seeds, with test sampling."""

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import intervals
from common import features


def test_interval_combines_seed_spread_and_bootstrap_variance():
    d, v = [0.01, 0.02, 0.03], [0.0001, 0.0001, 0.0001]
    i = intervals.interval(d, v)
    se = np.sqrt((np.var(d, ddof=1) + 0.0001) / 3)
    t = stats.t.ppf(0.975, 2)
    assert i["mean"] == pytest.approx(0.02) and i["se"] == pytest.approx(se)
    assert (i["low"], i["high"]) == pytest.approx((0.02 - t * se, 0.02 + t * se))
    assert i["detectable"] == pytest.approx((t + stats.t.ppf(0.8, 2)) * se)
    assert i["detectable"] > i["high"] - i["mean"]  # a detectable effect would be resolved
    assert i["holds"] == (i["low"] > 0)  # here: not, the interval reaches below 0
    assert not i["holds"] and "not resolved" in intervals.describe(i)
    tight = intervals.interval([0.02, 0.021, 0.019], [1e-8] * 3)
    assert tight["holds"] and intervals.describe(tight).endswith("holds")
    assert intervals.interval([-0.02, -0.021, -0.019], [1e-8] * 3)["holds"]  # below 0 holds too
    with pytest.raises(ValueError, match="at least one"):
        intervals.interval([], [])


def test_paired_bootstrap_resamples_users():
    rng = np.random.default_rng(0)
    n = 2000
    users = rng.integers(0, 300, n)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    rows = {features.LABEL: labels}
    good = labels + rng.normal(0, 1.0, n)  # informative
    noise = rng.normal(0, 1.0, n)
    same = intervals.paired_bootstrap(users, (rows, good, None), (rows, good, None), seed=1)
    assert same.shape == (intervals.BOOTSTRAP,) and np.all(same == 0)
    diff = intervals.paired_bootstrap(users, (rows, good, None), (rows, noise, None), seed=1)
    point = intervals.metric(rows, good, None) - intervals.metric(rows, noise, None)
    assert point > 0.2 and abs(diff.mean() - point) < 0.02 and 0 < diff.std() < 0.05
    # the same seed draws the same resamples
    again = intervals.paired_bootstrap(users, (rows, good, None), (rows, noise, None), seed=1)
    np.testing.assert_array_equal(diff, again)
    p = np.clip(0.3 + 0.1 * labels, 0, 1)  # with probabilities: the expected AUC
    assert intervals.metric(rows, good, p) != intervals.metric(rows, good, None)


def test_interval_by_hand():
    # differences 0.01, 0.03 over 2 seeds: mean 0.02, seed variance (ddof 1) 2e-4; bootstrap
    # variances 1e-4 and 3e-4 (mean 2e-4): SE = sqrt((2e-4 + 2e-4) / 2) = sqrt(2e-4)
    out = intervals.interval([0.01, 0.03], [1e-4, 3e-4])
    se = math.sqrt(2e-4)
    t = stats.t.ppf(0.975, 1)
    assert out["mean"] == pytest.approx(0.02) and out["se"] == pytest.approx(se)
    assert (out["low"], out["high"]) == (pytest.approx(0.02 - t * se),
                                         pytest.approx(0.02 + t * se))
    assert out["detectable"] == pytest.approx((t + stats.t.ppf(0.8, 1)) * se)
    assert not out["holds"]
    assert intervals.detectable_factor(1000) == pytest.approx(2.8, abs=0.01)
    tight = intervals.interval([0.02, 0.021, 0.019], [0.0, 0.0, 0.0])
    assert tight["holds"] and tight["low"] > 0


def test_bootstrap_differences_resample_whole_users():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 20).astype(str)  # 50 users, 20 rows each
    labels = rng.random(1000) < 0.3
    rows = {features.LABEL: labels.astype(np.int64)}
    good, noise = labels + rng.normal(0, 1, 1000), rng.normal(0, 1, 1000)
    diffs = intervals.paired_bootstrap(users, (rows, good, None), (rows, noise, None), 0)
    assert len(diffs) == intervals.BOOTSTRAP and (diffs > 0).all()
    same = intervals.paired_bootstrap(users, (rows, good, None), (rows, good, None), 0)
    assert np.all(same == 0)
