"""Hashing preprocessor and embeddings: id ranges, padding, pooling, config round trip."""

import numpy as np
import pytest
import tensorflow as tf

from common import features
from trainer.config import ModelConfig
from trainer.embeddings import FeatureEmbeddings
from trainer.preprocessing import HashingPreprocessor


def test_hashing_ids_padding_and_age():
    pre = HashingPreprocessor({features.USER_ID: 10, features.USER_HIST_ITEMS: 10,
                               features.USER_AGE: 5})
    out = pre({
        features.USER_ID: tf.constant([b"u1", b"", b"u1"]),
        features.USER_HIST_ITEMS: tf.constant([[b"a", b""], [b"", b""], [b"b", b"a"]]),
        features.USER_AGE: tf.constant([-3, 2, 99], tf.int64),
        features.LABEL: tf.constant([1, 0, 1], tf.int64),  # not a model feature: dropped
    })
    assert set(out) == {features.USER_ID, features.USER_HIST_ITEMS, features.USER_AGE}
    ids = out[features.USER_ID].numpy()
    assert ids[1] == 0 and ids[0] == ids[2] and 1 <= ids[0] <= 9
    hist = out[features.USER_HIST_ITEMS].numpy()
    assert hist[1].tolist() == [0, 0] and hist[0, 1] == 0 and hist[0, 0] == hist[2, 1] > 0
    # age: 1 + clip(age, 0, 5 - 2)
    np.testing.assert_array_equal(out[features.USER_AGE].numpy(), [1, 3, 4])


def test_hashing_config_round_trip_and_errors():
    pre = HashingPreprocessor.from_model_config(ModelConfig(user_id_buckets=77))
    clone = HashingPreprocessor.from_config(pre.get_config())
    assert clone.vocabulary_size(features.USER_ID) == 77
    x = {features.ITEM_ID: tf.constant([b"a1", b"c9"])}
    np.testing.assert_array_equal(pre(x)[features.ITEM_ID], clone(x)[features.ITEM_ID])
    with pytest.raises(ValueError, match=r"buckets\['user_id'\] must be >= 2, got 1"):
        HashingPreprocessor({features.USER_ID: 1})
    with pytest.raises(ValueError, match="Unknown features \\['colour'\\]"):
        HashingPreprocessor({"colour": 4})


def test_embeddings_masked_mean_and_shared_item_table():
    emb = FeatureEmbeddings({features.ITEM_ID: 6}, embedding_dim=3)
    emb.build()
    table = np.arange(18, dtype=np.float32).reshape(6, 3)
    emb.tables[features.ITEM_ID].assign(table)
    out = emb({
        features.ITEM_ID: tf.constant([2, 0], tf.int64),
        features.USER_HIST_ITEMS: tf.constant([[1, 3, 0], [0, 0, 0]], tf.int64),
    })
    np.testing.assert_allclose(out[features.ITEM_ID], table[[2, 0]])
    # history: mean of rows 1 and 3 (padding 0 ignored); all padding -> zeros.
    np.testing.assert_allclose(
        out[features.USER_HIST_ITEMS], [(table[1] + table[3]) / 2, [0, 0, 0]]
    )
