"""The tf.data input: parsing, time windows, and errors that name the file and the feature."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from common import features
from trainer import data_input


def _example(**overrides) -> bytes:
    values = {
        features.USER_ID: [b"u1"], features.ITEM_ID: [b"a1"], features.DOMAIN: [b"ad"],
        features.SCENARIO: [b"feed"],
        features.TIMESTAMP: [100], features.USER_AGE: [3], features.USER_GENDER: [b"f"],
        features.USER_GEO: [b"geo1"],
        features.USER_HIST_ITEMS: [b"c1", b"c2"], features.ITEM_CATEGORY: [b"cat1"],
        features.ITEM_TAGS: [b"t1"],
        features.ITEM_ADVERTISER: [b"adv1"], features.LABEL: [1], features.CONVERSION: [0],
    }
    values.update(overrides)
    feature = {}
    for name, vals in values.items():
        if vals is None:
            continue
        if vals and isinstance(vals[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
        elif features.FEATURE_TYPES[name] is bytes or (vals and isinstance(vals[0], bytes)):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=vals))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(str(path), "GZIP") as writer:
        for record in records:
            writer.write(record)
    return str(path)


def test_window_and_dense_lists(tmp_path):
    path = _write(tmp_path / "a.tfrecord.gz", [
        _example(**{features.TIMESTAMP: [t], features.USER_HIST_ITEMS: [b"x"] * t})
        for t in range(30)
    ])
    assert data_input.check_files([path]) == 30
    assert data_input.time_range([path]) == (0, 29)
    assert data_input.time_range([path], end=17) == (0, 16)  # timestamp < end only
    with pytest.raises(data_input.DataError, match="no record has a timestamp before 0"):
        data_input.time_range([path], end=0)
    batches = list(data_input.make_dataset([path], 8, start=5, end=25))
    stamps = np.concatenate([b[features.TIMESTAMP].numpy() for b in batches])
    np.testing.assert_array_equal(stamps, np.arange(5, 25))  # [start, end)
    hist = np.concatenate([b[features.USER_HIST_ITEMS].numpy() for b in batches])
    assert hist.shape == (20, features.MAX_HISTORY)
    # Row with timestamp 7 has 7 items, then padding; rows with > 20 items are cut to 20.
    assert list(hist[2]) == [b"x"] * 7 + [b""] * (features.MAX_HISTORY - 7)
    assert list(hist[-1]) == [b"x"] * features.MAX_HISTORY
    assert batches[0][features.ITEM_TAGS].shape[1] == features.LIST_LENGTHS[features.ITEM_TAGS]


def test_missing_feature_names_file_and_feature(tmp_path):
    good = _write(tmp_path / "good.tfrecord.gz", [_example()])
    bad = _write(tmp_path / "bad.tfrecord.gz", [_example(**{features.USER_AGE: None})])
    with pytest.raises(data_input.DataError, match=r"bad\.tfrecord\.gz.*user_age"):
        data_input.check_files([good, bad])


def test_wrong_dtype_names_file_and_feature(tmp_path):
    bad = _write(tmp_path / "bad.tfrecord.gz", [_example(**{features.LABEL: [1.0]})])
    with pytest.raises(data_input.DataError, match=r"bad\.tfrecord\.gz.*label"):
        data_input.check_files([bad])


def test_empty_file(tmp_path):
    empty = _write(tmp_path / "empty.tfrecord.gz", [])
    with pytest.raises(data_input.DataError, match=r"empty\.tfrecord\.gz: empty file"):
        data_input.check_files([empty])


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.tfrecord.gz"
    path.write_bytes(gzip.compress(b"this is not a TFRecord file at all"))
    with pytest.raises(data_input.DataError, match=r"corrupt\.tfrecord\.gz: corrupt"):
        data_input.check_files([str(path)])


def test_no_files(tmp_path):
    with pytest.raises(data_input.DataError, match="has no \\*.tfrecord\\* files"):
        data_input.list_files(str(tmp_path))
    with pytest.raises(data_input.DataError, match="no file matches"):
        data_input.list_files(str(tmp_path / "nothing-*.gz"))
