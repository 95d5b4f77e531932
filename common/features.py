"""The raw tf.Example schema shared by every data source, the trainer and the server.

The data contract of ``docs/ARCHITECTURE.md``. One sample is one ``tf.Example``:

| feature | dtype | shape | side |
|---|---|---|---|
| ``user_id``, ``item_id`` | bytes | scalar | ids |
| ``domain`` | bytes | scalar, ``content`` or ``ad`` | context |
| ``scenario`` | bytes | scalar | context |
| ``timestamp`` | int64 | scalar, unix seconds | context |
| ``user_age`` | int64 | scalar bucket | user |
| ``user_gender``, ``user_geo`` | bytes | scalar | user |
| ``user_hist_items`` | bytes | list, newest first, strictly before ``timestamp`` | user |
| ``item_category``, ``item_advertiser`` | bytes | scalar (advertiser empty for content) | item |
| ``item_tags`` | bytes | list | item |
| ``label`` | int64 | scalar 0/1 | label |
| ``conversion`` | int64 | scalar 0/1 (0 for content) | label |
"""

from __future__ import annotations

import tensorflow as tf

USER_ID = "user_id"
ITEM_ID = "item_id"
DOMAIN = "domain"
SCENARIO = "scenario"
TIMESTAMP = "timestamp"  # Unix seconds
DAY = 86_400  # seconds
USER_AGE = "user_age"
USER_GENDER = "user_gender"
USER_GEO = "user_geo"
USER_HIST_ITEMS = "user_hist_items"
ITEM_CATEGORY = "item_category"
ITEM_TAGS = "item_tags"
ITEM_ADVERTISER = "item_advertiser"
LABEL = "label"
CONVERSION = "conversion"

DOMAIN_CONTENT = b"content"
DOMAIN_AD = b"ad"

# Maximum length of `user_hist_items` that a source writes and the model reads.
MAX_HISTORY = 20

# The two id features (the rest describe users and items by their attributes).
ID_FEATURES = (USER_ID, ITEM_ID)
USER_FEATURES = (USER_ID, USER_AGE, USER_GENDER, USER_GEO, USER_HIST_ITEMS)
ITEM_FEATURES = (ITEM_ID, ITEM_CATEGORY, ITEM_TAGS, ITEM_ADVERTISER)
CONTEXT_FEATURES = (DOMAIN, SCENARIO, TIMESTAMP)
LABEL_FEATURES = (LABEL, CONVERSION)

# Python type of each feature's values: bytes or int.
FEATURE_TYPES: dict[str, type] = {
    USER_ID: bytes,
    ITEM_ID: bytes,
    DOMAIN: bytes,
    SCENARIO: bytes,
    TIMESTAMP: int,
    USER_AGE: int,
    USER_GENDER: bytes,
    USER_GEO: bytes,
    USER_HIST_ITEMS: bytes,
    ITEM_CATEGORY: bytes,
    ITEM_TAGS: bytes,
    ITEM_ADVERTISER: bytes,
    LABEL: int,
    CONVERSION: int,
}
LIST_FEATURES = frozenset({USER_HIST_ITEMS, ITEM_TAGS})
ALL_FEATURES = tuple(FEATURE_TYPES)


def feature_spec(names=ALL_FEATURES) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """`tf.io.parse_example` spec for `names`: scalars are required, lists may be empty."""
    spec = {}
    for name in names:
        if name not in FEATURE_TYPES:
            raise ValueError(f"Unknown feature {name!r}; known features: {sorted(FEATURE_TYPES)}")
        dtype = tf.string if FEATURE_TYPES[name] is bytes else tf.int64
        if name in LIST_FEATURES:
            spec[name] = tf.io.VarLenFeature(dtype)
        else:
            spec[name] = tf.io.FixedLenFeature([], dtype)
    return spec


# Fixed lengths that list features are padded (with b"") or cut to, so that every tensor the
# model sees has a static shape (XLA, TPU/GPU friendly).
LIST_LENGTHS = {USER_HIST_ITEMS: MAX_HISTORY, ITEM_TAGS: 5}


def densify(parsed: dict[str, tf.Tensor | tf.SparseTensor]) -> dict[str, tf.Tensor]:
    """Turns the VarLen list features of `parse_example` output into `[batch, LIST_LENGTHS]`.

    Lists are cut to their fixed length (keeping the first values: newest history items) and
    padded with `b""`; scalars pass through unchanged.
    """
    out = {}
    for name, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            length = LIST_LENGTHS[name]
            dense = tf.sparse.to_dense(value, default_value=b"")  # [batch, ragged max]
            dense = dense[:, :length]
            pad = length - tf.shape(dense)[1]
            dense = tf.pad(dense, [[0, 0], [0, pad]], constant_values=b"")
            dense.set_shape([None, length])  # [batch, length]
            out[name] = dense
        else:
            out[name] = value
    return out


def parse_examples(serialized: tf.Tensor, names=ALL_FEATURES) -> dict[str, tf.Tensor]:
    """Parses `[batch]` serialized tf.Examples into dense tensors of the features in `names`.

    A missing scalar feature or a value of the wrong type raises `InvalidArgumentError` whose
    message names the feature (TensorFlow's parser does that).
    """
    return densify(tf.io.parse_example(serialized, feature_spec(names)))
