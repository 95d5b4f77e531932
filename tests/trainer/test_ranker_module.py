"""The downstream Trainer's input: ranker requests read back into rows, and its validation cut."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common import features, signatures
from common.downstream_requests import with_representations
from trainer.downstream import data as ranker_data
from trainer.tfx import ranker_module


def _write(path, records):
    with tf.io.TFRecordWriter(str(path), "GZIP") as writer:
        for record in records:
            writer.write(record)


def test_requests_read_back_as_rows(small_data, tmp_path):
    files = sorted(str(p) for p in Path(small_data).glob("*.gz"))
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(20)]
    vectors = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    found = np.arange(20) % 2 == 0
    _write(
        tmp_path / "part.gz", with_representations(raw, {signatures.UR_FEATURE: (vectors, found)})
    )
    with pytest.raises(ValueError, match="ir"):  # every row a cold start for IR
        ranker_module._dims([str(tmp_path / "part.gz")])
    rows = ranker_module.read_rows([str(tmp_path / "*.gz")], {signatures.UR_FEATURE: 3})
    assert ranker_data.size(rows) == 20
    np.testing.assert_array_equal(rows[signatures.found_feature(signatures.UR_FEATURE)],
                                  found.astype(np.float32))
    np.testing.assert_array_equal(rows[signatures.UR_FEATURE][found], vectors[found])
    assert not rows[signatures.UR_FEATURE][~found].any()  # absent -> zeros
    assert rows[features.USER_ID].dtype == object and rows[features.LABEL].shape == (20,)


def test_validation_is_the_last_days():
    day = features.DAY
    rows = {features.TIMESTAMP: np.array([0, day, 2 * day, 3 * day - 1]),
            features.LABEL: np.zeros(4)}
    train, validation = ranker_module.split_validation(rows, 1.0)
    assert train[features.TIMESTAMP].tolist() == [0, day] and ranker_data.size(validation) == 2
    with pytest.raises(ValueError, match="no training or no validation rows"):
        ranker_module.split_validation(rows, 5.0)
