"""Vocabulary ids computed in memory: the pipeline Transform's id scheme for `trainer.train`.

The TFX pipeline maps string features to ids with TFT vocabularies (`trainer.transform`); the
standalone trainer used to hash them instead, and hashing merges values: 100 tags hashed into
1,999 buckets collide about 2.5 times on average (the synthetic data's 100 tags and 100
advertisers lose 3 and 2 pairs to collisions). `VocabularyPreprocessor.adapt` counts the
values of the training split once and builds the same ids as the Transform: one vocabulary per
feature in `trainer.transform.VOCABULARIES` (same frequency thresholds and OOV buckets),
`user_hist_items` sharing `item_id`'s, `user_id` hashed and `user_age` clipped as in
`HashingPreprocessor`. Id 0 is padding / missing, ids `1 .. V` are the vocabulary's `V` values,
most frequent first, and the OOV buckets follow (a value never seen in training hashes into one
of them). The lookup tables are part of the model, so the exported SavedModel carries them.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from common import features
from trainer.config import ModelConfig
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor, HashingPreprocessor
from trainer.transform import SHARED_VOCABULARY, VOCABULARIES, shift_ids

HASHED_FIELDS = (features.USER_ID,
                 features.USER_AGE)  # too many values for a vocabulary / an int bucket


def count_values(dataset: tf.data.Dataset) -> dict[str, collections.Counter]:
    """Occurrences of every non-empty value of the vocabulary features in `dataset` (batches
    of raw features); `item_id`'s counts include the history items (one shared vocabulary)."""
    counts = {name: collections.Counter() for name in VOCABULARIES}
    sources = {name: (name,) for name in VOCABULARIES}
    for name, source in SHARED_VOCABULARY.items():
        sources[source] += (name,)
    for batch in dataset:
        for name, inputs in sources.items():
            present = [batch[f].numpy().reshape(-1) for f in inputs if f in batch]
            if not present:
                continue
            values = np.concatenate(present)
            unique, n = np.unique(values[values != b""], return_counts=True)
            counts[name].update(dict(zip(unique.tolist(), n.tolist(), strict=True)))
    return counts


def _decode(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"feature {name!r} has a value that is not UTF-8 ({value[:40]!r}); vocabularies "
            "need UTF-8 strings (hash the feature instead: --no-vocabularies)") from None


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class VocabularyPreprocessor(FeaturePreprocessor):
    """Vocabulary ids for the string features, hashed `user_id`, bucketed `user_age`.

    Args:
      vocabularies: feature name -> its values, most frequent first, for every feature of
        `trainer.transform.VOCABULARIES` (each gets that table's OOV buckets).
      buckets: id-space sizes of `user_id` and `user_age` (as `HashingPreprocessor`'s).
    Build one from data with `VocabularyPreprocessor.adapt(dataset, model_config)`.
    """

    def __init__(self, vocabularies: dict[str, list[str]], buckets: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        missing = sorted(set(VOCABULARIES) - set(vocabularies))
        if missing:
            raise ValueError(f"vocabularies lacks the features {missing}")
        unknown = sorted(set(vocabularies) - set(VOCABULARIES))
        if unknown:
            raise ValueError(f"no vocabulary is defined for the features {unknown}; "
                             f"vocabulary features: {sorted(VOCABULARIES)}")
        for name, values in vocabularies.items():
            if "" in values:
                raise ValueError(f"the vocabulary of {name!r} contains the empty string, "
                                 "which is reserved for padding (id 0)")
            if len(set(values)) != len(values):
                raise ValueError(f"the vocabulary of {name!r} has repeated values")
        self.vocabularies = {name: [str(v) for v in values]
                             for name, values in vocabularies.items()}
        self.hashing = HashingPreprocessor(
            {name: buckets[name] for name in HASHED_FIELDS}, name="hashing")
        self.tables = {
            name: tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(values, tf.string, shape=[len(values)]),
                    tf.range(len(values), dtype=tf.int64)),
                default_value=-1)
            for name, values in self.vocabularies.items()
            if values  # an empty table is refused; every value is then out of vocabulary
        }

    @classmethod
    def adapt(cls, dataset: tf.data.Dataset, config: ModelConfig) -> VocabularyPreprocessor:
        """Counts `dataset` (batches of raw features, one pass) and keeps the values at or above
        each feature's frequency threshold, most frequent first (ties: the larger value first), the
        order of `tft.vocabulary`."""
        vocabularies = {}
        for name, counter in count_values(dataset).items():
            threshold = VOCABULARIES[name][2]
            kept = sorted(((count, value) for value, count in counter.items()
                           if count >= threshold), reverse=True)  # TFT's order
            vocabularies[name] = [_decode(name, value) for _, value in kept]
        return cls(vocabularies,
                   {name: getattr(config, BUCKET_FIELDS[name]) for name in HASHED_FIELDS})

    def vocabulary_size(self, name: str) -> int:
        if name in HASHED_FIELDS:
            return self.hashing.vocabulary_size(name)
        source = SHARED_VOCABULARY.get(name, name)
        return 1 + VOCABULARIES[source][1] + len(self.vocabularies[source])

    def call(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.hashing({name: raw[name] for name in HASHED_FIELDS if name in raw})
        for name, value in raw.items():
            source = SHARED_VOCABULARY.get(name, name)
            if source in self.vocabularies:
                out[name] = self._lookup(source, value)
        return out

    def _lookup(self, name: str, value: tf.Tensor) -> tf.Tensor:
        """As the Transform: vocabulary ids, then OOV buckets (hashed), all shifted by one."""
        size, oov = len(self.vocabularies[name]), VOCABULARIES[name][1]
        if name in self.tables:
            index = self.tables[name].lookup(value)
        else:
            index = tf.fill(tf.shape(value), tf.constant(-1, tf.int64))
        unknown = size + tf.strings.to_hash_bucket_fast(value, oov)
        return shift_ids(value, tf.where(index >= 0, index, unknown))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocabularies": {name: list(values) for name, values in self.vocabularies.items()},
            "buckets": dict(self.hashing.buckets),
        }
