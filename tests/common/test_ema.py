"""Time-aware EMA of CR(u,i) into CR(u), CR(i) (paper Sec. 3.3, Eq. 1-2) vs naive references,
without Beam (the Beam transforms: tests/components/test_cr_aggregation.py)."""

import numpy as np
import pytest

from common.representations.ema import (
    aggregate_sequential,
    aggregate_sorted,
    as_of,
    half_life_decay,
)
from tests.common.ema_reference import BETA10, naive_as_of, random_events


def _assert_matches_reference(uniq, cr, updated_at, ref):
    assert sorted(uniq.tolist()) == sorted(ref)
    for k, v, u in zip(uniq.tolist(), cr, updated_at.tolist(), strict=True):
        np.testing.assert_allclose(v, ref[k][0], rtol=1e-5, atol=1e-6, err_msg=repr(k))
        assert u == ref[k][1]


# ---------------------------------------------------------------- worked examples


def test_worked_example_half_life():
    # half-life 10 s: t=0 initialises CR = [1, 0]; t=10: beta(10) = 0.5,
    # CR = 0.5 * [1, 0] + 0.5 * [0, 1] = [0.5, 0.5];
    # t=30: beta(20) = 0.25, CR = 0.25 * [0.5, 0.5] + 0.75 * [1, 1] = [0.875, 0.875].
    keys = np.array([b"u", b"u", b"u"], object)
    ts = np.array([0, 10, 30])
    crs = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    for f in (aggregate_sorted,):
        uniq, cr, upd = f(keys, ts, crs, BETA10)
        assert uniq.tolist() == [b"u"]
        np.testing.assert_allclose(cr[0], [0.875, 0.875], rtol=1e-6)
        assert upd.tolist() == [30]
    ref = aggregate_sequential(keys, ts, crs, BETA10)
    np.testing.assert_allclose(ref[b"u"][0], [0.875, 0.875], rtol=1e-12)
    assert ref[b"u"][1] == 30


