"""The representation table format (`common.representations.tables`) without Beam: rows
encoded and decoded, tables read back, and the tie-break digest of the latest-per-key rule
(the Beam writer: tests/components/test_representation_extractor.py)."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from common.representations import tables


def test_sample_digest_is_blake2b_128_of_the_serialized_bytes():
    # BLAKE2b with a 16-byte digest of b"": cae66941d9efbd404e4d88758ea67670.
    assert tables.sample_digest(b"").hex() == "cae66941d9efbd404e4d88758ea67670"
    rows = [b"a", b"b", b"c", b"\x00"]
    assert [tables.sample_digest(r) for r in rows] == [
        hashlib.blake2b(r, digest_size=16).digest() for r in rows]


def test_decode_rows_keeps_order_and_names_errors():
    good = [tables.encode_row("b", [1.0, 2.0], 5, 1), tables.encode_row(b"a", np.ones(2), 6, 1)]
    keys, matrix, updated_at, versions = tables.decode_rows(good)
    assert keys.tolist() == [b"b", b"a"] and updated_at.tolist() == [5, 6]
    np.testing.assert_array_equal(matrix, [[1, 2], [1, 1]])
    empty = tables.decode_rows([])
    assert empty[0].shape == (0,) and empty[1].shape == (0, 0)

    with pytest.raises(tables.TableError, match=r"row 2 \(key b'c'\).*dimension 3.*have 2"):
        tables.decode_rows(good + [tables.encode_row(b"c", [1, 2, 3], 7, 1)])
    for field in tables.FIELDS:
        example = tf.train.Example.FromString(good[0])
        del example.features.feature[field]
        with pytest.raises(tables.TableError, match=f"row 1 is missing field '{field}'"):
            tables.decode_rows([good[1], example.SerializeToString()])
    example = tf.train.Example.FromString(good[0])
    example.features.feature[tables.UPDATED_AT].Clear()
    example.features.feature[tables.UPDATED_AT].float_list.value.append(1.5)
    with pytest.raises(tables.TableError, match="'updated_at' must be a int64_list"):
        tables.decode_rows([example.SerializeToString()])
    example = tf.train.Example.FromString(good[0])
    example.features.feature[tables.KEY].bytes_list.value.append(b"x")
    with pytest.raises(tables.TableError, match="'key' must hold exactly one value, got 2"):
        tables.decode_rows([example.SerializeToString()])
    with pytest.raises(tables.TableError, match="row 0 is not a serialized tf.Example"):
        tables.decode_rows([b"\xff\xff not a proto"])
    with pytest.raises(tables.TableError, match="must be 1-D"):
        tables.encode_row(b"k", np.ones((2, 2)), 1, 1)


def test_read_table_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no representation table file"):
        tables.read_table(str(tmp_path / "nothing-*"))
    path = str(tmp_path / "t-00000-of-00001.tfrecord.gz")
    with tf.io.TFRecordWriter(path, "GZIP") as w:
        for _ in range(2):
            w.write(tables.encode_row(b"dup", [1.0], 1, 1))
    with pytest.raises(tables.TableError, match="key b'dup' appears more than once"):
        tables.read_table(str(tmp_path / "t-*"))
