"""update_cross == the time-aware EMA of Eq. 1-2 with the tie rule (ema.aggregate_sequential)."""

import numpy as np
import pytest

from serving.store import CR_ITEM, CR_USER
from tests.serving.store.helpers import (
    HALF_LIFE,
    Events,
    assert_matches_sequential,
    random_events,
)


def test_worked_example_with_a_tie_split_across_calls(store):
    # half-life 10 s: beta(10) = 0.5.  t=0: CR(u) = 2 (first event initialises).
    # t=10: 0.5 * 2 + 0.5 * 4 = 3.  Another t=10 event (8) in a later call joins the tie:
    # mean(4, 8) = 6 replaces 4, so CR(u) = 0.5 * 2 + 0.5 * 6 = 4.  t=20: 0.5 * 4 + 0.5 * 0 = 2.
    def one(x: float, t: int, item: bytes) -> None:
        store.update_cross([b"u"], [item], np.array([[x]], np.float32), [t], model_version=t)

    one(2.0, 0, b"i0")
    one(4.0, 10, b"i1")
    assert store.get(CR_USER, [b"u"]).representations[0, 0] == pytest.approx(3.0)
    one(8.0, 10, b"i2")
    assert store.get(CR_USER, [b"u"]).representations[0, 0] == pytest.approx(4.0)
    one(0.0, 20, b"i1")
    rows = store.get(CR_USER, [b"u"])
    assert rows.representations[0, 0] == pytest.approx(2.0)
    assert rows.updated_at[0] == 20 and rows.model_version[0] == 20
    # CR(i1): 4 at t=10, then 0.5 * 4 + 0.5 * 0 = 2 at t=20.
    assert store.get(CR_ITEM, [b"i1"]).representations[0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_time_ordered_replay_in_random_batches_matches_sequential(store, seed):
    rng = np.random.default_rng(seed)
    events = random_events(rng, n=400, users=7, items=5, seconds=60, dim=6)
    order = np.lexsort((rng.random(400), events.t))  # time order, ties in random order
    events = events[order]
    cuts = np.sort(rng.choice(np.arange(1, 400), size=30, replace=False))  # splits ties too
    for part in np.split(np.arange(400), cuts):
        batch = events[part]
        result = store.update_cross(batch.users, batch.items, batch.cr, batch.t)
        assert (result.events, result.late_user, result.late_item) == (len(part), 0, 0)
    assert_matches_sequential(store, events, HALF_LIFE)


def test_one_shuffled_call_matches_sequential(store):
    events = random_events(np.random.default_rng(3), n=300, users=4, items=9, seconds=40, dim=3)
    store.update_cross(events.users, events.items, events.cr, events.t)
    assert_matches_sequential(store, events, HALF_LIFE)


def test_late_events_are_skipped_and_counted(store):
    store.update_cross([b"u", b"u"], [b"i", b"j"], np.ones((2, 2), np.float32), [50, 60])
    before = store.get(CR_USER, [b"u"])
    result = store.update_cross([b"u", b"u"], [b"i", b"k"],
                                np.full((2, 2), 9.0, np.float32), [40, 59])
    # CR(u) is at t=60: both events are late. CR(i) is at t=50: t=40 is late. CR(k) is new.
    assert (result.events, result.late_user, result.late_item) == (2, 2, 1)
    after = store.get(CR_USER, [b"u"])
    np.testing.assert_array_equal(after.representations, before.representations)
    assert after.updated_at[0] == 60
    assert store.get(CR_ITEM, [b"k"]).updated_at[0] == 59


def test_a_put_cross_row_continues_as_one_event(store):
    # A row put into CR(u) / CR(i) (e.g. the pipeline's aggregated table) counts as one event
    # at its updated_at: later events, and events of that same second, continue from it.
    rng = np.random.default_rng(4)
    seed_rows = Events([b"u0", b"u1"], [b"i0", b"i1"],
                       rng.normal(size=(2, 5)).astype(np.float32), np.array([100, 100]))
    store.put(CR_USER, seed_rows.users, seed_rows.cr, seed_rows.t, model_version=1)
    store.put(CR_ITEM, seed_rows.items, seed_rows.cr, seed_rows.t, model_version=1)
    later = random_events(rng, n=60, users=2, items=2, seconds=30, dim=5, start=100)
    later = later[np.argsort(later.t, kind="stable")]
    for s in range(0, 60, 7):
        batch = later[s:s + 7]
        store.update_cross(batch.users, batch.items, batch.cr, batch.t)
    assert_matches_sequential(store, seed_rows + later, HALF_LIFE)


@pytest.mark.parametrize("cr_domains", ["ad", "all"])
def test_domains_select_the_events_that_fold(store, cr_domains):
    """With each event's domain, a content event folds only under "all" (paper Sec. 4.3.1);
    the result is the EMA of the selected events alone."""
    events = random_events(np.random.default_rng(5), n=200, users=5, items=6, seconds=50, dim=3)
    domains = [b"ad" if k % 3 == 0 else b"content" for k in range(200)]
    result = store.update_cross(events.users, events.items, events.cr, events.t,
                                domains=domains, cr_domains=cr_domains)
    fold = np.array([d == b"ad" or cr_domains == "all" for d in domains])
    assert (result.events, result.not_folded) == (200, int((~fold).sum()))
    assert_matches_sequential(store, events[np.flatnonzero(fold)], HALF_LIFE)


def test_only_content_events_leave_the_tables_untouched(store):
    store.update_cross([b"u"], [b"i"], np.ones((1, 2), np.float32), [10], domains=[b"ad"])
    before = store.get(CR_USER, [b"u"])
    result = store.update_cross([b"u", b"v"], [b"i", b"j"], np.full((2, 2), 5.0, np.float32),
                                [20, 20], domains=["content", "content"])
    assert (result.not_folded, result.late_user, result.late_item) == (2, 0, 0)
    after = store.get(CR_USER, [b"u", b"v"])
    assert after.updated_at[0] == before.updated_at[0] == 10 and not after.found[1]
    np.testing.assert_array_equal(after.representations[0], before.representations[0])
