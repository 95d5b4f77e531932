"""Named snapshots and rollback (paper Sec. 4.3.2: daily snapshots, roll back to a normal one)."""

import numpy as np
import pytest

from serving.store import (
    CR_ITEM,
    CR_USER,
    IR,
    TABLES,
    UR,
    SnapshotExistsError,
    SnapshotNotFoundError,
)
from tests.serving.store.helpers import HALF_LIFE, assert_matches_sequential, random_events


def _contents(store, keys):
    """Every table's rows for ``keys`` (found, vectors, times, versions), counts and dims."""
    out = {}
    for table in TABLES:
        r = store.get(table, keys)
        out[table] = (r.found.tolist(), np.nan_to_num(r.representations, nan=-7.0).tolist(),
                      r.updated_at.tolist(), r.model_version.tolist(), store.count(table))
    return out, store.dims()


def test_rollback_restores_every_table_and_the_ema_state(store):
    rng = np.random.default_rng(0)
    keys = [b"u%d" % k for k in range(6)] + [b"i%d" % k for k in range(6)]
    store.put(UR, keys[:6], rng.normal(size=(6, 4)), updated_at=5, model_version=1)
    day1 = random_events(rng, n=80, users=6, items=6, seconds=30, dim=3)
    store.update_cross(day1.users, day1.items, day1.cr, day1.t)
    expected = _contents(store, keys)
    store.snapshot("day1")

    # An abnormal day: UR overwritten, IR written for the first time, more CR events.
    store.put(UR, keys[:3], rng.normal(size=(3, 4)) * 100, updated_at=50, model_version=2)
    store.put(IR, keys[6:], rng.normal(size=(6, 2)), updated_at=50, model_version=2)
    bad = random_events(rng, n=40, users=6, items=6, seconds=30, dim=3, start=30)
    store.update_cross(bad.users, bad.items, bad.cr * 50, bad.t)
    assert _contents(store, keys) != expected

    store.rollback("day1")
    assert _contents(store, keys) == expected  # IR is empty again and its dimension forgotten
    # The EMA resumes from the restored state (tie groups included) as if day 2 never happened.
    day2 = random_events(rng, n=50, users=6, items=6, seconds=30, dim=3, start=29)
    day2 = day2[np.argsort(day2.t, kind="stable")]
    store.update_cross(day2.users, day2.items, day2.cr, day2.t)
    assert_matches_sequential(store, day1 + day2, HALF_LIFE)


def test_list_delete_and_errors_change_nothing(store, fingerprint):
    store.put(CR_USER, [b"a", b"b"], np.ones((2, 2)), updated_at=1, model_version=1)
    store.snapshot("mon")
    store.put(CR_ITEM, [b"x"], np.ones((1, 2)), updated_at=2, model_version=1)
    store.snapshot("tue")
    snaps = store.list_snapshots()
    assert [s.name for s in snaps] == ["mon", "tue"]
    assert snaps[0].created_at <= snaps[1].created_at
    assert snaps[0].rows == {UR: 0, IR: 0, CR_USER: 2, CR_ITEM: 0}
    assert snaps[1].rows == {UR: 0, IR: 0, CR_USER: 2, CR_ITEM: 1}

    store.delete_snapshot("mon")
    assert [s.name for s in store.list_snapshots()] == ["tue"]
    state = fingerprint()
    refusals = [
        (lambda: store.rollback("mon"), SnapshotNotFoundError, r"^no snapshot named 'mon'$"),
        (lambda: store.delete_snapshot("mon"), SnapshotNotFoundError,
         r"^no snapshot named 'mon'$"),
        (lambda: store.snapshot("tue"), SnapshotExistsError, r"^snapshot 'tue' already exists$"),
        (lambda: store.snapshot("a:b"), ValueError, r"snapshot name must be .*got 'a:b'$"),
        (lambda: store.rollback(""), ValueError, r"snapshot name must be .*got ''$"),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=match):
            call()
        assert fingerprint() == state, match
