"""Representation monitoring statistics and the publish guard's judge (paper Sec. 4.3.2) vs
numpy, without Beam (the Beam transforms: tests/components/test_representation_guard.py)."""

import json
import math

import numpy as np
import pytest

from common.representations.statistics import (
    STATUS_HELD,
    STATUS_PUBLISHED,
    GuardThresholds,
    StatisticsAccumulator,
    TableStatistics,
    judge,
    rate_of_change,
    table_statistics,
)
from tests.common.statistics_reference import (
    assert_statistics_match,
    numpy_statistics,
    random_table,
)

# ---------------------------------------------------------------- statistics


def test_hand_example():
    # X = [[1, -2], [3, NaN], [0, 0], [4, 2]]
    # finite entries F = 1, -2, 3, 0, 0, 4, 2 -> |F| = 7, sum = 8, mean = 8/7
    # sum x^2 = 1 + 4 + 9 + 0 + 0 + 16 + 4 = 34 -> variance = 34/7 - (8/7)^2 = 174/49
    # finite rows: [1,-2] L1 3, [0,0] L1 0, [4,2] L1 6 -> l1_norm = 9/3 = 3
    # min -2, max 4, max_abs 4; nan 1, inf 0; zero rows 1 ([0, 0]; [3, NaN] is not)
    x = np.array([[1, -2], [3, np.nan], [0, 0], [4, 2]], dtype=np.float32)
    s = table_statistics(x)
    assert (s.rows, s.dim, s.nan_count, s.inf_count, s.zero_rows) == (4, 2, 1, 0, 1)
    assert s.mean == pytest.approx(8 / 7)
    assert s.variance == pytest.approx(174 / 49)
    assert s.l1_norm == pytest.approx(3.0)
    assert (s.min, s.max, s.max_abs) == (-2.0, 4.0, 4.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_equal_numpy_and_chunked_merge_equals_whole(seed):
    rng = np.random.default_rng(seed)
    m = random_table(seed, rows=257, dim=7)
    m[rng.integers(0, 257, size=5)] = 0.0  # a few all-zero rows
    whole = table_statistics(m)
    assert_statistics_match(whole, numpy_statistics(m))

    # uneven chunks, each into its own accumulator, merged in a tree; single rows via add_row
    bounds = [0, 1, 40, 41, 130, 200, 257]
    accs = [
        StatisticsAccumulator().add(m[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    left = accs[0].merge(accs[1]).merge(accs[2])
    right = accs[3].merge(accs[4].merge(accs[5]))
    assert_statistics_match(left.merge(right).result(), numpy_statistics(m))

    rowwise = StatisticsAccumulator(batch_size=10)
    for row in m:
        rowwise.add_row(row)
    assert_statistics_match(rowwise.result(), numpy_statistics(m))


def test_large_offset_variance_is_stable():
    # values 1e8 + {0, 1, 2, 3} in many chunks: variance 1.25 (sum-of-squares in float64 would
    # lose it: (1e8)^2 = 1e16 is at the edge of float64 precision)
    m = (1e8 + np.tile(np.arange(4.0), (100, 1))).reshape(-1, 2)  # [200, 2]
    acc = StatisticsAccumulator()
    for chunk in np.array_split(m, 13):
        acc.merge(StatisticsAccumulator().add(chunk))
    s = acc.result()
    assert s.mean == pytest.approx(1e8 + 1.5, rel=1e-15)
    assert s.variance == pytest.approx(1.25, rel=1e-9)


def test_nan_and_inf_are_counted_and_excluded():
    m = random_table(3, rows=50, dim=4).astype(np.float64)
    clean = m.copy()
    m[2, 1] = np.nan
    m[7, 0] = np.inf
    m[7, 3] = -np.inf
    m[9, 2] = np.nan
    s = table_statistics(m)
    assert (s.nan_count, s.inf_count) == (2, 2)
    f = np.delete(clean.ravel(), [2 * 4 + 1, 7 * 4 + 0, 7 * 4 + 3, 9 * 4 + 2])  # finite entries
    assert s.mean == pytest.approx(f.mean())
    assert s.variance == pytest.approx(f.var())
    # rows 2, 7, 9 are excluded from the mean row L1 norm
    assert s.l1_norm == pytest.approx(np.abs(np.delete(clean, [2, 7, 9], axis=0)).sum(1).mean())
    assert math.isfinite(s.max_abs) and s.max_abs == pytest.approx(np.abs(f).max())


def test_empty_and_all_nan_tables():
    s = table_statistics(np.zeros((0, 3)))
    assert (s.rows, s.dim) == (0, 3) and math.isnan(s.mean) and math.isnan(s.l1_norm)
    s = table_statistics(np.full((2, 3), np.nan))
    assert s.nan_count == 6 and math.isnan(s.variance) and math.isnan(s.max_abs)


def test_dim_mismatch_raises():
    acc = StatisticsAccumulator().add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dim 3"):
        acc.add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="dim 3"):
        acc.merge(StatisticsAccumulator().add_row(np.zeros(5)))


def test_to_dict_from_dict_round_trip_is_json_safe():
    s = table_statistics(np.array([[1.0, np.nan], [np.inf, 2.0]]))
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert TableStatistics.from_dict(d) == s
    nan_table = table_statistics(np.full((1, 2), np.nan))
    d = json.loads(json.dumps(nan_table.to_dict(), allow_nan=False))
    assert d["mean"] is None and math.isnan(TableStatistics.from_dict(d).mean)
    with pytest.raises(KeyError, match="variance"):
        TableStatistics.from_dict({k: v for k, v in d.items() if k != "variance"})


def test_spectrum_figures_are_in_the_statistics_and_merge():
    rng = np.random.default_rng(5)
    m = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 6))  # rank 3 in 6 units
    m[:, 0] = 0.0  # a dead unit
    whole = table_statistics(m)
    assert whole.dead_units == 1 and 1 < whole.effective_rank <= 3 + 1e-9
    acc = StatisticsAccumulator(batch_size=7)
    for row in m[:100]:
        acc.add_row(row)
    acc.merge(StatisticsAccumulator().add(m[100:]))
    merged = acc.result()
    assert merged.effective_rank == pytest.approx(whole.effective_rank, rel=1e-9)
    assert merged.participation_ratio == pytest.approx(whole.participation_ratio, rel=1e-9)
    assert merged.dead_units == 1


def test_statistics_written_before_the_spectrum_figures_read_back_as_unknown():
    d = table_statistics(random_table(0)).to_dict()
    old = {k: v for k, v in d.items() if k not in (
        "dead_units", "top_share", "participation_ratio", "effective_rank")}
    s = TableStatistics.from_dict(old)
    assert s.dead_units == -1 and math.isnan(s.effective_rank)
    # and the collapse check is skipped against such a live version
    assert judge(table_statistics(random_table(1)), s).publish


# ---------------------------------------------------------------- judge


def test_collapse_onto_one_direction_is_held_though_the_moments_pass():
    rng = np.random.default_rng(7)
    old = rng.normal(size=(2000, 8))
    z = rng.normal(size=(2000, 1))
    new = z * np.ones(8)  # every unit the same: one direction, unit variance, mean 0
    verdict = judge(table_statistics(new), table_statistics(old))
    assert not verdict.publish
    assert [r.split(":")[0] for r in verdict.reasons] == ["collapse"], verdict.reasons
    assert "effective_rank fell" in verdict.reasons[0] and "100.0% of the variance" in (
        verdict.reasons[0])
    # a threshold of 9 lets a drop from ~8 to 1 through
    assert judge(table_statistics(new), table_statistics(old),
                 GuardThresholds(effective_rank_drop=9.0)).publish
    # a healthy retrain of the same width and rank passes
    assert judge(table_statistics(rng.normal(size=(2000, 8))), table_statistics(old)).publish


def test_rate_of_change_definition():
    old = table_statistics(np.array([[0.0, 2.0]]))  # mean 1, variance 1, l1 2, max_abs 2
    new = table_statistics(np.array([[0.0, 4.0]]))  # mean 2, variance 4, l1 4, max_abs 4
    # mean: |2 - 1| / max(|1|, sqrt(1)) = 1; variance |4 - 1| / 1 = 3; l1 |4-2|/2 = 1
    assert rate_of_change("mean", new, old) == pytest.approx(1.0)
    assert rate_of_change("variance", new, old) == pytest.approx(3.0)
    assert rate_of_change("l1_norm", new, old) == pytest.approx(1.0)
    # mean near 0 uses the old std as the floor: old mean 0, std 2; new mean 0.5 -> 0.25
    old0 = table_statistics(np.array([[-2.0, 2.0]]))
    new0 = table_statistics(np.array([[-1.5, 2.5]]))
    assert rate_of_change("mean", new0, old0) == pytest.approx(0.25)


def test_unchanged_distribution_is_published():
    old = table_statistics(random_table(10))
    v = judge(table_statistics(random_table(11)), old, GuardThresholds())
    assert v.publish and v.status == STATUS_PUBLISHED and v.reasons == []
    assert set(v.rates) == {"mean", "variance", "l1_norm", "max_abs"}
    assert all(r < 0.2 for r in v.rates.values()), v.rates


def test_no_previous_version_publishes_unless_hard_limits_fail():
    v = judge(table_statistics(random_table(12)), None)
    assert v.publish and v.rates == {}
    bad = random_table(12)
    bad[0, 0] = np.nan
    v = judge(table_statistics(bad), None)
    assert not v.publish and v.status == STATUS_HELD
    assert any("nan_count 1" in r for r in v.reasons)


def test_table_with_nan_is_held():
    old = table_statistics(random_table(13))
    bad = random_table(14)
    bad[5, 3] = np.nan
    bad[6, 0] = np.inf
    v = judge(table_statistics(bad), old)
    assert not v.publish
    assert any(r.startswith("nan_count 1") for r in v.reasons)
    assert any(r.startswith("inf_count 1") for r in v.reasons)


def test_scaled_table_is_held_naming_statistics():
    old = table_statistics(random_table(15))
    v = judge(table_statistics(random_table(16) * 100), old)
    assert not v.publish and v.status == STATUS_HELD
    # variance grows by ~100^2 -> rate ~9999; l1 and max_abs by ~100 -> rate ~99
    assert v.rates["variance"] == pytest.approx(9999, rel=0.1)
    assert v.rates["l1_norm"] == pytest.approx(99, rel=0.1)
    named = {r.split()[0] for r in v.reasons}
    assert {"variance", "l1_norm", "max_abs"} <= named
    var_reason = next(r for r in v.reasons if r.startswith("variance changed by"))
    assert "threshold 1" in var_reason and "->" in var_reason


def test_all_zero_table_is_held():
    old = table_statistics(random_table(17))
    v = judge(table_statistics(np.zeros((1000, 16))), old)
    assert not v.publish
    assert any(r.startswith("zero_rows share 1") for r in v.reasons)
    # mean row L1 norm collapses to 0: rate exactly 1 > 0.5
    assert v.rates["l1_norm"] == pytest.approx(1.0)
    assert any(r.startswith("l1_norm changed by 1x") for r in v.reasons)


def test_dim_change_and_row_shrink_are_held():
    old = table_statistics(random_table(18))
    v = judge(table_statistics(random_table(19, dim=8)), old)
    assert not v.publish and "dim changed (16 -> 8)" in v.reasons
    v = judge(table_statistics(random_table(19, rows=400)), old)  # (1000 - 400) / 1000 = 0.6 > 0.5
    assert not v.publish and any(r.startswith("rows shrank by 0.6") for r in v.reasons)
    v = judge(table_statistics(random_table(19, rows=600)), old)  # 0.4 <= 0.5
    assert v.publish, v.reasons


def test_mean_shift_is_held_and_threshold_is_respected():
    old = table_statistics(random_table(20, loc=0.0, scale=1.0))
    shifted = table_statistics(random_table(21, loc=0.8, scale=1.0))  # rate ~0.8 / 1 in std units
    v = judge(shifted, old)
    assert not v.publish and any(r.startswith("mean changed by") for r in v.reasons)
    assert judge(shifted, old, GuardThresholds(mean=1.0, max_abs=3.0, l1_norm=1.0)).publish


def test_empty_table_is_held():
    v = judge(table_statistics(np.zeros((0, 16))), None)
    assert not v.publish and "rows is 0 (empty table)" in v.reasons


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"variance": -1.0}, "variance"),
        ({"mean": math.nan}, "mean"),
        ({"max_zero_row_share": 1.5}, "max_zero_row_share"),
        ({"max_row_shrink": -0.1}, "max_row_shrink"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_thresholds_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"GuardThresholds.{name}"):
        GuardThresholds(**kwargs)
