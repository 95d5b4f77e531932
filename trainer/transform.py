"""What the pipeline's Transform computes: raw features -> the model's integer ids.

The TFT graph itself is `trainer.tfx.transform_module.preprocessing_fn` (the Transform
component's module function); this module holds what it computes, without TFT. Its outputs
follow the `FeaturePreprocessor` contract (id 0 = missing / padding, real values
`1 .. size - 1`, lists padded to `features.LIST_LENGTHS`):

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

from common import features
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor

USER_HASH_BUCKETS = 100_000
AGE_BUCKETS = 100
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "day_of_week"
ITEM_COLD_START = "item_cold_start"
CONTEXT_FIELDS = (HOUR_OF_DAY, DAY_OF_WEEK)

# Vocabulary features: name -> (vocabulary file name, OOV buckets, frequency threshold).
VOCABULARIES = {
    features.ITEM_ID: ("item_id", 100, 2),
    features.ITEM_CATEGORY: ("item_category", 5, 1),
    features.ITEM_TAGS: ("item_tags", 5, 1),
    features.ITEM_ADVERTISER: ("item_advertiser", 20, 1),
    features.USER_GEO: ("user_geo", 5, 1),
    features.USER_GENDER: ("user_gender", 2, 1),
    features.SCENARIO: ("scenario", 2, 1),
}
SHARED_VOCABULARY = {
    features.USER_HIST_ITEMS: features.ITEM_ID
}  # uses another feature's vocabulary
ALL_ITEMS_VOCABULARY = "item_id_all"  # every train item, threshold 1: the cold-start flag
PASSTHROUGH = (features.LABEL, features.CONVERSION, features.DOMAIN, features.TIMESTAMP)

_FIXED_SIZES = {
    features.USER_ID: USER_HASH_BUCKETS + 1,
    features.USER_AGE: AGE_BUCKETS + 1,
    HOUR_OF_DAY: 24 + 1,
    DAY_OF_WEEK: 7 + 1,
}


def shift_ids(value: tf.Tensor, vocabulary_ids: tf.Tensor) -> tf.Tensor:
    """Vocabulary ids `0 .. V + oov - 1` shifted by one, with `b""` (padding) as id 0."""
    return tf.where(value == b"", tf.zeros_like(vocabulary_ids), vocabulary_ids + 1)


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
