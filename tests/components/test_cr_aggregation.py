"""The Beam transforms of the time-aware EMA of CR(u,i) into CR(u), CR(i) (paper Sec. 3.3,
Eq. 1-2) vs the sequential reference (the EMA itself: tests/common/test_ema.py)."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from common.representations import cr_folding
from common.representations.ema import aggregate_sequential
from components.cr_aggregation import AggregateCrossRepresentations, PointInTimeCrossRepresentations
from tests.common.ema_reference import BETA10, naive_as_of, random_events


def _batches(seed: int, n_batches: int = 5, cr_domains: str = cr_folding.ALL):
    """Event batches with a domain each (about 30% ad), and the events that fold under
    `cr_domains` (the reference's input)."""
    users, items, ts, crs = random_events(seed, n=500, t_range=25)
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
    fold = np.ones(len(users), bool) if cr_domains == cr_folding.ALL else domains == b"ad"
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


@pytest.mark.parametrize("cr_domains", cr_folding.CHOICES)
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


@pytest.mark.parametrize("cr_domains", cr_folding.CHOICES)
def test_beam_point_in_time_matches_reference(cr_domains):
    batches, (users, items, ts, crs) = _batches(1, cr_domains=cr_domains)
    rng = np.random.default_rng(5)
    nq = 80
    qk = np.array(items[rng.integers(0, len(items), nq)].tolist() + [b"nobody"], object)
    qt = np.append(ts[rng.integers(0, len(ts), nq)], 1_010).astype(np.int64)
    row_id = np.arange(nq + 1, dtype=np.int64) + 1_000
    ref_cr, ref_upd = naive_as_of(items, ts, crs, qk, qt, BETA10, crs.shape[1])
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
            half_life_seconds=10.0, num_buckets=2, cr_domains=cr_folding.ALL)
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
        cr_folding.fold_mask(np.array([b"ad"], object), bad)


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
