"""Time-aware EMA of CR(u,i) into CR(u), CR(i) (paper Sec. 3.3, Eq. 1-2) vs naive references."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from components.cr_aggregation import (
    AggregateCrossRepresentations,
    PointInTimeCrossRepresentations,
    aggregate_sequential,
    aggregate_sorted,
    as_of,
    half_life_decay,
)
from trainer.representations import cr_domains as CD
from trainer.representations.tables import TableError

BETA10 = half_life_decay(10.0)


def _random_events(seed: int, n: int = 600, d: int = 4, n_keys: int = 30, t_range: int = 40):
    """Skewed keys (Zipf-like), many ties (timestamps from a small range)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_keys + 1)
    users = np.array([b"u%d" % k for k in rng.choice(n_keys, size=n, p=p / p.sum())], object)
    items = np.array([b"i%d" % k for k in rng.integers(0, n_keys // 2, size=n)], object)
    ts = rng.integers(1_000, 1_000 + t_range, size=n).astype(np.int64)
    crs = rng.normal(size=(n, d)).astype(np.float32)
    return users, items, ts, crs


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
    users, _, ts, crs = _random_events(seed)
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
    users, items, ts, crs = _random_events(seed, t_range=[5, 40, 10_000][seed % 3])
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

    users, _, ts, crs = _random_events(3, t_range=60)
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


def _naive_as_of(keys, ts, crs, qk, qt, beta, d):
    out = np.full((len(qk), d), np.nan)
    upd = np.full(len(qk), -1)
    for q, (k, t) in enumerate(zip(qk.tolist(), qt.tolist(), strict=True)):
        sel = (keys == k).astype(bool) & (ts < t)
        ref = aggregate_sequential(keys[sel], ts[sel], crs[sel], beta)
        if k in ref:
            out[q], upd[q] = ref[k]
    return out, upd


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_as_of_matches_reference_on_strictly_earlier_events(seed):
    users, _, ts, crs = _random_events(seed, n=300, t_range=30)
    rng = np.random.default_rng(seed + 10)
    nq = 120
    qk = np.concatenate([users[rng.integers(0, len(users), nq - 5)], [b"unknown"] * 5])
    qk = np.array(qk.tolist(), object)
    # Half the queries at exactly an event timestamp: those events must not be seen.
    qt = np.where(
        rng.random(nq) < 0.5, ts[rng.integers(0, len(ts), nq)], rng.integers(995, 1_035, nq)
    ).astype(np.int64)
    cr, upd = as_of(users, ts, crs, qk, qt, BETA10)
    ref_cr, ref_upd = _naive_as_of(users, ts, crs, qk, qt, BETA10, crs.shape[1])
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


# ---------------------------------------------------------------- Beam


def _batches(seed: int, n_batches: int = 5, cr_domains: str = CD.ALL):
    """Event batches with a domain each (about 30% ad), and the events that fold under
    `cr_domains` (the reference's input)."""
    users, items, ts, crs = _random_events(seed, n=500, t_range=25)
    domains = np.where(np.random.default_rng(seed + 100).random(len(users)) < 0.3,
                       b"ad", b"content").astype(object)
    parts = np.array_split(np.arange(len(users)), n_batches)
    batches = [
        {
            "user_id": users[p],
            "item_id": items[p],
            "timestamp": ts[p],
            "domain": domains[p],
            "cross_representation": crs[p],
        }
        for p in parts
    ]
    fold = np.ones(len(users), bool) if cr_domains == CD.ALL else domains == b"ad"
    assert 0 < fold.sum() <= len(users)
    return batches, (users[fold], items[fold], ts[fold], crs[fold])


def _matches(ref):
    def check(actual):
        try:
            got = {k: (v, u) for k, v, u in actual}
            assert len(got) == len(actual), "duplicate keys in output"
            assert sorted(got) == sorted(ref), "key sets differ"
            for k, (v, u) in got.items():
                assert isinstance(k, bytes) and v.dtype == np.float32
                np.testing.assert_allclose(v, ref[k][0], rtol=1e-5, atol=1e-6)
                assert u == ref[k][1], (k, u, ref[k][1])
        except AssertionError as e:
            raise BeamAssertException(str(e)) from e

    return check


@pytest.mark.parametrize("cr_domains", CD.CHOICES)
def test_beam_aggregate_matches_sequential(cr_domains):
    """Under "ad" the tables are those of the ad events alone (content events leave CR(u),
    CR(i) untouched; keys met only by content are absent); under "all", of every event."""
    batches, (users, items, ts, crs) = _batches(0, cr_domains=cr_domains)
    ref_user = aggregate_sequential(users, ts, crs, BETA10)
    ref_item = aggregate_sequential(items, ts, crs, BETA10)
    with BeamTestPipeline() as p:
        out = (
            p
            | "Create" >> beam.Create(batches)
            | AggregateCrossRepresentations(half_life_seconds=10.0, num_buckets=3,
                                            cr_domains=cr_domains)
        )
        assert_that(out["user"], _matches(ref_user), label="CheckUser")
        assert_that(out["item"], _matches(ref_item), label="CheckItem")


@pytest.mark.parametrize("cr_domains", CD.CHOICES)
def test_beam_point_in_time_matches_reference(cr_domains):
    batches, (users, items, ts, crs) = _batches(1, cr_domains=cr_domains)
    rng = np.random.default_rng(5)
    nq = 80
    qk = np.array(items[rng.integers(0, len(items), nq)].tolist() + [b"nobody"], object)
    qt = np.append(ts[rng.integers(0, len(ts), nq)], 1_010).astype(np.int64)
    row_id = np.arange(nq + 1, dtype=np.int64) + 1_000
    ref_cr, ref_upd = _naive_as_of(items, ts, crs, qk, qt, BETA10, crs.shape[1])
    qbatches = [
        {"key": qk[p], "timestamp": qt[p], "row_id": row_id[p]}
        for p in np.array_split(np.arange(nq + 1), 3)
    ]

    def check(actual):
        try:
            assert sorted(r for r, _, _ in actual) == row_id.tolist()
            for r, v, u in actual:
                q = r - 1_000
                assert u == ref_upd[q], (r, u, ref_upd[q])
                np.testing.assert_allclose(v, ref_cr[q], rtol=1e-5, atol=1e-6)  # NaN == NaN
        except AssertionError as e:
            raise BeamAssertException(str(e)) from e

    with BeamTestPipeline() as p:
        events = p | "Events" >> beam.Create(batches)
        queries = p | "Queries" >> beam.Create(qbatches)
        out = {"events": events, "queries": queries} | PointInTimeCrossRepresentations(
            key_field="item_id", cr_dim=crs.shape[1], half_life_seconds=10.0, num_buckets=3,
            cr_domains=cr_domains)
        assert_that(out, check)


def test_beam_events_without_domains_are_refused_under_ad_only():
    """A stream written before the extractor recorded domains: "all" folds it, "ad" names the
    missing field."""
    batches, (users, _, ts, crs) = _batches(2)
    for b in batches:
        del b["domain"]
    with BeamTestPipeline() as p:
        out = p | beam.Create(batches) | AggregateCrossRepresentations(
            half_life_seconds=10.0, num_buckets=2, cr_domains=CD.ALL)
        assert_that(out["user"], _matches(aggregate_sequential(users, ts, crs, BETA10)))
    with pytest.raises(Exception, match=r"no 'domain' field"):
        with BeamTestPipeline() as p:
            _ = p | beam.Create(batches) | AggregateCrossRepresentations(
                half_life_seconds=10.0, num_buckets=2)


@pytest.mark.parametrize("bad", ["ads", "", None, "AD"])
def test_bad_cr_domains_is_named(bad):
    with pytest.raises(ValueError, match="cr_domains must be one of"):
        AggregateCrossRepresentations(half_life_seconds=10.0, cr_domains=bad)
    with pytest.raises(ValueError, match="cr_domains must be one of"):
        CD.fold_mask(np.array([b"ad"], object), bad)


def test_fold_mask_reads_bytes_and_str():
    domains = np.array([b"ad", b"content", "ad", "content"], object)
    assert CD.fold_mask(domains, CD.AD).tolist() == [True, False, True, False]
    assert CD.fold_mask(np.array(["ad", "content"]), CD.AD).tolist() == [True, False]
    assert CD.fold_mask(domains, CD.ALL).all()
    with pytest.raises(TypeError, match="bytes or str"):
        CD.fold_mask(np.array([1, 2]), CD.AD)
    with pytest.raises(TableError, match="no 'domain' field"):
        CD.select_events({"user_id": np.array([b"u"], object)}, CD.AD)


def test_beam_missing_field_is_named():
    with pytest.raises(Exception, match=r"batch is missing field 'item_id'"):
        with BeamTestPipeline() as p:
            _ = (
                p
                | beam.Create(
                    [
                        {
                            "user_id": np.array([b"a"], object),
                            "timestamp": np.array([1]),
                            "domain": np.array([b"ad"], object),
                            "cross_representation": np.zeros((1, 2), np.float32),
                        }
                    ]
                )
                | AggregateCrossRepresentations(half_life_seconds=10.0, num_buckets=2)
            )
