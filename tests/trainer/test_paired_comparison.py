"""trainer.paired_comparison: the paired user bootstrap behind the pipeline's gates."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainer import paired_comparison


def _world(seed=0, rows=3000, users=400, click_rate=0.1):
    """Rows of `users` users; each row's click depends on a signal the scorers see noisily."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    signal = rng.normal(size=rows)
    labels = (rng.random(rows) < click_rate * np.exp(signal) / np.exp(0.5)).astype(np.int64)
    return rng, user, labels, signal


def test_weighted_auc_is_sklearns_auc_of_the_repeated_rows():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(np.int64)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    assert paired_comparison.weighted_auc(labels, scores, np.ones((1, 300)))[0] == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12)
    counts = rng.integers(0, 4, (3, 300))  # a resample: each row 0-3 times
    expected = [roc_auc_score(np.repeat(labels, c), np.repeat(scores, c)) for c in counts]
    np.testing.assert_allclose(paired_comparison.weighted_auc(labels, scores, counts), expected,
                               atol=1e-12)
    # 2 clicks at 0.9 and 0.1, 1 non-click at 0.5 -> pairs (0.9>0.5)=1, (0.1>0.5)=0 -> 1/2
    assert paired_comparison.weighted_auc([1, 1, 0], [0.9, 0.1, 0.5], [[1, 1, 1]])[0] == 0.5
    # weighting the first click twice: (2*1 + 1*0) / (3*1) = 2/3
    assert paired_comparison.weighted_auc([1, 1, 0], [0.9, 0.1, 0.5], [[2, 1, 1]])[
        0
    ] == pytest.approx(2 / 3)
    assert np.isnan(
        paired_comparison.weighted_auc([1, 1, 0], [0.9, 0.1, 0.5], [[1, 1, 0]])[0]
    )  # no negative
    with pytest.raises(ValueError, match=r"weights \[B, rows\]"):
        paired_comparison.weighted_auc([1, 0], [0.1, 0.2], np.ones(2))


def test_bootstrap_deltas_resample_users_as_a_naive_loop_does(monkeypatch):
    """Each resample draws the users with replacement (multinomial counts, same generator) and
    takes every row of a drawn user as often as it was drawn; the vectorised deltas equal
    sklearn's AUCs of the explicitly repeated rows, chunked or not."""
    rng, users, labels, signal = _world(rows=500, users=60)
    a, b = signal + rng.normal(size=500), signal + 2 * rng.normal(size=500)
    monkeypatch.setattr(paired_comparison, "_CELLS", 7 * 500)  # chunks of 7 resamples
    got = paired_comparison.bootstrap_deltas(users, labels, a, b, resamples=20, seed=3)
    uniq, inverse = np.unique(users, return_inverse=True)
    draw = np.random.default_rng(3)
    expected = []
    for start in range(0, 20, 7):
        for counts in draw.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)),
                                       size=min(7, 20 - start)):
            take = np.repeat(np.arange(500), counts[inverse])
            expected.append(roc_auc_score(labels[take], a[take])
                            - roc_auc_score(labels[take], b[take]))
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_verdicts_better_worse_and_inconclusive():
    rng, users, labels, signal = _world()
    good = signal + 0.5 * rng.normal(size=signal.size)
    poor = signal + 3.0 * rng.normal(size=signal.size)
    better = paired_comparison.paired_comparison(users, labels, good, poor)
    assert better.verdict == paired_comparison.BETTER and better.low > 0
    assert better.delta == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, poor))
    assert (better.low, better.high) == pytest.approx(
        (better.delta - 1.959964 * better.stderr, better.delta + 1.959964 * better.stderr))
    assert better.detectable_effect == pytest.approx(2.801585 * better.stderr, rel=1e-5)
    assert (better.rows, better.clicks, better.users) == (3000, int(labels.sum()), 400)
    worse = paired_comparison.paired_comparison(users, labels, poor, good)
    assert worse.verdict == paired_comparison.WORSE and worse.high < 0
    assert worse.delta == pytest.approx(-better.delta)
    # Two scorers as good as each other (independent noise of one size): not resolved, and
    # the detectable effect is larger than the difference seen.
    twin = signal + 0.5 * rng.normal(size=signal.size)
    tie = paired_comparison.paired_comparison(users, labels, good, twin)
    assert tie.verdict == paired_comparison.INCONCLUSIVE and tie.low <= 0 <= tie.high
    assert tie.detectable_effect > abs(tie.delta)
    same = paired_comparison.paired_comparison(users, labels, good,
                                               good)  # paired: every resample's delta is 0
    assert (same.verdict, same.delta, same.stderr) == (paired_comparison.INCONCLUSIVE, 0.0, 0.0)


