"""DownstreamExamples' bounded-memory build (events spilled by key bucket) writes exactly the
rows of the all-in-memory replay: `replay.histories` over every event, then `attach`."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from common.downstream_requests import with_representations
from common.representations import cr_folding
from components.downstream_examples import component as downstream_examples_component
from pipelines.sources import synthetic
from trainer import data_input
from trainer.downstream import point_in_time, replay

HALF_LIFE = 3600.0


def _vectors(records: np.ndarray, salt: bytes, d: int) -> np.ndarray:
    """A deterministic stand-in for an upstream output: d floats from each request's bytes."""
    raw = b"".join(hashlib.blake2b(salt + r, digest_size=4 * d).digest() for r in records)
    return (np.frombuffer(raw, np.uint32).reshape(-1, d) / 2**32).astype(np.float32)


def fake_upstream(batch: tf.Tensor) -> dict[str, np.ndarray]:
    records = batch.numpy()
    return {replay.UR: _vectors(records, b"ur", 3), replay.IR: _vectors(records, b"ir", 4),
            replay.CR: _vectors(records, b"cr", 5)}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Four days of requests: days 1-3 in `train`, day 4 in `eval`; 60 requests are copied
    with another item in the same second, so the same-second tie rules are exercised."""
    out = tmp_path_factory.mktemp("dex")
    synthetic.generate(str(out / "data"), examples=3000, seed=3, days=4, progress=False)
    files = data_input.list_files(str(out / "data"))
    records = list(data_input.records_in_window(files).as_numpy_iterator())
    for serialized in records[:60]:
        example = tf.train.Example.FromString(serialized)
        example.features.feature[features.ITEM_ID].bytes_list.value[:] = [b"tie-item"]
        records.append(example.SerializeToString())
    lo, _ = data_input.time_range(files)
    t = np.array([tf.train.Example.FromString(r).features.feature[features.TIMESTAMP]
                  .int64_list.value[0] for r in records])
    split_files = {}
    for split, rows in (("train", t < lo + 3 * features.DAY), ("eval", t >= lo + 3 * features.DAY)):
        path = str(out / f"{split}.gz")
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for r in np.flatnonzero(rows):
                writer.write(records[r])
        split_files[split] = [path]
    return out, split_files


def in_memory(split_files, train_days, cr_domains=cr_folding.DEFAULT):
    """The replay as one in-memory pass (the reference)."""
    records = {s: [r.numpy() for r in tf.data.TFRecordDataset(f, "GZIP")]
               for s, f in split_files.items()}
    source = replay.histories(replay.run_upstream(fake_upstream, records["train"] + records["eval"],
                                                  256),
                         HALF_LIFE, cr_domains=cr_domains)
    spec = features.feature_spec((features.USER_ID, features.ITEM_ID, features.TIMESTAMP,
                                  features.DOMAIN))

    def keys(rs):
        return {k: v.numpy() for k, v in tf.io.parse_example(rs, spec).items()}

    eval_start = int(keys(records["eval"])[features.TIMESTAMP].min())
    window = {"train": (eval_start - int(round(train_days * features.DAY)), eval_start),
              "eval": (eval_start, np.iinfo(np.int64).max)}
    out, train_items = {}, None
    for split in downstream_examples_component.SPLITS:
        k = keys(records[split])
        lo, hi = window[split]
        rows = np.flatnonzero(
            (k[features.DOMAIN] == features.DOMAIN_AD)
            & (k[features.TIMESTAMP] >= lo)
            & (k[features.TIMESTAMP] < hi)
        )
        rows = rows[np.argsort(k[features.TIMESTAMP][rows], kind="stable")]
        items = k[features.ITEM_ID][rows].astype(object)
        attached = point_in_time.attach(source, k[features.USER_ID][rows], items,
                                        k[features.TIMESTAMP][rows],
                                        downstream_examples_component.FEATURES)
        examples = with_representations(
            [records[split][r] for r in rows],
            {n: (attached[n], attached[signatures.found_feature(n)] > 0)
             for n in downstream_examples_component.FEATURES})
        train_items = items if split == "train" else train_items
        out[split] = downstream_examples_component._with_int(examples,
                                                             downstream_examples_component.ITEM_COLD_START,
                                 (~np.isin(items, train_items)).astype(np.int64))
    return out


def parsed(records):
    return [tf.train.Example.FromString(r) for r in records]


def written(out_dirs):
    return {s: [r.numpy() for r in tf.data.TFRecordDataset(
        os.path.join(d, downstream_examples_component.FILE_NAME), "GZIP")] for s,
            d in out_dirs.items()}


@pytest.mark.parametrize(
    ("num_buckets", "cr_domains"), [(1, cr_folding.AD), (7, cr_folding.AD), (7, cr_folding.ALL)]
)
def test_bucketed_build_writes_the_in_memory_rows(splits, num_buckets, cr_domains):
    out, split_files = splits
    out_dirs = {s: str(out / f"b{num_buckets}{cr_domains}" / s)
                for s in downstream_examples_component.SPLITS}
    counts = downstream_examples_component.build_from(fake_upstream, split_files, out_dirs, 2.0,
                                                      HALF_LIFE,
                          num_buckets=num_buckets, batch_size=256, cr_domains=cr_domains)
    expected = in_memory(split_files, 2.0, cr_domains)
    got = written(out_dirs)
    assert counts == {s: len(expected[s]) for s in downstream_examples_component.SPLITS}
    assert counts["train"] > 300 and counts["eval"] > 100
    for split in (
        downstream_examples_component.SPLITS
    ):  # value for value (floats exactly), in the same (time) order;
        # the bytes may differ: a proto map's serialized order is not fixed
        assert parsed(got[split]) == parsed(expected[split])
    rows = parsed(got["eval"])
    found = [
        r.features.feature[signatures.found_feature(signatures.CR_ITEM_FEATURE)].int64_list.value[0]
        for r in rows
    ]
    assert 0 < sum(found) < len(found)  # both warm and cold rows are checked


def test_content_requests_change_the_rows_only_under_all(splits):
    """The setting matters: CR(u) of the rows differs between "ad" and "all" (the users'
    content requests fold only under "all"); UR, IR are the same, and so is CR(i), since every
    simulated item belongs to one domain (an ad item only ever meets ad requests)."""
    _, split_files = splits
    rows = {c: parsed(in_memory(split_files, 2.0, c)["eval"]) for c in cr_folding.CHOICES}
    for name in (signatures.UR_FEATURE, signatures.IR_FEATURE, signatures.CR_ITEM_FEATURE,
                 signatures.CR_USER_FEATURE):
        a, b = ([list(r.features.feature[name].float_list.value) for r in rows[c]]
                for c in cr_folding.CHOICES)
        assert (a == b) == (name != signatures.CR_USER_FEATURE), name


def test_an_empty_window_is_refused_by_name(splits):
    out, split_files = splits
    with pytest.raises(ValueError, match="downstream train window .* holds no ad rows"):
        downstream_examples_component.build_from(
            fake_upstream,
            split_files,
            {s: str(out / "e" / s) for s in downstream_examples_component.SPLITS},
            0.0,
            HALF_LIFE,
        )
    with pytest.raises(ValueError, match="eval split has no examples"):
        downstream_examples_component.build_from(
            fake_upstream,
            {"train": split_files["train"], "eval": []},
            {s: str(out / "e2" / s) for s in downstream_examples_component.SPLITS},
            2.0,
            HALF_LIFE,
        )


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_select_reads_the_wanted_positions_across_batches(tmp_path, batch_size):
    path = str(tmp_path / "r.gz")
    records = [f"record-{i}".encode() for i in range(50)]
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for r in records:
            writer.write(r)
    wanted = np.array([0, 6, 7, 8, 13, 14, 49])
    assert list(downstream_examples_component._select([path], wanted, batch_size)) == [
        records[i] for i in wanted
    ]
    assert list(downstream_examples_component._select([path], np.array([], np.int64),
                                                      batch_size)) == []
    with pytest.raises(ValueError, match="changed while being read: row 50 is missing"):
        list(downstream_examples_component._select([path], np.array([3, 50]), batch_size))