def test_tie_rule_averages_same_second_events():
    # t=0: [1, 0]; t=10: two events [0, 1] and [0, 3] -> one event mean [0, 2];
    # CR = 0.5 * [1, 0] + 0.5 * [0, 2] = [0.5, 1.0]. Without the rule, b(0) = 1 would drop [0, 3].
    keys = np.array([b"u"] * 3, object)
    ts = np.array([0, 10, 10])
    crs = np.array([[1, 0], [0, 1], [0, 3]], np.float32)
    _, cr, upd = aggregate_sorted(keys, ts, crs, BETA10)
    np.testing.assert_allclose(cr[0], [0.5, 1.0], rtol=1e-6)
    assert upd.tolist() == [10]
    np.testing.assert_allclose(aggregate_sequential(keys, ts, crs, BETA10)[b"u"][0], [0.5, 1.0])
    # First-event ties initialise with the mean too.
    _, cr, _ = aggregate_sorted(keys[:2], np.array([5, 5]), crs[1:], BETA10)
    np.testing.assert_allclose(cr[0], [0.0, 2.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_result_independent_of_input_order(seed):
    users, _, ts, crs = random_events(seed)
    uniq, cr, upd = aggregate_sorted(users, ts, crs, BETA10)
    ref = aggregate_sequential(users, ts, crs, BETA10)
    perm = np.random.default_rng(seed + 100).permutation(len(users))
    uniq_p, cr_p, upd_p = aggregate_sorted(users[perm], ts[perm], crs[perm], BETA10)
    ref_p = aggregate_sequential(users[perm], ts[perm], crs[perm], BETA10)
    assert uniq.tolist() == uniq_p.tolist()
    np.testing.assert_allclose(cr, cr_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(upd, upd_p)
    for k in ref:
        np.testing.assert_allclose(ref[k][0], ref_p[k][0], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- vectorised == reference


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("side", ["user", "item"])
def test_sorted_matches_sequential(seed, side):
    users, items, ts, crs = random_events(seed, t_range=[5, 40, 10_000][seed % 3])
    keys = users if side == "user" else items
    uniq, cr, upd = aggregate_sorted(keys, ts, crs, BETA10)
    assert cr.dtype == np.float32 and upd.dtype == np.int64 and cr.shape == (len(uniq), 4)
    _assert_matches_reference(uniq, cr, upd, aggregate_sequential(keys, ts, crs, BETA10))


def test_one_hot_key_long_run():
    # One key with 3000 distinct timestamps exercises many scan steps (log2 3000 ~ 12).
    rng = np.random.default_rng(7)
    n = 3000
    keys = np.array([b"hot"] * n + [b"cold"] * 3, object)
    ts = np.concatenate([rng.permutation(n) * 3, [1, 2, 2]]).astype(np.int64)
    crs = rng.normal(size=(n + 3, 3)).astype(np.float32)
    beta = half_life_decay(50.0)
    uniq, cr, upd = aggregate_sorted(keys, ts, crs, beta)
    _assert_matches_reference(uniq, cr, upd, aggregate_sequential(keys, ts, crs, beta))


def test_custom_beta():
    def step_beta(dt):  # keep the old state fully within 5 s, forget it entirely afterwards
        return np.where(dt <= 5, 1.0, 0.0)

    users, _, ts, crs = random_events(3, t_range=60)
    uniq, cr, upd = aggregate_sorted(users, ts, crs, step_beta)
    _assert_matches_reference(uniq, cr, upd, aggregate_sequential(users, ts, crs, step_beta))
    # Hand check: beta = 0 replaces, beta = 1 keeps.
    keys = np.array([b"a", b"a", b"a"], object)
    _, cr, _ = aggregate_sorted(keys, np.array([0, 3, 20]), np.eye(3, dtype=np.float32), step_beta)
    np.testing.assert_allclose(cr[0], [0, 0, 1])
    _, cr, _ = aggregate_sorted(keys[:2], np.array([0, 3]), np.eye(2, dtype=np.float32), step_beta)
    np.testing.assert_allclose(cr[0], [1, 0])


def test_empty_input():
    uniq, cr, upd = aggregate_sorted(
        np.array([], object), np.array([], np.int64), np.zeros((0, 3), np.float32), BETA10
    )
    assert uniq.shape == (0,) and cr.shape == (0, 3) and upd.shape == (0,)


# ---------------------------------------------------------------- validation


def _ok():
    return np.array([b"a", b"b"], object), np.array([1, 2]), np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("f", [aggregate_sorted, aggregate_sequential])
def test_bad_inputs(f):
    keys, ts, crs = _ok()
    bad = crs.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^events: crs row 1 is not finite \(NaN or Inf\)$"):
        f(keys, ts, bad, BETA10)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"crs row 1 is not finite"):
        f(keys, ts, bad, BETA10)
    with pytest.raises(ValueError, match=r"crs must have shape \(2, d\) like keys, got \(3,\)"):
        f(keys, ts, np.zeros(3, np.float32), BETA10)
    with pytest.raises(ValueError, match=r"crs must have shape \(2, d\) like keys, got \(3, 3\)"):
        f(keys, ts, np.zeros((3, 3), np.float32), BETA10)
    with pytest.raises(ValueError, match=r"timestamps must have shape \(2,\) like keys, got \(1,"):
        f(keys, np.array([1]), crs, BETA10)
    with pytest.raises(TypeError, match=r"timestamps must be integers, got dtype float64"):
        f(keys, np.array([1.0, 2.0]), crs, BETA10)
    with pytest.raises(TypeError, match=r"crs must be a float array, got dtype int64"):
        f(keys, ts, np.zeros((2, 3), np.int64), BETA10)


@pytest.mark.parametrize("h", [0, -1.5, float("nan"), float("inf"), "x"])
def test_half_life_must_be_positive(h):
    msg = rf"^half_life_seconds must be a finite number > 0, got {h!r}$"
    with pytest.raises(ValueError, match=msg):
        half_life_decay(h)


@pytest.mark.parametrize("f", [aggregate_sorted, aggregate_sequential])
def test_beta_out_of_range(f):
    keys = np.array([b"a", b"a"], object)
    crs = np.zeros((2, 2), np.float32)
    msg = r"^beta\(dt\) must return values in \[0, 1\], got 2\.0 for dt=4\.0$"
    with pytest.raises(ValueError, match=msg):
        f(keys, np.array([0, 4]), crs, lambda dt: dt / 2)
    with pytest.raises(ValueError, match=r"got nan for dt=4\.0"):
        f(keys, np.array([0, 4]), crs, lambda dt: dt * np.nan)


# ---------------------------------------------------------------- as of (no leakage)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_as_of_matches_reference_on_strictly_earlier_events(seed):
    users, _, ts, crs = random_events(seed, n=300, t_range=30)
    rng = np.random.default_rng(seed + 10)
    nq = 120
    qk = np.concatenate([users[rng.integers(0, len(users), nq - 5)], [b"unknown"] * 5])
    qk = np.array(qk.tolist(), object)
    # Half the queries at exactly an event timestamp: those events must not be seen.
    qt = np.where(
        rng.random(nq) < 0.5, ts[rng.integers(0, len(ts), nq)], rng.integers(995, 1_035, nq)
    ).astype(np.int64)
    cr, upd = as_of(users, ts, crs, qk, qt, BETA10)
    ref_cr, ref_upd = naive_as_of(users, ts, crs, qk, qt, BETA10, crs.shape[1])
    assert cr.dtype == np.float32 and upd.dtype == np.int64
    np.testing.assert_array_equal(upd, ref_upd)
    np.testing.assert_array_equal(np.isnan(cr), np.isnan(ref_cr))
    np.testing.assert_allclose(cr, ref_cr, rtol=1e-5, atol=1e-6)
    assert ((upd == -1) | (upd < qt)).all()  # never an event at or after the row time
    assert (upd[-5:] == -1).all()


def test_as_of_is_strict():
    keys = np.array([b"u", b"u"], object)
    ts = np.array([10, 20])
    crs = np.array([[1, 0], [0, 1]], np.float32)
    cr, upd = as_of(keys, ts, crs, np.array([b"u"] * 4, object), np.array([10, 11, 20, 21]), BETA10)
    assert upd.tolist() == [-1, 10, 10, 20]
    assert np.isnan(cr[0]).all()
    np.testing.assert_allclose(cr[1:3], [[1, 0], [1, 0]])
    np.testing.assert_allclose(cr[3], [0.5, 0.5])
