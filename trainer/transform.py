"""The TFT Transform graph of the pipeline: raw features -> the model's integer ids.

`preprocessing_fn` is the Transform component's module function (`trainer.transform.
preprocessing_fn`). Its outputs follow the `FeaturePreprocessor` contract (id 0 = missing /
padding, real values `1 .. size - 1`, lists padded to `features.LIST_LENGTHS`):

* `user_id`: hashed into `USER_HASH_BUCKETS` (cardinality too large for a vocabulary);
* `item_id`, `user_hist_items`: one vocabulary over both (shared table), with a frequency
  threshold and OOV buckets;
* `item_category`, `item_tags`, `item_advertiser`, `user_geo`, `user_gender`, `scenario`: a
  vocabulary each, with OOV buckets;
* `user_age`: a clipped integer bucket;
* `hour_of_day`, `day_of_week`: buckets derived from `timestamp` (UTC), embedded as context;
* `item_cold_start`: 1 when `item_id` never appears in the analysed (train) split (slicing);
* `label`, `conversion`, `domain`, `timestamp`: passed through.

Vocabularies are computed on the train split only (the Transform component's default
`splits_config`), so an item first seen in the eval window is out of vocabulary: its id is an
OOV bucket and `item_cold_start` is 1.

`TransformPreprocessor` is the model-side half: the towers get the transformed ids unchanged,
with the id-space sizes read from the `TFTransformOutput`.
"""

from __future__ import annotations

import tensorflow as tf

from trainer import features as F
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor

USER_HASH_BUCKETS = 100_000
AGE_BUCKETS = 100
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "day_of_week"
ITEM_COLD_START = "item_cold_start"
CONTEXT_FIELDS = (HOUR_OF_DAY, DAY_OF_WEEK)

# Vocabulary features: name -> (vocabulary file name, OOV buckets, frequency threshold).
VOCABULARIES = {
    F.ITEM_ID: ("item_id", 100, 2),
    F.ITEM_CATEGORY: ("item_category", 5, 1),
    F.ITEM_TAGS: ("item_tags", 5, 1),
    F.ITEM_ADVERTISER: ("item_advertiser", 20, 1),
    F.USER_GEO: ("user_geo", 5, 1),
    F.USER_GENDER: ("user_gender", 2, 1),
    F.SCENARIO: ("scenario", 2, 1),
}
SHARED_VOCABULARY = {F.USER_HIST_ITEMS: F.ITEM_ID}  # uses another feature's vocabulary
ALL_ITEMS_VOCABULARY = "item_id_all"  # every train item, threshold 1: the cold-start flag
PASSTHROUGH = (F.LABEL, F.CONVERSION, F.DOMAIN, F.TIMESTAMP)

_FIXED_SIZES = {
    F.USER_ID: USER_HASH_BUCKETS + 1,
    F.USER_AGE: AGE_BUCKETS + 1,
    HOUR_OF_DAY: 24 + 1,
    DAY_OF_WEEK: 7 + 1,
}


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


def shift_ids(value: tf.Tensor, vocabulary_ids: tf.Tensor) -> tf.Tensor:
    """Vocabulary ids `0 .. V + oov - 1` shifted by one, with `b""` (padding) as id 0."""
    return tf.where(value == b"", tf.zeros_like(vocabulary_ids), vocabulary_ids + 1)


def preprocessing_fn(inputs: dict) -> dict:
    """TFT preprocessing: raw features (`trainer.features`) -> ids and pass-through labels."""
    import tensorflow_transform as tft

    raw = {}
    for name in F.ALL_FEATURES:
        if name in F.LIST_FEATURES:
            raw[name] = _dense_list(inputs[name], F.LIST_LENGTHS[name])
        else:
            raw[name] = _scalar(inputs[name])
    out = {name: raw[name] for name in PASSTHROUGH}

    hashed = tf.strings.to_hash_bucket_fast(raw[F.USER_ID], USER_HASH_BUCKETS) + 1
    out[F.USER_ID] = tf.where(raw[F.USER_ID] == b"", tf.zeros_like(hashed), hashed)
    out[F.USER_AGE] = tf.clip_by_value(raw[F.USER_AGE], 0, AGE_BUCKETS - 1) + 1

    vocabularies = {}
    for name, (filename, _, threshold) in VOCABULARIES.items():
        values = raw[name]
        if name == F.ITEM_ID:  # history items share the item vocabulary
            values = tf.concat([values, tf.reshape(raw[F.USER_HIST_ITEMS], [-1])], axis=0)
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

    all_items = tft.vocabulary(raw[F.ITEM_ID], vocab_filename=ALL_ITEMS_VOCABULARY)
    known = tft.apply_vocabulary(raw[F.ITEM_ID], all_items, default_value=-1)
    out[ITEM_COLD_START] = tf.cast(known < 0, tf.int64)

    seconds = raw[F.TIMESTAMP]
    out[HOUR_OF_DAY] = (seconds // 3600) % 24 + 1
    out[DAY_OF_WEEK] = ((seconds // 86_400) + 3) % 7 + 1  # 1970-01-01 was a Thursday (3)
    return out


def vocabulary_sizes(tft_output) -> dict[str, int]:
    """Id-space size of every transformed id feature (padding id 0 included)."""
    sizes = dict(_FIXED_SIZES)
    for name, (filename, oov, _) in VOCABULARIES.items():
        sizes[name] = tft_output.vocabulary_size_by_name(filename) + oov + 1
    for name, source in SHARED_VOCABULARY.items():
        sizes[name] = sizes[source]
    return sizes


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class TransformPreprocessor(FeaturePreprocessor):
    """Passes the Transform graph's ids through to the towers (the ids are already computed).

    Args:
      sizes: feature name -> id-space size, from `vocabulary_sizes(tft_output)`.

    The exported signatures run the Transform graph on raw examples first
    (`trainer.export.export_saved_model(..., transform=...)`), so serving still takes raw
    serialized tf.Examples.
    """

    def __init__(self, sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        missing = sorted(set(BUCKET_FIELDS) - set(sizes))
        if missing:
            raise ValueError(f"sizes lacks the model features {missing}")
        self.sizes = {name: int(size) for name, size in sizes.items()}

    def vocabulary_size(self, name: str) -> int:
        return self.sizes[name]

    def context_fields(self) -> tuple[str, ...]:
        return tuple(name for name in CONTEXT_FIELDS if name in self.sizes)

    def call(self, ids: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {name: tf.cast(value, tf.int64) for name, value in ids.items()
                if name in self.sizes}

    def get_config(self) -> dict:
        return {**super().get_config(), "sizes": dict(self.sizes)}
