"""VocabularyPreprocessor: vocabularies counted in memory, ids, OOV, errors, round trips.

Its ids against the real TFT Transform's: `tests/pipelines/test_transform.py`."""

import numpy as np
import pytest
import tensorflow as tf

from common import features
from trainer.config import ModelConfig
from trainer.preprocessing import HashingPreprocessor
from trainer.transform import VOCABULARIES
from trainer.vocabulary import VocabularyPreprocessor

ITEM_OOV = VOCABULARIES[features.ITEM_ID][1]
TAG_OOV = VOCABULARIES[features.ITEM_TAGS][1]


def _batch(**columns) -> dict[str, tf.Tensor]:
    return {name: tf.constant(value) for name, value in columns.items()}


def _adapted() -> VocabularyPreprocessor:
    # item_id counts history too (threshold 2): i1 x3, i2 x2, i3 x2, i4 x1 (dropped).
    # tags (threshold 1): t2 x3, t1 x1, t3 x1 -> t2, then t3 before t1 (ties: larger first).
    data = tf.data.Dataset.from_tensor_slices(_batch(
        item_id=[b"i1", b"i2", b"i3", b"i4"],
        user_hist_items=[[b"i1", b""], [b"i1", b"i2"], [b"i3", b""], [b"", b""]],
        item_tags=[[b"t2", b"t1"], [b"t2", b""], [b"t2", b"t3"], [b"", b""]],
        item_category=[b"c1"] * 4, item_advertiser=[b"", b"", b"", b""],
        user_geo=[b"g"] * 4, user_gender=[b"f"] * 4, scenario=[b"feed"] * 4,
    )).batch(3)  # two batches: counts add up across them
    return VocabularyPreprocessor.adapt(data, ModelConfig(user_id_buckets=50, age_buckets=6))


def test_adapt_applies_thresholds_order_and_the_shared_item_vocabulary():
    pre = _adapted()
    assert pre.vocabularies[features.ITEM_ID] == ["i1", "i3", "i2"]  # i3/i2 tie: the larger first
    assert pre.vocabularies[features.ITEM_TAGS] == ["t2", "t3", "t1"]
    assert pre.vocabularies[features.ITEM_ADVERTISER] == []  # content only: every advertiser is OOV
    assert pre.vocabulary_size(features.ITEM_ID) == 1 + 3 + ITEM_OOV
    assert pre.vocabulary_size(features.USER_HIST_ITEMS) == pre.vocabulary_size(features.ITEM_ID)
    assert (
        pre.vocabulary_size(features.USER_ID) == 50 and pre.vocabulary_size(features.USER_AGE) == 6
    )


def test_ids_padding_vocabulary_and_oov():
    pre = _adapted()
    ids = pre(_batch(
        item_id=[b"i1", b"i2", b"i4", b"zz"],
        user_hist_items=[[b"i2", b""], [b"", b""], [b"i1", b"i3"], [b"zz", b"i1"]],
        item_tags=[[b"t1", b""], [b"t2", b"t3"], [b"", b""], [b"new", b""]],
        item_advertiser=[b"", b"adv1", b"", b""],
        user_id=[b"u1", b"", b"u1", b"u2"], user_age=np.array([-1, 2, 40, 3], np.int64),
        label=[1, 0, 0, 1],  # not a model feature: dropped
    ))
    assert features.LABEL not in ids
    item = ids[features.ITEM_ID].numpy()
    assert item[:2].tolist() == [1, 3]  # vocabulary ids, shifted by one
    assert all(4 <= i < 4 + ITEM_OOV for i in item[2:])  # i4 (under threshold), zz: OOV
    hist = ids[features.USER_HIST_ITEMS].numpy()
    assert hist[0].tolist() == [3, 0] and hist[1].tolist() == [0, 0]
    assert hist[2].tolist() == [1, 2] and hist[3, 0] == item[3]  # same ids as item_id
    assert ids[features.ITEM_TAGS].numpy()[:2].tolist() == [[3, 0], [1, 2]]
    assert 4 <= ids[features.ITEM_TAGS].numpy()[3, 0] < 4 + TAG_OOV
    advertiser = ids[features.ITEM_ADVERTISER].numpy()
    assert advertiser[0] == 0 and 1 <= advertiser[1] <= VOCABULARIES[features.ITEM_ADVERTISER][1]
    # user_id and user_age as HashingPreprocessor's.
    hashed = HashingPreprocessor({features.USER_ID: 50, features.USER_AGE: 6})(
        {features.USER_ID: tf.constant([b"u1", b"", b"u1", b"u2"]),
         features.USER_AGE: tf.constant([-1, 2, 40, 3], tf.int64)})
    for name in (features.USER_ID, features.USER_AGE):
        np.testing.assert_array_equal(ids[name], hashed[name])


def test_config_and_saved_model_round_trips(tmp_path):
    pre = _adapted()
    batch = _batch(item_id=[b"i3", b"zz"], item_tags=[[b"t3", b"q"], [b"", b""]])
    expected = pre(batch)
    clone = VocabularyPreprocessor.from_config(pre.get_config())
    for name in expected:
        np.testing.assert_array_equal(clone(batch)[name], expected[name])

    module = tf.Module()
    module.pre = pre
    module.ids = tf.function(
        lambda items, tags: pre({features.ITEM_ID: items, features.ITEM_TAGS: tags}),
        input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, 2], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    out = loaded.ids(batch[features.ITEM_ID], batch[features.ITEM_TAGS])
    for name in expected:
        np.testing.assert_array_equal(out[name], expected[name])


def test_bad_vocabularies_are_refused_by_name():
    good = {name: [] for name in VOCABULARIES}
    buckets = {features.USER_ID: 10, features.USER_AGE: 5}
    with pytest.raises(ValueError, match=r"lacks the features \['item_tags'\]"):
        VocabularyPreprocessor({k: v for k, v in good.items() if k != features.ITEM_TAGS}, buckets)
    with pytest.raises(ValueError, match=r"no vocabulary is defined for the features \['colour'\]"):
        VocabularyPreprocessor({**good, "colour": ["red"]}, buckets)
    with pytest.raises(ValueError, match="'item_category' contains the empty string"):
        VocabularyPreprocessor({**good, features.ITEM_CATEGORY: ["a", ""]}, buckets)
    with pytest.raises(ValueError, match="'user_geo' has repeated values"):
        VocabularyPreprocessor({**good, features.USER_GEO: ["x", "x"]}, buckets)
    data = tf.data.Dataset.from_tensors(_batch(item_category=[b"\xff\xfe"]))
    with pytest.raises(ValueError, match="feature 'item_category' has a value that is not UTF-8"):
        VocabularyPreprocessor.adapt(data, ModelConfig())
