"""Point-in-time representation features: no row sees a state written at or after its own time,
cold-start keys get zeros and a 0 indicator, the replayed histories equal the store's and the
offline aggregator's arithmetic."""

import numpy as np
import pytest

from common import signatures
from common.representations import ema, tables
from trainer.downstream import point_in_time

HALF_LIFE = 50.0


def _events(rng, n=400, d=3, users=9, span=150):
    keys = np.array([f"u{k}".encode() for k in rng.integers(0, users, n)], dtype=object)
    t = rng.integers(0, span, n).astype(np.int64)  # many same-second ties
    return keys, t, rng.normal(size=(n, d)).astype(np.float32)


def _reference_latest(keys, t, x, digests, key, before):
    """Plain reference: the key's request with the largest (timestamp, digest) before `before`."""
    best = None
    for k, s, v, g in zip(keys, t, x, digests, strict=True):
        if k == key and s < before and (best is None or (s, g) > best[:2]):
            best = (s, g, v)
    return best


def test_history_as_of_is_strictly_before():
    history = point_in_time.RepresentationHistory([b"a", b"a", b"b"], [10, 20, 5],
                                      [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    got = history.as_of([b"a", b"a", b"a", b"a", b"b", b"b", b"c"], [9, 10, 11, 21, 5, 6, 99])
    # a@9: nothing yet; a@10: the state written at 10 is not seen; a@11 -> 1; a@21 -> 2;
    # b@5: not yet; b@6 -> 3; c: never seen.
    np.testing.assert_array_equal(got.found, [0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(got.vectors[:, 0], [0, 0, 1, 2, 0, 3, 0])
    np.testing.assert_array_equal(got.updated_at, [-1, -1, 10, 20, -1, 5, -1])


def test_history_rejects_two_states_in_one_second_and_bad_input():
    with pytest.raises(ValueError, match=r"key b'a' has two states at time 10"):
        point_in_time.RepresentationHistory([b"a", b"a"], [10, 10], [[1.0], [2.0]])
    with pytest.raises(TypeError, match="timestamps must be integers, got dtype float64"):
        point_in_time.RepresentationHistory([b"a"], [1.5], [[1.0]])
    with pytest.raises(ValueError, match=r"vectors must have shape \(1, d\), got \(2, 1\)"):
        point_in_time.RepresentationHistory([b"a"], [1], [[1.0], [2.0]])
    with pytest.raises(TypeError, match="key 1 must be bytes or str, got int"):
        point_in_time.RepresentationHistory([b"a", 7], [1, 2], [[1.0], [2.0]])


def test_aggregated_rows_see_only_earlier_events():
    rng = np.random.default_rng(0)
    keys, t, x = _events(rng)
    history = point_in_time.RepresentationHistory.aggregated(keys, t, x, HALF_LIFE)
    queries = np.array([f"u{k}".encode() for k in range(10)] * 30, dtype=object)  # u9: none
    qt = rng.integers(0, 170, queries.shape[0]).astype(np.int64)
    got = history.as_of(queries, qt)
    beta = ema.half_life_decay(HALF_LIFE)
    for q in range(queries.shape[0]):
        before = (keys == queries[q]) & (t < qt[q])
        if not before.any():
            assert not got.found[q] and got.updated_at[q] == -1
            np.testing.assert_array_equal(got.vectors[q], 0.0)
            continue
        vector, updated = ema.aggregate_sequential(keys[before], t[before], x[before],
                                                   beta)[queries[q]]
        assert got.found[q] and got.updated_at[q] == updated < qt[q]
        np.testing.assert_allclose(got.vectors[q], vector, rtol=1e-5, atol=1e-6)


def test_latest_picks_the_largest_digest_in_a_second():
    rng = np.random.default_rng(1)
    keys, t, x = _events(rng, n=300)
    digests = np.array([tables.sample_digest(bytes([i % 256, i // 256])) for i in range(300)],
                       dtype=object)
    history = point_in_time.RepresentationHistory.latest(keys, t, x, digests)
    for key in np.unique(keys)[:4]:
        for before in (0, 40, 77, 151):
            got = history.as_of([key], [before])
            ref = _reference_latest(keys, t, x, digests, key, before)
            if ref is None:
                assert not got.found[0]
            else:
                assert got.updated_at[0] == ref[0]
                np.testing.assert_array_equal(got.vectors[0], ref[2])


def test_a_base_table_is_continued_like_the_whole_stream():
    """CR: the EMA over early events, published, then continued over later events, equals the
    EMA over the whole stream; UR: a later request replaces the base, an older one is late."""
    rng = np.random.default_rng(2)
    keys, t, x = _events(rng, n=500)
    early = t < 80
    base = point_in_time.RepresentationHistory.aggregated(keys[early], t[early], x[early],
                                                          HALF_LIFE).last()
    continued = point_in_time.RepresentationHistory.aggregated(keys[~early], t[~early], x[~early],
                                                   HALF_LIFE, base=base)
    whole = point_in_time.RepresentationHistory.aggregated(keys, t, x, HALF_LIFE)
    queries = np.repeat(np.unique(keys), 4)
    qt = np.tile(np.array([81, 100, 130, 200]), np.unique(keys).shape[0])
    a, b = continued.as_of(queries, qt), whole.as_of(queries, qt)
    np.testing.assert_array_equal(a.found, b.found)
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)

    base_ur = point_in_time.RepresentationHistory([b"a", b"b"], [50, 50], [[1.0], [2.0]])
    ur = point_in_time.RepresentationHistory.latest(
        [b"a", b"a", b"b"], [40, 60, 50], [[9.0], [3.0], [4.0]], base=base_ur
    )
    got = ur.as_of([b"a", b"a", b"b"], [55, 61, 51])
    # a@40 is older than the base (late, skipped); a@60 is newer; b@50 replaces the base's b@50.
    np.testing.assert_array_equal(got.vectors[:, 0], [1.0, 3.0, 4.0])


def test_attach_gives_zeros_and_indicator_for_cold_start():
    source = point_in_time.HistorySource({
        tables.USER_TABLE: point_in_time.RepresentationHistory([b"u1"], [10], [[1.0, 2.0]]),
        tables.ITEM_TABLE: point_in_time.RepresentationHistory([b"i1"], [10], [[3.0, 4.0, 5.0]]),
        tables.CROSS_USER_TABLE: point_in_time.RepresentationHistory([b"u1"], [20], [[6.0]]),
        tables.CROSS_ITEM_TABLE: point_in_time.RepresentationHistory([b"i1"], [5], [[7.0]]),
    })
    out = point_in_time.attach(source, [b"u1", b"u1", b"u2"], [b"i1", b"i2", b"i1"], [15, 25, 30])
    np.testing.assert_array_equal(out[signatures.UR_FEATURE], [[1, 2], [1, 2], [0, 0]])
    np.testing.assert_array_equal(out[signatures.found_feature(signatures.UR_FEATURE)], [1, 1, 0])
    np.testing.assert_array_equal(out[signatures.IR_FEATURE], [[3, 4, 5], [0, 0, 0], [3, 4, 5]])
    np.testing.assert_array_equal(out[signatures.found_feature(signatures.IR_FEATURE)], [1, 0, 1])
    np.testing.assert_array_equal(out[signatures.CR_USER_FEATURE][:, 0], [0, 6, 0])  # @15: not yet
    np.testing.assert_array_equal(
        out[signatures.found_feature(signatures.CR_ITEM_FEATURE)], [1, 0, 1]
    )
    assert all(v.dtype == np.float32 for v in out.values())
    with pytest.raises(KeyError, match="no history for table 'latest_cross_user'"):
        point_in_time.attach(source, [b"u1"], [b"i1"], [1],
                             features=[signatures.CR_LATEST_USER_FEATURE])
    with pytest.raises(ValueError, match="unknown representation feature 'cr'"):
        point_in_time.attach(source, [b"u1"], [b"i1"], [1], features=["cr"])


def _publish(root, version, rows):
    import tensorflow as tf

    directory = root / str(version)
    for table, (keys, updated, vectors) in rows.items():
        (directory / table).mkdir(parents=True)
        path = str(directory / table / ("part-00000-of-00001" + tables.FILE_SUFFIX))
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for k, u, v in zip(keys, updated, vectors, strict=True):
                writer.write(tables.encode_row(k, v, u, version))
    (root / "LIVE").write_text(f"{version}\n")
    return directory


def test_published_tables_and_the_store_answer_alike(tmp_path):
    from serving.store import open_store

    rng = np.random.default_rng(3)
    rows = {}
    for table, prefix, dim in (
        (tables.USER_TABLE, "u", 4),
        (tables.ITEM_TABLE, "i", 4),
        (tables.CROSS_USER_TABLE, "u", 3),
        (tables.CROSS_ITEM_TABLE, "i", 3),
    ):
        keys = [f"{prefix}{k}".encode() for k in range(6)]
        rows[table] = (keys, rng.integers(100, 200, 6).tolist(),
                       rng.normal(size=(6, dim)).astype(np.float32))
    directory = _publish(tmp_path / "publish", 7, rows)
    from_dir = point_in_time.HistorySource.from_published(str(tmp_path / "publish"))  # follows LIVE
    store = open_store(f"sqlite:///{tmp_path}/reps.db")
    for table in tables.TABLES:
        store.bulk_load(table, str(directory / table / ("*" + tables.FILE_SUFFIX)), guard=None)
    users = np.array([f"u{k}".encode() for k in rng.integers(0, 8, 50)], dtype=object)
    items = np.array([f"i{k}".encode() for k in rng.integers(0, 8, 50)], dtype=object)
    ts = rng.integers(90, 210, 50).astype(np.int64)
    a = point_in_time.attach(from_dir, users, items, ts)
    b = point_in_time.attach(point_in_time.StoreSource(store), users, items, ts)
    store.close()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)
    assert (
        0 < a[signatures.found_feature(signatures.UR_FEATURE)].sum() < 50
    )  # both kinds of rows occur

    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks the tables \['user', 'item', "):
        point_in_time.HistorySource.from_published(str(tmp_path / "bad"))
