"""The downstream Trainer's input: ranker requests read back into rows, and its validation cut."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer import features as F
from trainer import signatures as S
from trainer.downstream import data as D
from trainer.downstream import tfx_trainer as T
from trainer.downstream.requests import with_representations


def _write(path, records):
    with tf.io.TFRecordWriter(str(path), "GZIP") as writer:
        for record in records:
            writer.write(record)


def test_requests_read_back_as_rows(small_data, tmp_path):
    files = sorted(str(p) for p in Path(small_data).glob("*.gz"))
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(20)]
    vectors = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    found = np.arange(20) % 2 == 0
    _write(tmp_path / "part.gz", with_representations(raw, {S.UR_FEATURE: (vectors, found)}))
    with pytest.raises(ValueError, match="ir"):  # every row a cold start for IR
        T._dims([str(tmp_path / "part.gz")])
    rows = T.read_rows([str(tmp_path / "*.gz")], {S.UR_FEATURE: 3})
    assert D.size(rows) == 20
    np.testing.assert_array_equal(rows[S.found_feature(S.UR_FEATURE)], found.astype(np.float32))
    np.testing.assert_array_equal(rows[S.UR_FEATURE][found], vectors[found])
    assert not rows[S.UR_FEATURE][~found].any()  # absent -> zeros
    assert rows[F.USER_ID].dtype == object and rows[F.LABEL].shape == (20,)


def test_validation_is_the_last_days():
    day = F.DAY
    rows = {F.TIMESTAMP: np.array([0, day, 2 * day, 3 * day - 1]), F.LABEL: np.zeros(4)}
    train, validation = T.split_validation(rows, 1.0)
    assert train[F.TIMESTAMP].tolist() == [0, day] and D.size(validation) == 2
    with pytest.raises(ValueError, match="no training or no validation rows"):
        T.split_validation(rows, 5.0)
