"""The Transform component's module file: `preprocessing_fn`, the TFT graph of the pipeline.

The pipeline names it as `trainer.tfx.transform_module.preprocessing_fn`. What it computes
(vocabularies, buckets, the cold-start flag) and the model-side half (`TransformPreprocessor`)
are in `trainer.transform`, which needs no TFT; this module is the only one of `trainer/`
besides the other TFX module files that may import `tensorflow_transform`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from common import features
from trainer.transform import (
    AGE_BUCKETS,
    ALL_ITEMS_VOCABULARY,
    DAY_OF_WEEK,
    HOUR_OF_DAY,
    ITEM_COLD_START,
    PASSTHROUGH,
    SHARED_VOCABULARY,
    USER_HASH_BUCKETS,
    VOCABULARIES,
    shift_ids,
)


def _dense_list(value: tf.Tensor | tf.SparseTensor, length: int) -> tf.Tensor:
    """A VarLen string feature as `[batch, length]`, cut or padded with `b""`."""
    if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value, default_value=b"")
    value = value[:, :length]
    value = tf.pad(value, [[0, 0], [0, length - tf.shape(value)[1]]], constant_values=b"")
    return tf.reshape(value, [-1, length])


def _scalar(value: tf.Tensor | tf.SparseTensor) -> tf.Tensor:
    """A required scalar feature as `[batch]` (TFT may hand it over as `[batch, 1]`)."""
    if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value)
    return tf.reshape(value, [-1])


def preprocessing_fn(inputs: dict) -> dict:
    """TFT preprocessing: raw features (`common.features`) -> ids and pass-through labels."""
    raw = {}
    for name in features.ALL_FEATURES:
        if name in features.LIST_FEATURES:
            raw[name] = _dense_list(inputs[name], features.LIST_LENGTHS[name])
        else:
            raw[name] = _scalar(inputs[name])
    out = {name: raw[name] for name in PASSTHROUGH}

    hashed = tf.strings.to_hash_bucket_fast(raw[features.USER_ID], USER_HASH_BUCKETS) + 1
    out[features.USER_ID] = tf.where(raw[features.USER_ID] == b"", tf.zeros_like(hashed), hashed)
    out[features.USER_AGE] = tf.clip_by_value(raw[features.USER_AGE], 0, AGE_BUCKETS - 1) + 1

    vocabularies = {}
    for name, (filename, _, threshold) in VOCABULARIES.items():
        values = raw[name]
        if name == features.ITEM_ID:  # history items share the item vocabulary
            values = tf.concat([values, tf.reshape(raw[features.USER_HIST_ITEMS], [-1])], axis=0)
        values = tf.reshape(values, [-1])
        values = tf.boolean_mask(values, values != b"")
        vocabularies[name] = tft.vocabulary(
            values, vocab_filename=filename, frequency_threshold=threshold
        )
    for name, (_, oov, _) in VOCABULARIES.items():
        ids = tft.apply_vocabulary(raw[name], vocabularies[name], num_oov_buckets=oov)
        out[name] = shift_ids(raw[name], ids)
    for name, source in SHARED_VOCABULARY.items():
        oov = VOCABULARIES[source][1]
        ids = tft.apply_vocabulary(raw[name], vocabularies[source], num_oov_buckets=oov)
        out[name] = shift_ids(raw[name], ids)

    all_items = tft.vocabulary(raw[features.ITEM_ID], vocab_filename=ALL_ITEMS_VOCABULARY)
    known = tft.apply_vocabulary(raw[features.ITEM_ID], all_items, default_value=-1)
    out[ITEM_COLD_START] = tf.cast(known < 0, tf.int64)

    seconds = raw[features.TIMESTAMP]
    out[HOUR_OF_DAY] = (seconds // 3600) % 24 + 1
    out[DAY_OF_WEEK] = ((seconds // 86_400) + 3) % 7 + 1  # 1970-01-01 was a Thursday (3)
    return out
