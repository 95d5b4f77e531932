"""Dead units and spectrum figures of a representation table against numpy by hand."""

import math

import numpy as np
import pytest

from common.representations.spectrum import SpectrumAccumulator, eigenvalues, spectrum


def _reference(m: np.ndarray) -> dict:
    """The module docstring's formulas, written directly (numpy's covariance, bias=True)."""
    m = m[np.isfinite(m).all(axis=1)].astype(np.float64)
    cov = np.cov(m, rowvar=False, bias=True)
    lam = np.clip(np.linalg.eigvalsh(cov), 0, None)
    p = lam / lam.sum()
    p = p[p > 0]
    return {"top_share": lam.max() / lam.sum(),
            "participation_ratio": lam.sum() ** 2 / (lam**2).sum(),
            "effective_rank": math.exp(-(p * np.log(p)).sum())}


def test_hand_example_two_independent_units():
    # x = [[1, 0], [-1, 0], [0, 2], [0, -2]] (+ a dead third unit at 5): covariance
    # diag(2/4, 8/4, 0) = diag(0.5, 2, 0); sum 2.5, top share 2/2.5 = 0.8,
    # PR 2.5^2 / (0.25 + 4) = 6.25 / 4.25, entropy rank exp(-(0.2 ln 0.2 + 0.8 ln 0.8))
    x = np.array([[1, 0, 5], [-1, 0, 5], [0, 2, 5], [0, -2, 5]], dtype=np.float32)
    s = spectrum(x)
    assert (s.rows, s.dim, s.dead_units) == (4, 3, 1)
    assert s.top_share == pytest.approx(0.8)
    assert s.participation_ratio == pytest.approx(6.25 / 4.25)
    assert s.effective_rank == pytest.approx(math.exp(-(0.2 * math.log(0.2)
                                                         + 0.8 * math.log(0.8))))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_and_chunks_merge_to_the_whole(seed):
    rng = np.random.default_rng(seed)
    # 5 latent directions in 12 units, with unequal scales, an offset and 2 ReLU-dead units
    m = rng.normal(size=(403, 5)) * [3, 2, 1, 0.5, 0.2] @ rng.normal(size=(5, 12)) + 100.0
    m[:, [3, 7]] = 0.0
    whole = spectrum(m)
    ref = _reference(m)
    assert whole.dead_units == 2
    for name, value in ref.items():
        assert getattr(whole, name) == pytest.approx(value, rel=1e-9), name
    assert 1 < whole.effective_rank < 5 + 1e-9 and whole.participation_ratio <= 5 + 1e-9
    bounds = [0, 1, 2, 50, 51, 300, 403]
    accs = [SpectrumAccumulator().add(m[a:b]) for a, b in zip(bounds[:-1], bounds[1:],
                                                             strict=True)]
    merged = accs[0].merge(accs[1]).merge(accs[2]).merge(
        accs[3].merge(accs[4]).merge(accs[5])).result()
    for name in ("top_share", "participation_ratio", "effective_rank"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-9)
    assert (merged.rows, merged.dead_units) == (403, 2)


def test_one_direction_in_disguise_is_rank_one():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(500, 1))
    x = z @ rng.normal(size=(1, 64)) + rng.normal(size=64)  # 64 wide, one direction
    s = spectrum(x)
    assert s.dead_units == 0  # no unit is constant...
    assert s.top_share == pytest.approx(1.0)  # ...but all of them move together
    assert s.participation_ratio == pytest.approx(1.0)
    assert s.effective_rank == pytest.approx(1.0, abs=1e-6)
    iso = spectrum(rng.normal(size=(20000, 8)))
    assert 7.9 < iso.effective_rank <= 8 and 7.5 < iso.participation_ratio <= 8


def test_non_finite_rows_are_skipped_and_degenerate_tables():
    x = np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, 2.0], [np.inf, 1.0]])
    s = spectrum(x)  # finite rows [1, 2], [3, 2]: only unit 0 moves
    assert (s.rows, s.dead_units, s.effective_rank) == (4, 1, pytest.approx(1.0))
    const = spectrum(np.ones((10, 4)))
    assert (const.dead_units, const.effective_rank, const.participation_ratio) == (4, 0.0, 0.0)
    assert math.isnan(const.top_share)
    empty = spectrum(np.zeros((0, 3)))
    assert (empty.rows, empty.dim, empty.effective_rank) == (0, 3, 0.0)
    assert spectrum(np.ones((10, 4))).to_dict()["top_share"] is None


def test_eigenvalues_largest_first():
    x = np.array([[1, 0], [-1, 0], [0, 2], [0, -2]], dtype=np.float64)
    assert eigenvalues(x) == pytest.approx([2.0, 0.5])


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="2-D"):
        spectrum(np.zeros(3))
    with pytest.raises(ValueError, match="dim 3"):
        SpectrumAccumulator().add(np.zeros((2, 3))).add(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="real numeric"):
        spectrum(np.array([["a", "b"]]))
