"""The computations behind the notebooks' figures, against hand-worked cases and references."""

import matplotlib

matplotlib.use("Agg")

# isort: split
import matplotlib.pyplot as plt
import numpy as np
import pytest

from notebooks import analysis, plots


def test_paired_differences_pair_by_seed_and_skip_missing_metrics():
    result = {"per_seed": {
        "none": [{"auc": 0.60, "expected_auc": None}, {"auc": 0.50, "expected_auc": None}],
        "lfm4ads": [{"auc": 0.62, "expected_auc": None}, {"auc": 0.49, "expected_auc": None}],
    }}
    d = analysis.paired_differences(result, "auc")
    assert d["lfm4ads"]["mean"] == pytest.approx(0.005)  # (+0.02 - 0.01) / 2
    assert d["lfm4ads"]["std"] == pytest.approx(0.015)
    assert (d["lfm4ads"]["holds"], d["lfm4ads"]["seeds"]) == (1, 2)
    assert d["none"]["mean"] == 0.0
    assert analysis.paired_differences(result, "expected_auc") == {}
    with pytest.raises(KeyError, match="no 'ur' row"):
        analysis.paired_differences(result, "auc", baseline="ur")


def test_row_cosines():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(analysis.row_cosines(a, b), [1.0, -1.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    want = [xi @ yi / np.linalg.norm(xi) / np.linalg.norm(yi) for xi, yi in zip(x, y, strict=True)]
    np.testing.assert_allclose(analysis.row_cosines(x, y), want)
    with pytest.raises(ValueError, match="one shape"):
        analysis.row_cosines(x, y[:, :4])


def test_shares_above_are_strict():
    shares = analysis.shares_above(np.array([1.0, 0.99, 0.97, 0.5]))
    assert shares == {0.99: 0.25, 0.95: 0.75}
    with pytest.raises(ValueError):
        analysis.shares_above(np.array([]))


def test_purity():
    labels = np.array([0, 0, 1, 1, 1, 2])
    assert analysis.purity(labels, np.array([5, 5, 7, 7, 7, 9])) == 1.0
    assert analysis.purity(labels, np.zeros(6)) == 0.5  # one cluster: the commonest label
    # cluster a = {0, 1, 1}: 2; cluster b = {0, 1, 2}: 1 -> 3/6
    assert analysis.purity(labels, np.array([0, 1, 0, 0, 1, 1])) == 0.5
    with pytest.raises(ValueError):
        analysis.purity(labels, np.zeros(5))


def test_cluster_rates():
    rates = analysis.cluster_rates(np.array([3, 1, 3, 3, 1]), np.array([1, 0, 0, 1, 1]))
    np.testing.assert_array_equal(rates["cluster"], [1, 3])
    np.testing.assert_array_equal(rates["impressions"], [2, 3])
    np.testing.assert_array_equal(rates["clicks"], [1, 2])
    np.testing.assert_allclose(rates["ctr"], [0.5, 2 / 3])
    np.testing.assert_allclose(rates["stderr"], [np.sqrt(0.25 / 2), np.sqrt(2 / 9 / 3)])


def test_save_writes_png_and_refuses_unlabelled_axes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(ValueError, match="'bare'.*title, x label, y label"):
        plots.save(fig, "bare", None)  # checked even when nothing is written
    ax.set_title("t")
    ax.set_xlabel("x (s)")
    with pytest.raises(ValueError, match="no y label"):
        plots.save(fig, "half", str(tmp_path))
    ax.set_ylabel("y (ms)")
    assert plots.save(fig, "shown", None) is None
    assert not list(tmp_path.iterdir())
    path = plots.save(fig, "done", str(tmp_path))
    assert path == str(tmp_path / "done.png")
    assert (tmp_path / "done.png").read_bytes().startswith(b"\x89PNG")
    plt.close(fig)
