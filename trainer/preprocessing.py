"""Raw features -> integer ids, behind one interface that the TFT Transform graph can replace.

The towers only ever see the output of a `FeaturePreprocessor`: a dict from feature name to
int64 ids, `[batch]` for scalar features and `[batch, LIST_LENGTHS[name]]` for list features,
where id 0 means "missing / padding" and real values use ids `1 .. vocabulary_size(name) - 1`.
`HashingPreprocessor` is the default, stateless implementation (no vocabulary to compute);
the TFX pipeline swaps in one backed by `tft.TFTransformOutput` without touching the towers.
"""

from __future__ import annotations

import tensorflow as tf

from common import features
from trainer.config import ModelConfig

# Features the model embeds, with the ModelConfig field that sizes each id space.
BUCKET_FIELDS = {
    features.USER_ID: "user_id_buckets",
    features.ITEM_ID: "item_id_buckets",
    features.USER_HIST_ITEMS: "item_id_buckets",  # same id space as item_id: one shared table
    features.ITEM_CATEGORY: "category_buckets",
    features.ITEM_TAGS: "tag_buckets",
    features.ITEM_ADVERTISER: "advertiser_buckets",
    features.USER_GEO: "geo_buckets",
    features.USER_GENDER: "gender_buckets",
    features.SCENARIO: "scenario_buckets",
    features.USER_AGE: "age_buckets",
}


class FeaturePreprocessor(tf.keras.layers.Layer):
    """Interface: `call(raw: dict) -> dict` of int64 ids for the model features present in `raw`.

    Features absent from `raw` are absent from the output, so a signature that parses only the
    user features gets only user ids. Non-model features (labels, domain, timestamp) are
    dropped.
    """

    def vocabulary_size(self, name: str) -> int:
        raise NotImplementedError

    def context_fields(self) -> tuple[str, ...]:
        """Extra context features (beyond `BUCKET_FIELDS`) the mix tower embeds; none here."""
        return ()


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class HashingPreprocessor(FeaturePreprocessor):
    """Hashes string features into `buckets - 1` ids (`1 + farmhash(value) % (buckets - 1)`).

    `b""` maps to id 0 (content items have no advertiser; lists are padded with `b""`).
    `user_age` is an int64 bucket: `1 + clip(age, 0, buckets - 2)`, so negative ages are 1.

    Args:
      buckets: feature name -> id space size (ids `0 .. buckets - 1`), each at least 2.

    Example:
      >>> pre = HashingPreprocessor.from_model_config(ModelConfig())
      >>> pre({"user_id": tf.constant([b"u1", b""])})["user_id"]  # [2] int64, second is 0
    """

    def __init__(self, buckets: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        unknown = sorted(set(buckets) - set(BUCKET_FIELDS))
        if unknown:
            raise ValueError(f"Unknown features {unknown}; known: {sorted(BUCKET_FIELDS)}")
        for name, size in buckets.items():
            if int(size) < 2:
                raise ValueError(f"buckets[{name!r}] must be >= 2, got {size}")
        self.buckets = {name: int(size) for name, size in buckets.items()}

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> HashingPreprocessor:
        return cls({name: getattr(config, field) for name, field in BUCKET_FIELDS.items()})

    def vocabulary_size(self, name: str) -> int:
        return self.buckets[name]

    def call(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {}
        for name, value in raw.items():
            if name not in self.buckets:
                continue
            size = self.buckets[name]
            if value.dtype == tf.string:
                hashed = tf.strings.to_hash_bucket_fast(value, size - 1) + 1
                out[name] = tf.where(value == b"", tf.zeros_like(hashed), hashed)
            else:
                out[name] = tf.clip_by_value(tf.cast(value, tf.int64), 0, size - 2) + 1
        return out

    def get_config(self) -> dict:
        return {**super().get_config(), "buckets": dict(self.buckets)}
