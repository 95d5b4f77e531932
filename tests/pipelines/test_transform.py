"""The TFT preprocessing_fn: ids per the FeaturePreprocessor contract, vocabularies from the
analysed data only, cold-start flag, timestamp buckets; and the pass-through preprocessor."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import schema_utils

from common import features
from pipelines import configs
from trainer import transform
from trainer.config import ModelConfig
from trainer.tfx import transform_module


def _load_schema():
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(configs.SCHEMA_FILE)


def _row(user, item, hist, tags, ts, advertiser=b"adv1", domain=b"ad"):
    return {
        features.USER_ID: [user], features.ITEM_ID: [item], features.DOMAIN: [domain],
        features.SCENARIO: [b"feed"],
        features.TIMESTAMP: [ts], features.USER_AGE: [3], features.USER_GENDER: [b"f"],
        features.USER_GEO: [b"geo1"],
        features.USER_HIST_ITEMS: hist, features.ITEM_CATEGORY: [b"cat1"], features.ITEM_TAGS: tags,
        features.ITEM_ADVERTISER: [advertiser], features.LABEL: [1], features.CONVERSION: [0],
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
            transform_module.preprocessing_fn)
        later_out, _ = ((later, metadata), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(tmp)
    return out, later_out, tft.TFTransformOutput(tmp)


def test_schema_spec_is_the_raw_contract():
    spec = schema_utils.schema_as_feature_spec(_load_schema()).feature_spec
    assert set(spec) == set(features.ALL_FEATURES)
    for name in features.LIST_FEATURES:
        assert isinstance(spec[name], tf.io.VarLenFeature)


@pytest.mark.slow
def test_ids_follow_the_preprocessor_contract(transformed):
    out, later, tft_output = transformed
    sizes = transform.vocabulary_sizes(tft_output)
    # item_id min frequency 2: i1 appears 1 + 2 (history) times, i2 1 + 1 times.
    items = tft_output.vocabulary_by_name("item_id")
    assert sorted(items) == [b"i1", b"i2"]
    assert sizes[features.ITEM_ID] == 2 + transform.VOCABULARIES[features.ITEM_ID][1] + 1
    for row in out + later:
        for name, size in sizes.items():
            ids = np.atleast_1d(row[name])
            assert ids.min() >= 0 and ids.max() < size, name
    # History shares the item vocabulary; padding is id 0; b"" advertiser is id 0.
    assert list(out[2][features.USER_HIST_ITEMS][:2]) == [out[1][features.ITEM_ID],
                                                          out[0][features.ITEM_ID]]
    assert (
        np.all(out[2][features.USER_HIST_ITEMS][2:] == 0)
        and len(out[2][features.USER_HIST_ITEMS]) == 20
    )
    assert out[2][features.ITEM_ADVERTISER] == 0 and out[0][features.ITEM_ADVERTISER] > 0
    assert (
        len(out[1][features.ITEM_TAGS]) == 5 and np.count_nonzero(out[1][features.ITEM_TAGS]) == 2
    )


@pytest.mark.slow
def test_unseen_items_are_oov_and_flagged_cold_start(transformed):
    out, later, _ = transformed
    vocabulary_ids = {out[0][features.ITEM_ID], out[1][features.ITEM_ID]}
    assert [r[transform.ITEM_COLD_START] for r in out] == [0, 0, 0]
    assert later[0][transform.ITEM_COLD_START] == 1
    assert (
        later[0][features.ITEM_ID] not in vocabulary_ids and later[0][features.ITEM_ID] > 2
    )  # OOV bucket


@pytest.mark.slow
def test_timestamp_buckets_and_pass_through(transformed):
    out, later, _ = transformed
    assert [r[transform.HOUR_OF_DAY] for r in out] == [1, 6, 1]
    assert later[0][transform.HOUR_OF_DAY] == 24
    assert out[0][transform.DAY_OF_WEEK] == 4  # 1970-01-01 was a Thursday: Monday is 1
    assert out[2][transform.DAY_OF_WEEK] == out[0][transform.DAY_OF_WEEK] + 1
    assert out[2][features.DOMAIN] == b"content" and out[0][features.LABEL] == 1


@pytest.mark.slow
def test_transform_preprocessor_passes_ids_and_checks_sizes(transformed):
    _, _, tft_output = transformed
    pre = transform.TransformPreprocessor(transform.vocabulary_sizes(tft_output))
    assert pre.context_fields() == transform.CONTEXT_FIELDS
    ids = pre({features.USER_ID: tf.constant([5]), features.LABEL: tf.constant([1]),
               transform.HOUR_OF_DAY: tf.constant([3])})
    assert set(ids) == {features.USER_ID, transform.HOUR_OF_DAY}
    with pytest.raises(ValueError, match="item_id"):
        transform.TransformPreprocessor({features.USER_ID: 10})


def _raw_batch(rows: list[dict]) -> dict[str, tf.Tensor]:
    """The rows as one batch of dense raw features (lists padded with b"")."""
    batch = {}
    for name in features.ALL_FEATURES:
        if name in features.LIST_FEATURES:
            length = features.LIST_LENGTHS[name]
            batch[name] = tf.constant([(r[name] + [b""] * length)[:length] for r in rows])
        else:
            batch[name] = tf.constant([r[name][0] for r in rows])
    return batch


@pytest.mark.slow
def test_in_memory_vocabularies_give_the_transform_ids(transformed):
    """`trainer.train`'s VocabularyPreprocessor reproduces the Transform's ids: same vocabularies
    (thresholds, order, shared history), same OOV buckets for values never seen."""
    from trainer.vocabulary import VocabularyPreprocessor

    out, later, tft_output = transformed
    train, unseen = _train_rows(), _later_rows()  # the fixture's rows
    pre = VocabularyPreprocessor.adapt(
        tf.data.Dataset.from_tensors(_raw_batch(train)), ModelConfig())
    for name, (filename, _, _) in transform.VOCABULARIES.items():
        assert pre.vocabularies[name] == [
            v.decode() for v in tft_output.vocabulary_by_name(filename)], name
    sizes = transform.vocabulary_sizes(tft_output)
    for rows, expected in ((train, out), (unseen, later)):
        ids = pre(_raw_batch(rows))
        for name in list(transform.VOCABULARIES) + list(transform.SHARED_VOCABULARY):
            assert pre.vocabulary_size(name) == sizes[name], name
            got = ids[name].numpy()
            np.testing.assert_array_equal(got, np.stack([r[name] for r in expected]), name)
