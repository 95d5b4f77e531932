"""UR/IR/CR extraction with the upstream SavedModel (paper Sec. 3.2, 4.3.1) vs naive references,
and the published representation table format."""

import hashlib
import os
import random

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from common import features, signatures
from common.representations import tables
from components import representation_tables
from components.representation_extractor import ExtractRepresentations
from pipelines.sources import synthetic
from trainer import data_input
from trainer.config import ModelConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)
TOL = dict(rtol=1e-5, atol=1e-6)


def _with_timestamp(record: bytes, t: int, features_of: bytes | None = None) -> bytes:
    """`record` at timestamp `t`; with the user features but user_id of `features_of` if given."""
    example = tf.train.Example.FromString(record)
    example.features.feature[features.TIMESTAMP].int64_list.value[:] = [t]
    if features_of is not None:
        other = tf.train.Example.FromString(features_of).features.feature
        for name in features.USER_FEATURES:
            if name != features.USER_ID:
                example.features.feature[name].CopyFrom(other[name])
    return example.SerializeToString()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(SavedModel dir, serialized samples, loaded SavedModel); samples include forced ties."""
    data = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(data), examples=600, seed=11, days=2, progress=False)
    files = data_input.list_files(str(data))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP")]
    # Ties: for a few users with >= 2 samples, give two samples the user's latest timestamp and
    # user features (so their URs differ), and add a byte-identical duplicate sample.
    by_user: dict[bytes, list[int]] = {}
    for i, r in enumerate(records):
        uid = tf.train.Example.FromString(r).features.feature[features.USER_ID].bytes_list.value[0]
        by_user.setdefault(uid, []).append(i)
    tied = [rows for rows in by_user.values() if len(rows) >= 2][:5]
    assert tied, "synthetic data has no user with two samples"
    for rows in tied:
        t = max(tf.train.Example.FromString(records[i]).features.feature[features.TIMESTAMP]
                .int64_list.value[0] for i in rows)
        records[rows[0]] = _with_timestamp(records[rows[0]], t)
        donor = next(r for i, r in enumerate(records) if i not in rows)
        records[rows[1]] = _with_timestamp(records[rows[1]], t, features_of=donor)
    records.append(records[tied[0][0]])
    model = LFM4AdsModel(ModelConfig(**SMALL))
    model(features.parse_examples(tf.constant(records[:2])))
    base = str(tmp_path_factory.mktemp("export") / "lfm4ads")
    path = export_saved_model(model, base, warmup_examples=records[:2], version=3)
    return path, records, tf.saved_model.load(path)


def _ids(records, with_domain=False):
    parsed = tf.io.parse_example(
        tf.constant(records), features.feature_spec((features.USER_ID, features.ITEM_ID,
                                                     features.TIMESTAMP, features.DOMAIN)))
    ids = (parsed[features.USER_ID].numpy().tolist(), parsed[features.ITEM_ID].numpy().tolist(),
           parsed[features.TIMESTAMP].numpy().tolist())
    return ids + (parsed[features.DOMAIN].numpy().tolist(),) if with_domain else ids


def _naive_latest(records, keys, timestamps, loaded, signature):
    """{key: (vector, updated_at)}: the signature on each key's latest sample, one at a time.

    Latest: largest (timestamp, BLAKE2b-128 digest of the serialized sample).
    """
    best: dict[bytes, tuple] = {}
    for r, k, t in zip(records, keys, timestamps, strict=True):
        rank = (t, hashlib.blake2b(r, digest_size=16).digest())
        if k not in best or rank > best[k][0]:
            best[k] = (rank, r)
    out = {}
    for k, ((t, _), r) in best.items():
        vec = loaded.signatures[signature](examples=tf.constant([r]))[signature].numpy()[0]
        out[k] = (vec, t)
    return out


def _matches_latest(expected):
    def check(actual):
        got = {k: (v, t) for k, v, t in actual}
        if len(got) != len(actual):
            raise BeamAssertException(f"duplicate keys in output: {len(actual)} rows, "
                                      f"{len(got)} keys")
        if sorted(got) != sorted(expected):
            raise BeamAssertException(f"keys differ: {sorted(set(got) ^ set(expected))[:5]}")
        for k, (v, t) in got.items():
            if t != expected[k][1]:
                raise BeamAssertException(f"{k!r}: updated_at {t} != {expected[k][1]}")
            if v.dtype != np.float32 or not np.allclose(v, expected[k][0], **TOL):
                raise BeamAssertException(f"{k!r}: {v} != {expected[k][0]}")
    return check


def _matches_cross(expected_rows, d_cr, max_batch):
    """expected_rows: list of (user, item, t, domain, CR [d]); compared as multisets."""
    def check(batches):
        rows = []
        for b in batches:
            if set(b) != {"user_id", "item_id", "timestamp", "domain", "cross_representation"}:
                raise BeamAssertException(f"batch fields {sorted(b)}")
            n = len(b["user_id"])
            if not 1 <= n <= max_batch or b["cross_representation"].shape != (n, d_cr):
                raise BeamAssertException(f"batch of {n}: {b['cross_representation'].shape}")
            if b["timestamp"].dtype != np.int64 or b["cross_representation"].dtype != np.float32:
                raise BeamAssertException("wrong dtypes")
            rows += zip(b["user_id"].tolist(), b["item_id"].tolist(), b["timestamp"].tolist(),
                        b["domain"].tolist(), b["cross_representation"], strict=True)
            # The stream survives its file format, the domain included.
            decoded = tables.decode_event_batch(tables.encode_event_batch(b))
            if set(decoded) != set(b) or any(
                    not np.array_equal(decoded[k], b[k]) for k in b):
                raise BeamAssertException("the event batch changed in its file format")
        key = lambda r: (r[0], r[1], r[2], r[3], r[4].round(4).tolist())  # noqa: E731
        got, want = sorted(rows, key=key), sorted(expected_rows, key=key)
        if len(got) != len(want):
            raise BeamAssertException(f"{len(got)} events, expected {len(want)}")
        for g, w in zip(got, want, strict=True):
            if g[:4] != w[:4] or not np.allclose(g[4], w[4], **TOL):
                raise BeamAssertException(f"event {g[:4]} != {w[:4]}")
    return check


@pytest.mark.slow  # a model export, then Beam: ~30 s with the tie-rule test
@pytest.mark.parametrize("shuffle_seed", [None, 5])
def test_extract_matches_signatures(setup, shuffle_seed):
    path, records, loaded = setup
    users, items, ts = _ids(records)
    exp_user = _naive_latest(records, users, ts, loaded, signatures.USER_REPRESENTATION)
    exp_item = _naive_latest(records, items, ts, loaded, signatures.ITEM_REPRESENTATION)
    assert len(exp_user) < len(records)  # some users have several samples: "latest" matters
    cr = loaded.signatures[signatures.CROSS_REPRESENTATION](examples=tf.constant(records))
    cr = cr[signatures.CROSS_REPRESENTATION].numpy()  # [n, d_cr]
    domains = _ids(records, with_domain=True)[3]
    assert set(domains) == {features.DOMAIN_AD,
                            features.DOMAIN_CONTENT}  # every request has an event
    exp_cross = list(zip(users, items, ts, domains, cr, strict=True))
    inputs = list(records)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(inputs)
    with BeamTestPipeline() as p:
        out = (p | beam.Create(inputs, reshuffle=False)
               | ExtractRepresentations(path, min_batch_size=8, max_batch_size=64))
        assert_that(out["user"], _matches_latest(exp_user), label="user")
        assert_that(out["item"], _matches_latest(exp_item), label="item")
        assert_that(out["cross_events"], _matches_cross(exp_cross, cr.shape[1], 64),
                    label="cross")


@pytest.mark.slow
def test_tie_rule_is_order_independent(setup):
    """Users whose two latest samples share a timestamp: the larger digest wins, whatever the
    order, and never the other sample (its vector differs)."""
    path, records, loaded = setup
    users, _, ts = _ids(records)
    tied = {}
    for r, u, t in zip(records, users, ts, strict=True):
        tied.setdefault((u, t), set()).add(r)
    tied = {k: v for k, v in tied.items() if len(v) >= 2}
    latest = {}
    for u, t in zip(users, ts, strict=True):
        latest[u] = max(latest.get(u, t), t)
    tied = {k: v for k, v in tied.items() if latest[k[0]] == k[1]}
    assert tied, "fixture should force ties"
    expected = {}
    for (u, _t), rs in tied.items():
        winner = max(rs, key=lambda r: hashlib.blake2b(r, digest_size=16).digest())
        losers = [r for r in rs if r != winner]
        vecs = loaded.signatures[signatures.USER_REPRESENTATION](
            examples=tf.constant([winner] + losers)
        )
        vecs = vecs[signatures.USER_REPRESENTATION].numpy()  # [1 + losers, d]
        assert not np.allclose(vecs[0], vecs[1:], **TOL)  # the rule is observable
        expected[u] = vecs[0]

    def check(rows):
        got = dict(rows)
        if sorted(got) != sorted(expected):
            raise BeamAssertException(f"tied users {sorted(got)} != {sorted(expected)}")
        for u, v in got.items():
            if not np.allclose(v, expected[u], **TOL):
                raise BeamAssertException(f"{u!r}: the larger-digest sample did not win")

    for name, order in (("asc", sorted), ("desc", lambda rs: sorted(rs, reverse=True))):
        with BeamTestPipeline() as p:
            out = (p | beam.Create(order(records), reshuffle=False)
                   | ExtractRepresentations(path, min_batch_size=4, max_batch_size=32))
            assert_that(out["user"] | beam.Filter(lambda r: (r[0], r[2]) in tied)
                        | beam.Map(lambda r: (r[0], r[1])), check, label=name)


def test_rejects_bad_batch_sizes():
    with pytest.raises(ValueError, match="min_batch_size"):
        ExtractRepresentations("x", min_batch_size=10, max_batch_size=5)


# ---------------------------------------------------------------- table format


def test_table_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(b"k%03d" % i, rng.normal(size=6).astype(np.float32), 1_700_000_000 + i)
            for i in range(50)]
    prefix = os.path.join(str(tmp_path), "user_table")
    with BeamTestPipeline() as p:
        _ = p | beam.Create(rows[::-1]) | representation_tables.WriteRepresentationTable(
            prefix, model_version=42, num_shards=3)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3 and all(f.endswith(".tfrecord.gz") for f in files), files
    keys, matrix, updated_at, versions = tables.read_table(prefix + "-*")
    assert keys.tolist() == [r[0] for r in rows]
    np.testing.assert_array_equal(matrix, np.stack([r[1] for r in rows]))
    assert matrix.dtype == np.float32 and matrix.shape == (50, 6)
    assert updated_at.tolist() == [r[2] for r in rows] and updated_at.dtype == np.int64
    assert versions.tolist() == [42] * 50
