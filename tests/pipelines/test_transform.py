"""The TFT preprocessing_fn: ids per the FeaturePreprocessor contract, vocabularies from the
analysed data only, cold-start flag, timestamp buckets; and the pass-through preprocessor."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import schema_utils

from pipelines import configs
from trainer import features as F
from trainer import transform as T
from trainer.config import ModelConfig


def _load_schema():
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(configs.SCHEMA_FILE)


def _row(user, item, hist, tags, ts, advertiser=b"adv1", domain=b"ad"):
    return {
        F.USER_ID: [user], F.ITEM_ID: [item], F.DOMAIN: [domain], F.SCENARIO: [b"feed"],
        F.TIMESTAMP: [ts], F.USER_AGE: [3], F.USER_GENDER: [b"f"], F.USER_GEO: [b"geo1"],
        F.USER_HIST_ITEMS: hist, F.ITEM_CATEGORY: [b"cat1"], F.ITEM_TAGS: tags,
        F.ITEM_ADVERTISER: [advertiser], F.LABEL: [1], F.CONVERSION: [0],
    }


def _train_rows():
    return [
        _row(b"u1", b"i1", [], [b"t1"], 0),
        _row(b"u1", b"i2", [b"i1"], [b"t1", b"t2"], 3600 * 5),
        _row(b"u2", b"i1", [b"i2", b"i1"], [], 86_400 + 60, advertiser=b"", domain=b"content"),
    ]


def _later_rows():
    """An eval-window row: item i9, history item i7 and tag t9 never appear in training."""
    return [_row(b"u3", b"i9", [b"i1", b"i7"], [b"t9"], 86_400 * 3 + 3600 * 23)]


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    train, later = _train_rows(), _later_rows()
    metadata = tft.DatasetMetadata(_load_schema())
    tmp = str(tmp_path_factory.mktemp("tft"))
    with tft_beam.Context(temp_dir=tmp, force_tf_compat_v1=False):
        (out, _), transform_fn = (train, metadata) | tft_beam.AnalyzeAndTransformDataset(
            T.preprocessing_fn)
        later_out, _ = ((later, metadata), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(tmp)
    return out, later_out, tft.TFTransformOutput(tmp)


def test_schema_spec_is_the_raw_contract():
    spec = schema_utils.schema_as_feature_spec(_load_schema()).feature_spec
    assert set(spec) == set(F.ALL_FEATURES)
    for name in F.LIST_FEATURES:
        assert isinstance(spec[name], tf.io.VarLenFeature)


def test_ids_follow_the_preprocessor_contract(transformed):
    out, later, tft_output = transformed
    sizes = T.vocabulary_sizes(tft_output)
    # item_id min frequency 2: i1 appears 1 + 2 (history) times, i2 1 + 1 times.
    items = tft_output.vocabulary_by_name("item_id")
    assert sorted(items) == [b"i1", b"i2"]
    assert sizes[F.ITEM_ID] == 2 + T.VOCABULARIES[F.ITEM_ID][1] + 1
    for row in out + later:
        for name, size in sizes.items():
            ids = np.atleast_1d(row[name])
            assert ids.min() >= 0 and ids.max() < size, name
    # History shares the item vocabulary; padding is id 0; b"" advertiser is id 0.
    assert list(out[2][F.USER_HIST_ITEMS][:2]) == [out[1][F.ITEM_ID], out[0][F.ITEM_ID]]
    assert np.all(out[2][F.USER_HIST_ITEMS][2:] == 0) and len(out[2][F.USER_HIST_ITEMS]) == 20
    assert out[2][F.ITEM_ADVERTISER] == 0 and out[0][F.ITEM_ADVERTISER] > 0
    assert len(out[1][F.ITEM_TAGS]) == 5 and np.count_nonzero(out[1][F.ITEM_TAGS]) == 2


def test_unseen_items_are_oov_and_flagged_cold_start(transformed):
    out, later, _ = transformed
    vocabulary_ids = {out[0][F.ITEM_ID], out[1][F.ITEM_ID]}
    assert [r[T.ITEM_COLD_START] for r in out] == [0, 0, 0]
    assert later[0][T.ITEM_COLD_START] == 1
    assert later[0][F.ITEM_ID] not in vocabulary_ids and later[0][F.ITEM_ID] > 2  # OOV bucket


def test_timestamp_buckets_and_pass_through(transformed):
    out, later, _ = transformed
    assert [r[T.HOUR_OF_DAY] for r in out] == [1, 6, 1]
    assert later[0][T.HOUR_OF_DAY] == 24
    assert out[0][T.DAY_OF_WEEK] == 4  # 1970-01-01 was a Thursday: Monday is 1
    assert out[2][T.DAY_OF_WEEK] == out[0][T.DAY_OF_WEEK] + 1
    assert out[2][F.DOMAIN] == b"content" and out[0][F.LABEL] == 1


def test_transform_preprocessor_passes_ids_and_checks_sizes(transformed):
    _, _, tft_output = transformed
    pre = T.TransformPreprocessor(T.vocabulary_sizes(tft_output))
    assert pre.context_fields() == T.CONTEXT_FIELDS
    ids = pre({F.USER_ID: tf.constant([5]), F.LABEL: tf.constant([1]),
               T.HOUR_OF_DAY: tf.constant([3])})
    assert set(ids) == {F.USER_ID, T.HOUR_OF_DAY}
    with pytest.raises(ValueError, match="item_id"):
        T.TransformPreprocessor({F.USER_ID: 10})


def _raw_batch(rows: list[dict]) -> dict[str, tf.Tensor]:
    """The rows as one batch of dense raw features (lists padded with b"")."""
    batch = {}
    for name in F.ALL_FEATURES:
        if name in F.LIST_FEATURES:
            length = F.LIST_LENGTHS[name]
            batch[name] = tf.constant([(r[name] + [b""] * length)[:length] for r in rows])
        else:
            batch[name] = tf.constant([r[name][0] for r in rows])
    return batch


def test_in_memory_vocabularies_give_the_transform_ids(transformed):
    """`trainer.train`'s VocabularyPreprocessor reproduces the Transform's ids: same vocabularies
    (thresholds, order, shared history), same OOV buckets for values never seen."""
    from trainer.vocabulary import VocabularyPreprocessor

    out, later, tft_output = transformed
    train, unseen = _train_rows(), _later_rows()  # the fixture's rows
    pre = VocabularyPreprocessor.adapt(
        tf.data.Dataset.from_tensors(_raw_batch(train)), ModelConfig())
    for name, (filename, _, _) in T.VOCABULARIES.items():
        assert pre.vocabularies[name] == [
            v.decode() for v in tft_output.vocabulary_by_name(filename)], name
    sizes = T.vocabulary_sizes(tft_output)
    for rows, expected in ((train, out), (unseen, later)):
        ids = pre(_raw_batch(rows))
        for name in list(T.VOCABULARIES) + list(T.SHARED_VOCABULARY):
            assert pre.vocabulary_size(name) == sizes[name], name
            got = ids[name].numpy()
            np.testing.assert_array_equal(got, np.stack([r[name] for r in expected]), name)
