"""DownstreamExamples' bounded-memory build (events spilled by key bucket) writes exactly the
rows of the all-in-memory replay: `replay.histories` over every event, then `attach`."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from components.downstream_examples import component as C
from pipelines.sources import synthetic
from trainer import features as F
from trainer import input as data_input
from trainer import signatures as S
from trainer.downstream import point_in_time as P
from trainer.downstream import replay as R
from trainer.downstream.requests import with_representations
from trainer.representations import cr_domains as CD

HALF_LIFE = 3600.0


def _vectors(records: np.ndarray, salt: bytes, d: int) -> np.ndarray:
    """A deterministic stand-in for an upstream output: d floats from each request's bytes."""
    raw = b"".join(hashlib.blake2b(salt + r, digest_size=4 * d).digest() for r in records)
    return (np.frombuffer(raw, np.uint32).reshape(-1, d) / 2**32).astype(np.float32)


def fake_upstream(batch: tf.Tensor) -> dict[str, np.ndarray]:
    records = batch.numpy()
    return {R.UR: _vectors(records, b"ur", 3), R.IR: _vectors(records, b"ir", 4),
            R.CR: _vectors(records, b"cr", 5)}


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
        example.features.feature[F.ITEM_ID].bytes_list.value[:] = [b"tie-item"]
        records.append(example.SerializeToString())
    lo, _ = data_input.time_range(files)
    t = np.array([tf.train.Example.FromString(r).features.feature[F.TIMESTAMP]
                  .int64_list.value[0] for r in records])
    split_files = {}
    for split, rows in (("train", t < lo + 3 * F.DAY), ("eval", t >= lo + 3 * F.DAY)):
        path = str(out / f"{split}.gz")
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for r in np.flatnonzero(rows):
                writer.write(records[r])
        split_files[split] = [path]
    return out, split_files


def in_memory(split_files, train_days, cr_domains=CD.DEFAULT):
    """The replay as one in-memory pass (the reference)."""
    records = {s: [r.numpy() for r in tf.data.TFRecordDataset(f, "GZIP")]
               for s, f in split_files.items()}
    source = R.histories(R.run_upstream(fake_upstream, records["train"] + records["eval"], 256),
                         HALF_LIFE, cr_domains=cr_domains)
    spec = F.feature_spec((F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.DOMAIN))

    def keys(rs):
        return {k: v.numpy() for k, v in tf.io.parse_example(rs, spec).items()}

    eval_start = int(keys(records["eval"])[F.TIMESTAMP].min())
    window = {"train": (eval_start - int(round(train_days * F.DAY)), eval_start),
              "eval": (eval_start, np.iinfo(np.int64).max)}
    out, train_items = {}, None
    for split in C.SPLITS:
        k = keys(records[split])
        lo, hi = window[split]
        rows = np.flatnonzero((k[F.DOMAIN] == F.DOMAIN_AD) & (k[F.TIMESTAMP] >= lo)
                              & (k[F.TIMESTAMP] < hi))
        rows = rows[np.argsort(k[F.TIMESTAMP][rows], kind="stable")]
        items = k[F.ITEM_ID][rows].astype(object)
        attached = P.attach(source, k[F.USER_ID][rows], items, k[F.TIMESTAMP][rows], C.FEATURES)
        examples = with_representations(
            [records[split][r] for r in rows],
            {n: (attached[n], attached[S.found_feature(n)] > 0) for n in C.FEATURES})
        train_items = items if split == "train" else train_items
        out[split] = C._with_int(examples, C.ITEM_COLD_START,
                                 (~np.isin(items, train_items)).astype(np.int64))
    return out


def parsed(records):
    return [tf.train.Example.FromString(r) for r in records]


def written(out_dirs):
    return {s: [r.numpy() for r in tf.data.TFRecordDataset(
        os.path.join(d, C.FILE_NAME), "GZIP")] for s, d in out_dirs.items()}


@pytest.mark.parametrize(("num_buckets", "cr_domains"), [(1, CD.AD), (7, CD.AD), (7, CD.ALL)])
def test_bucketed_build_writes_the_in_memory_rows(splits, num_buckets, cr_domains):
    out, split_files = splits
    out_dirs = {s: str(out / f"b{num_buckets}{cr_domains}" / s) for s in C.SPLITS}
    counts = C.build_from(fake_upstream, split_files, out_dirs, 2.0, HALF_LIFE,
                          num_buckets=num_buckets, batch_size=256, cr_domains=cr_domains)
    expected = in_memory(split_files, 2.0, cr_domains)
    got = written(out_dirs)
    assert counts == {s: len(expected[s]) for s in C.SPLITS}
    assert counts["train"] > 300 and counts["eval"] > 100
    for split in C.SPLITS:  # value for value (floats exactly), in the same (time) order;
        # the bytes may differ: a proto map's serialized order is not fixed
        assert parsed(got[split]) == parsed(expected[split])
    rows = parsed(got["eval"])
    found = [r.features.feature[S.found_feature(S.CR_ITEM_FEATURE)].int64_list.value[0]
             for r in rows]
    assert 0 < sum(found) < len(found)  # both warm and cold rows are checked


def test_content_requests_change_the_rows_only_under_all(splits):
    """The setting matters: CR(u) of the rows differs between "ad" and "all" (the users'
    content requests fold only under "all"); UR, IR are the same, and so is CR(i), since every
    simulated item belongs to one domain (an ad item only ever meets ad requests)."""
    _, split_files = splits
    rows = {c: parsed(in_memory(split_files, 2.0, c)["eval"]) for c in CD.CHOICES}
    for name in (S.UR_FEATURE, S.IR_FEATURE, S.CR_ITEM_FEATURE, S.CR_USER_FEATURE):
        a, b = ([list(r.features.feature[name].float_list.value) for r in rows[c]]
                for c in CD.CHOICES)
        assert (a == b) == (name != S.CR_USER_FEATURE), name


def test_an_empty_window_is_refused_by_name(splits):
    out, split_files = splits
    with pytest.raises(ValueError, match="downstream train window .* holds no ad rows"):
        C.build_from(fake_upstream, split_files, {s: str(out / "e" / s) for s in C.SPLITS},
                     0.0, HALF_LIFE)
    with pytest.raises(ValueError, match="eval split has no examples"):
        C.build_from(fake_upstream, {"train": split_files["train"], "eval": []},
                     {s: str(out / "e2" / s) for s in C.SPLITS}, 2.0, HALF_LIFE)


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_select_reads_the_wanted_positions_across_batches(tmp_path, batch_size):
    path = str(tmp_path / "r.gz")
    records = [f"record-{i}".encode() for i in range(50)]
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for r in records:
            writer.write(r)
    wanted = np.array([0, 6, 7, 8, 13, 14, 49])
    assert list(C._select([path], wanted, batch_size)) == [records[i] for i in wanted]
    assert list(C._select([path], np.array([], np.int64), batch_size)) == []
    with pytest.raises(ValueError, match="changed while being read: row 50 is missing"):
        list(C._select([path], np.array([3, 50]), batch_size))
