"""The simulator's oracle reader: one file name, windows, and the row check that keeps a
model's scores from being paired with another window's probabilities."""

import numpy as np

from trainer import oracle


def _write(tmp_path):
    rows = {
        "timestamp": np.array([10, 20, 30, 40, 50]),
        "item_id": np.array(["a", "b", "c", "a", "b"]),
        "is_ad": np.array([True, False, True, True, False]),
        "label": np.array([1, 0, 0, 1, 1]),
        "p_label": np.array([0.9, 0.2, 0.1, 0.7, 0.6]),
    }
    np.savez(tmp_path / oracle.ORACLE_FILE, **rows)
    return str(tmp_path)


def test_probabilities_of_a_window_only_for_the_same_rows(tmp_path):
    data = _write(tmp_path)
    labels, items, times = np.array([1, 0, 1]), np.array([b"a", b"c", b"a"]), np.array([10, 30, 40])
    np.testing.assert_allclose(
        oracle.probabilities(data, labels, items, times, 0, 45), [0.9, 0.1, 0.7])
    # another order, another label, another window: no pairing
    assert oracle.probabilities(data, labels[::-1], items[::-1], times[::-1], 0, 45) is None
    assert oracle.probabilities(data, np.array([1, 1, 1]), items, times, 0, 45) is None
    assert oracle.probabilities(data, labels, items, times, 0, 35) is None
    # content rows of [0, 60)
    np.testing.assert_allclose(oracle.probabilities(
        data, np.array([0, 1]), np.array([b"b", b"b"]), np.array([20, 50]), 0, 60,
        domain_is_ad=False), [0.2, 0.6])


def test_no_oracle_gives_nothing(tmp_path):
    assert oracle.load(str(tmp_path)) is None
    assert oracle.metrics(str(tmp_path), 0) == {}
    assert oracle.probabilities(str(tmp_path), np.array([1]), np.array([b"a"]), np.array([1]),
                                0, 2) is None


def test_metrics_slices(tmp_path):
    data = _write(tmp_path)
    out = oracle.metrics(data, cut=25)  # window: rows at 30, 40, 50; ad rows 30 and 40
    assert out["oracle_auc_ad"] == 1.0  # p 0.1 (label 0) < p 0.7 (label 1)
    assert out["oracle_auc_content"] is None  # one content row: a single class
    assert out["oracle_auc_cold_start"] is None  # item "c" is the only cold one: one class
