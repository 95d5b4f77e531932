"""expected_auc against the AUC of every possible draw of the labels (exact expectation)."""

import itertools

import numpy as np
import pytest

from trainer.evaluation import auc, expected_auc


def _by_enumeration(p, s):
    """sum over label draws y of P(y) * (concordant pairs), over the same of (pairs)."""
    hits = pairs = 0.0
    for y in itertools.product((0, 1), repeat=len(p)):
        y = np.array(y)
        weight = np.prod(np.where(y == 1, p, 1 - p))
        pos, neg = s[y == 1], s[y == 0]
        cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        hits += weight * cmp.sum()
        pairs += weight * pos.size * neg.size
    return hits / pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_auc_is_the_ratio_of_expected_pair_counts(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, 7)
    s = rng.integers(0, 4, 7).astype(float)  # ties included
    assert expected_auc(p, s) == pytest.approx(_by_enumeration(p, s), rel=1e-12)


def test_expected_auc_with_certain_labels_is_the_auc():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.3).astype(float)
    s = rng.normal(size=200).round(1)
    assert expected_auc(y, s) == pytest.approx(auc(y, s), abs=1e-12)
    # The true probabilities rank perfectly against themselves only when they are 0/1.
    p = rng.uniform(0, 1, 200)
    assert expected_auc(p, p) < 1.0 and expected_auc(p, p) > expected_auc(p, -p)


def test_expected_auc_undefined_and_bad_input():
    assert expected_auc(np.zeros(5), np.arange(5.0)) is None  # no positive can be drawn
    assert expected_auc(np.array([]), np.array([])) is None
    with pytest.raises(ValueError, match="one length"):
        expected_auc(np.ones(3) / 2, np.ones(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_auc(np.array([0.5, 1.5]), np.ones(2))