def test_tolerance_moves_only_the_worse_bound():
    """Interval [-0.03, -0.01]: worse without tolerance, inconclusive with 0.02 (the candidate
    may be worse by no more than 0.02); [-0.03, -0.021]: worse with 0.02 too."""
    assert paired_comparison.verdict(-0.03, -0.01) == paired_comparison.WORSE
    assert paired_comparison.verdict(-0.03, -0.01, tolerance=0.02) == paired_comparison.INCONCLUSIVE
    assert paired_comparison.verdict(-0.03, -0.021, tolerance=0.02) == paired_comparison.WORSE
    assert paired_comparison.verdict(0.001, 0.02, tolerance=0.02) == paired_comparison.BETTER
    assert paired_comparison.verdict(-0.01, 0.02) == paired_comparison.INCONCLUSIVE
    assert (
        paired_comparison.verdict(0.0, 0.02) == paired_comparison.INCONCLUSIVE
    )  # touching 0 is not clear of it
    with pytest.raises(ValueError, match="tolerance must be >= 0, got -0.1"):
        paired_comparison.verdict(0.0, 0.1, tolerance=-0.1)
    rng, users, labels, signal = _world()
    a = signal + 0.6 * rng.normal(size=signal.size)
    b = signal + 0.4 * rng.normal(size=signal.size)
    strict, lenient = (paired_comparison.paired_comparison(users, labels, a, b, tolerance=t)
                       for t in (0, 0.5))
    assert (
        strict.verdict == paired_comparison.WORSE
        and lenient.verdict == paired_comparison.INCONCLUSIVE
    )
    assert strict.low == lenient.low and strict.high == lenient.high


def test_the_user_is_the_resampling_unit():
    """Every user's rows twice over: resampling users sees the same number of independent
    units as before, so the SE stays; resampling rows (each row its own user) would see twice
    as many and shrink the SE by about sqrt(2)."""
    rng, users, labels, signal = _world(rows=2000, users=2000)
    users = np.arange(2000)
    a = signal + 0.5 * rng.normal(size=2000)
    b = signal + 0.8 * rng.normal(size=2000)
    once = paired_comparison.paired_comparison(users, labels, a, b, seed=1)
    twice = [np.tile(x, 2) for x in (users, labels, a, b)]
    by_user = paired_comparison.paired_comparison(*twice, seed=1)
    by_row = paired_comparison.paired_comparison(np.arange(4000), *twice[1:], seed=1)
    assert by_user.delta == pytest.approx(once.delta)
    assert by_user.stderr == pytest.approx(once.stderr, rel=0.15)
    assert by_row.stderr == pytest.approx(once.stderr / np.sqrt(2), rel=0.15)


def test_equal_scorers_are_rarely_called_better_or_worse():
    """60 worlds where the two scorers are equally good: the 95% interval should wrongly
    exclude 0 about 5% of the time; a bootstrap that understated the SE would do so far more."""
    wrong = 0
    for seed in range(60):
        rng, users, labels, signal = _world(seed=seed, rows=1500, users=300)
        a, b = (signal + rng.normal(size=1500) for _ in range(2))
        c = paired_comparison.paired_comparison(users, labels, a, b, resamples=200, seed=seed)
        wrong += c.verdict != paired_comparison.INCONCLUSIVE
    assert wrong <= 8  # P(X >= 9 | Binomial(60, 0.05)) is about 0.8%


def test_too_few_clicks_are_not_measured():
    rng, users, labels, signal = _world(rows=400, users=100, click_rate=0.02)
    assert 0 < labels.sum() < 20
    c = paired_comparison.paired_comparison(users, labels, signal, -signal)
    assert c.verdict == paired_comparison.INCONCLUSIVE and c.delta > 0 and not c.measured
    assert (c.low, c.high, c.detectable_effect, c.resamples) == (None, None, None, 0)
    assert paired_comparison.describe(c.as_dict()) == (
        f"inconclusive: {labels.sum()} test clicks, too few to compare AUCs (at least 20 needed)"
    )
    none = paired_comparison.paired_comparison(users, np.zeros(400, np.int64), signal, -signal)
    assert none.delta is None and none.candidate_auc is None
    assert paired_comparison.describe(none.as_dict()) == (
        "inconclusive: the 400 test rows hold 0 clicks, no AUC to compare"
    )
    # Too few non-clicks count as much as too few clicks.
    assert not paired_comparison.paired_comparison(users, 1 - labels, signal, -signal).measured


def test_describe_in_plain_words():
    base = {"rows": 2810, "clicks": 108, "min_clicks": 20, "delta": -0.013, "low": -0.0493,
            "high": 0.0233, "detectable_effect": 0.0518, "verdict": paired_comparison.INCONCLUSIVE}
    assert paired_comparison.describe(base) == (
        "inconclusive: 108 test clicks resolve only differences above 0.052 AUC "
        "(delta -0.0130, 95% interval [-0.0493, +0.0233])")
    assert paired_comparison.describe({**base, "verdict": paired_comparison.BETTER, "delta": 0.03,
                                       "low": 0.004,
                        "high": 0.056}) == (
        "better: +0.0300 AUC, 95% interval [+0.0040, +0.0560] (108 test clicks resolve "
        "differences above 0.052)")


def test_bad_inputs_name_the_problem():
    users, labels, s = np.arange(4), np.array([0, 1, 0, 1]), np.arange(4.0)
    with pytest.raises(ValueError, match="one value per row; got 4, 4, 3 and 4"):
        paired_comparison.paired_comparison(users, labels, s[:3], s)
    with pytest.raises(ValueError, match=r"labels must be 0/1, got the values \[0, 2\]"):
        paired_comparison.paired_comparison(users, labels * 2, s, s)
    with pytest.raises(ValueError, match="the reference's scores hold 1 NaN"):
        paired_comparison.paired_comparison(users, labels, s, np.array([0, np.nan, 1, 2]))
    with pytest.raises(ValueError, match="tolerance must be >= 0, got -0.01"):
        paired_comparison.paired_comparison(users, labels, s, s, tolerance=-0.01)
