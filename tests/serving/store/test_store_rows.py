"""Batch get/put of the representation store, on sqlite and redis."""

import numpy as np
import pytest

from serving.store import (
    CR_USER,
    IR,
    UR,
    DimensionError,
    open_store,
)


def test_put_then_get_returns_the_rows_and_flags_missing_keys(store):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 4))  # float64 in, float32 stored
    result = store.put(UR, [b"a", "b", b"c"], vectors, updated_at=[10, 11, 12], model_version=5)
    assert result.rows == 3 and result.verdict is None
    rows = store.get(UR, ["c", b"zz", b"a", "b"])
    assert rows.keys == [b"c", b"zz", b"a", b"b"]
    np.testing.assert_array_equal(rows.found, [True, False, True, True])
    np.testing.assert_array_equal(rows.representations[[0, 2, 3]],
                                  vectors[[2, 0, 1]].astype(np.float32))
    assert np.isnan(rows.representations[1]).all()
    np.testing.assert_array_equal(rows.updated_at, [12, -1, 10, 11])
    np.testing.assert_array_equal(rows.model_version, [5, -1, 5, 5])
    assert rows.representations.dtype == np.float32


def test_put_upserts_and_records_the_dimension(store):
    store.put(IR, [b"a", b"b"], np.zeros((2, 3), np.float32) + 1, updated_at=1, model_version=1)
    store.put(IR, [b"b", b"c"], np.full((2, 3), 2.0, np.float32), updated_at=2, model_version=2)
    rows = store.get(IR, [b"a", b"b", b"c"])
    np.testing.assert_array_equal(rows.representations[:, 0], [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(rows.model_version, [1, 2, 2])
    assert store.dims() == {IR: 3}
    assert store.count(IR) == 3 and store.count(UR) == 0
    with pytest.raises(DimensionError, match=r"^table 'item' has dimension 3, got "
                                             r"representations of dimension 2$"):
        store.put(IR, [b"a"], np.ones((1, 2), np.float32), 1, 1)


def test_replace_drops_the_other_rows(store):
    store.put(UR, [b"a", b"b"], np.ones((2, 2), np.float32), 1, 1)
    store.put(UR, [b"c"], np.ones((1, 2), np.float32), 2, 2, replace=True)
    np.testing.assert_array_equal(store.get(UR, [b"a", b"b", b"c"]).found, [False, False, True])


def test_clear_forgets_rows_and_dimension(store):
    store.put(UR, [b"a"], np.ones((1, 2), np.float32), 1, 1)
    store.clear(UR)
    assert store.count(UR) == 0 and UR not in store.dims()
    store.put(UR, [b"a"], np.ones((1, 5), np.float32), 1, 1)  # a new dimension is accepted
    assert store.dims() == {UR: 5}


def test_get_of_a_table_never_written(store):
    rows = store.get(CR_USER, [b"a", b"b"])
    assert not rows.found.any() and rows.representations.shape == (2, 0)


def test_data_survives_reopening(store_url):
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    with open_store(store_url) as s:
        s.put(UR, [b"a", b"b"], vectors, [3, 4], 9)
    with open_store(store_url) as s:
        rows = s.get(UR, [b"b", b"a"])
    np.testing.assert_array_equal(rows.representations, vectors[::-1])


@pytest.mark.parametrize("url, match", [
    ("mysql://localhost/x", r"^unsupported store url 'mysql://localhost/x'"),
    ("sqlite://", r"names no database file"),
    ("sqlite://:memory:", r"names no database file"),
])
def test_open_store_refuses_bad_urls(url, match):
    with pytest.raises(ValueError, match=match):
        open_store(url)


def test_open_store_refuses_a_bad_half_life(tmp_path):
    with pytest.raises(ValueError, match=r"half_life_seconds must be a finite number > 0"):
        open_store(f"sqlite://{tmp_path}/x.db", half_life_seconds=0)


def test_redis_prefixes_keep_stores_apart(redis_url):
    with open_store(redis_url + "?prefix=a:") as a, open_store(redis_url + "?prefix=b:") as b:
        a.clear(UR), b.clear(UR)
        a.put(UR, [b"k"], np.ones((1, 2), np.float32), 1, 1)
        b.put(UR, [b"k"], np.ones((1, 3), np.float32), 1, 1)
        assert a.dims() == {UR: 2} and b.dims() == {UR: 3}
        a.clear(UR)
        assert b.get(UR, [b"k"]).found.all()


def test_only_newer_keeps_later_rows(store_url):
    """`only_newer`: a stored row with a later updated_at survives an older write."""
    store = open_store(store_url)
    try:
        store.put("user", [b"a", b"b"], np.ones((2, 3)), [10, 10], 1)
        result = store.put("user", [b"a", b"b", b"c"], np.full((3, 3), 2.0), [5, 10, 7], 2,
                           only_newer=True)
        assert result.rows == 2  # b (same time: the new write wins) and c (new key)
        rows = store.get("user", [b"a", b"b", b"c"])
        np.testing.assert_array_equal(rows.representations[:, 0], [1.0, 2.0, 2.0])
        assert rows.updated_at.tolist() == [10, 10, 7]
        with pytest.raises(ValueError, match="only_newer"):
            store.put("user", [b"a"], np.ones((1, 3)), 20, 3, only_newer=True, replace=True)
    finally:
        store.close()
