"""Bulk load of the pipeline's published tables (common/representations/tables.py format)."""

import numpy as np
import pytest

from common.representations.ema import aggregate_sequential, half_life_decay
from common.representations.tables import FILE_SUFFIX, encode_row
from serving.store import CR_ITEM, CR_USER, IR, UR, GuardRefusedError
from tests.serving.store.helpers import HALF_LIFE, assert_matches_sequential, random_events


def _write_table(directory, keys, vectors, updated_at, version, shards=2) -> str:
    """Writes a published table as gzip TFRecord shards; returns the glob pattern."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for s in range(shards):
        path = directory / f"part-{s:05d}-of-{shards:05d}{FILE_SUFFIX}"
        with tf.io.TFRecordWriter(str(path), options) as w:
            for i in range(s, len(keys), shards):
                w.write(encode_row(keys[i], vectors[i], int(updated_at[i]), version))
    return str(directory / f"part-*{FILE_SUFFIX}")


def test_bulk_load_keeps_every_row(store, tmp_path):
    rng = np.random.default_rng(0)
    keys = [b"u%d" % i for i in range(50)]
    vectors = rng.normal(size=(50, 6)).astype(np.float32)
    updated_at = rng.integers(0, 1000, 50)
    pattern = _write_table(tmp_path / "7" / "user", keys, vectors, updated_at, version=7)
    result = store.bulk_load(UR, pattern)
    assert result.rows == 50 and result.verdict.publish
    rows = store.get(UR, keys[::-1])
    np.testing.assert_array_equal(rows.representations, vectors[::-1])
    np.testing.assert_array_equal(rows.updated_at, updated_at[::-1])
    assert (rows.model_version == 7).all() and store.count(UR) == 50


def test_bulk_loaded_cross_tables_continue_with_online_events(store, tmp_path):
    # Day 1 aggregated offline (aggregate_sequential, as the pipeline does) and published;
    # day-2 events, all later, continue the EMA online from the loaded rows: the store must
    # then hold the aggregate of the whole stream, day 1 + day 2.
    rng = np.random.default_rng(1)
    day1 = random_events(rng, n=120, users=5, items=4, seconds=50, dim=3)
    day2 = random_events(rng, n=80, users=7, items=4, seconds=30, dim=3, start=50)
    beta = half_life_decay(HALF_LIFE)
    for table, ids in ((CR_USER, day1.users), (CR_ITEM, day1.items)):
        agg = aggregate_sequential(np.array(ids, dtype=object), day1.t, day1.cr, beta)
        pattern = _write_table(tmp_path / table, list(agg), [v for v, _ in agg.values()],
                               [t for _, t in agg.values()], version=3)
        assert store.bulk_load(table, pattern).rows == len(agg)
    store.update_cross(day2.users, day2.items, day2.cr, day2.t, model_version=4)
    assert_matches_sequential(store, day1 + day2, HALF_LIFE)


def test_bulk_load_guard_and_missing_files_change_nothing(store, fingerprint, tmp_path):
    rng = np.random.default_rng(2)
    keys = [b"i%d" % i for i in range(100)]
    store.bulk_load(IR, _write_table(tmp_path / "1", keys, rng.normal(size=(100, 4)), [1] * 100,
                                     version=1))
    state = fingerprint()
    jump = _write_table(tmp_path / "2", keys, rng.normal(size=(100, 4)) * 30, [2] * 100,
                        version=2)
    with pytest.raises(GuardRefusedError, match=r"^guard refused the write to table 'item': "):
        store.bulk_load(IR, jump)
    assert fingerprint() == state
    with pytest.raises(FileNotFoundError, match=r"no representation table file matches"):
        store.bulk_load(IR, str(tmp_path / "3" / "part-*"))
    assert fingerprint() == state
    assert store.bulk_load(IR, jump, guard=None).rows == 100  # an operator's explicit override
    assert (store.get(IR, keys).model_version == 2).all()
