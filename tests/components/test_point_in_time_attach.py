"""AttachPointInTimeCrossRepresentations and AggregateWithPointInTime: each example gets CR(u),
CR(i) as of strictly before its own timestamp, equal to the sequential reference on the events
before it; AggregateWithPointInTime's tables are the final states of all events."""

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, is_empty

from common.representations import cr_folding, ema
from components.cr_aggregation.beam_transforms import (
    AggregateWithPointInTime,
    AttachPointInTimeCrossRepresentations,
)

HALF_LIFE = 50.0


def _example(user: bytes, item: bytes, ts: int, tag: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user])),
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item])),
        "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[ts])),
        "tag": tf.train.Feature(int64_list=tf.train.Int64List(value=[tag])),
    })).SerializeToString()


@pytest.mark.parametrize("cr_domains", cr_folding.CHOICES)
@pytest.mark.parametrize("transform", ["attach", "with_aggregate"])
@pytest.mark.slow
def test_each_row_sees_only_earlier_events(transform, cr_domains):
    """Every row (content rows too) gets the state of the earlier events that fold under
    `cr_domains`: under "ad", content events leave CR(u), CR(i) untouched."""
    rng = np.random.default_rng(3)
    n, d = 300, 4
    users = np.array([f"u{i}".encode() for i in rng.integers(0, 12, n)], dtype=object)
    items = np.array([f"i{i}".encode() for i in rng.integers(0, 9, n)], dtype=object)
    ts = rng.integers(0, 200, n).astype(np.int64)  # many ties
    crs = rng.normal(size=(n, d)).astype(np.float32)
    domains = np.where(rng.random(n) < 0.4, b"ad", b"content").astype(object)
    fold = cr_folding.fold_mask(domains, cr_domains)  # [n] the events that fold
    events = [{"user_id": users[s:s + 64], "item_id": items[s:s + 64],
               "timestamp": ts[s:s + 64], "domain": domains[s:s + 64],
               "cross_representation": crs[s:s + 64]}
              for s in range(0, n, 64)]
    examples = [_example(users[i], items[i], int(ts[i]), i) for i in range(n)]
    examples.append(examples[0])  # a byte-identical duplicate row stays two rows
    beta = ema.half_life_decay(HALF_LIFE)

    def check(outputs):
        assert len(outputs) == n + 1
        for serialized in outputs:
            f = tf.train.Example.FromString(serialized).features.feature
            row = f["tag"].int64_list.value[0]
            for side, keys in (("user", users), ("item", items)):
                before = (keys == keys[row]) & (ts < ts[row]) & fold
                got = np.asarray(f[f"cr_{side}"].float_list.value)
                updated = f[f"cr_{side}_updated_at"].int64_list.value[0]
                if not before.any():
                    assert updated == -1 and np.all(got == 0)
                    continue
                ref = ema.aggregate_sequential(keys[before], ts[before], crs[before], beta)
                vector, t = ref[keys[row]]
                assert updated == t
                np.testing.assert_allclose(got, vector, rtol=1e-5, atol=1e-6)

    def check_final(keys):
        def check(rows):
            ref = ema.aggregate_sequential(keys[fold], ts[fold], crs[fold], beta)
            assert sorted(key for key, _, _ in rows) == sorted(ref)
            for key, vector, t in rows:
                assert t == ref[key][1]
                np.testing.assert_allclose(vector, ref[key][0], rtol=1e-5, atol=1e-6)
        return check

    with TestPipeline() as p:
        inputs = {"events": p | "Events" >> beam.Create(events)}
        rows = p | "Examples" >> beam.Create(examples)
        if transform == "attach":
            out = {**inputs, "examples": rows} | AttachPointInTimeCrossRepresentations(
                d, HALF_LIFE, num_buckets=5, batch_size=50, cr_domains=cr_domains)
        else:
            both = {**inputs, "examples": {"eval": rows, "none": p | "None" >> beam.Create(
                [])}} | AggregateWithPointInTime(d, HALF_LIFE, num_buckets=5, batch_size=50,
                                                 cr_domains=cr_domains)
            out = both["point_in_time"]["eval"]
            assert_that(both["point_in_time"]["none"], is_empty(), label="NoRows")
            assert_that(both["user"], check_final(users), label="FinalUser")
            assert_that(both["item"], check_final(items), label="FinalItem")
        assert_that(out, check)
