"""Feature embeddings shared by the user tower, the item tower and the mix tower."""

from __future__ import annotations

import tensorflow as tf

from common import features

# Features whose ids live in another feature's id space and share its table.
SHARED_TABLES = {features.USER_HIST_ITEMS: features.ITEM_ID}


def lookup(table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """`table[ids]` for scalar ids `[batch]`; for id lists `[batch, length]`, the mean over the
    non-padding ids (padding id 0 contributes nothing). Returns `[batch, d]`."""
    vectors = tf.nn.embedding_lookup(table, ids)  # [batch, (length,) d]
    if ids.shape.rank == 2:
        mask = tf.cast(ids != 0, vectors.dtype)[..., None]  # [batch, length, 1]
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)  # [batch, 1]
        vectors = tf.reduce_sum(vectors * mask, axis=1) / count  # [batch, d]
    return vectors


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class FeatureEmbeddings(tf.keras.layers.Layer):
    """One embedding table per id space; list features are mean-pooled over non-padding ids.

    `e_f = E_f[id_f]` for a scalar feature, `e_f = sum_j m_j E_f[id_j] / max(1, sum_j m_j)` with
    `m_j = [id_j != 0]` for a list feature (padding id 0 contributes nothing). Id 0 of a scalar
    feature has its own learned row ("missing").

    Args:
      vocabulary_sizes: table name -> number of ids.
      embedding_dim: width `d` of every embedding.
      zero_init: tables initialised to zeros, so that an id never seen in training (a cold-start
        item hashed to an untrained row) contributes nothing rather than random noise.
      l2: weight of `l2 * mean_batch(sum_f ||e_f||^2)` added to the layer's losses (only the rows
        a batch looks up are penalised, as in sparse-embedding training).
    Call args:
      ids: feature name -> int ids `[batch]` or `[batch, length]`.
    Returns:
      feature name -> `[batch, d]`.
    """

    def __init__(
        self,
        vocabulary_sizes: dict[str, int],
        embedding_dim: int,
        l2: float = 0.0,
        zero_init: tuple[str, ...] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)
        unknown = sorted(set(zero_init) - set(vocabulary_sizes))
        if unknown:
            raise ValueError(f"zero_init names unknown tables {unknown}")
        self.zero_init = tuple(zero_init)
        self.vocabulary_sizes = {k: int(v) for k, v in vocabulary_sizes.items()}
        self.embedding_dim = int(embedding_dim)

    def build(self, input_shape=None):
        self.tables = {
            name: self.add_weight(
                name=f"{name}_embedding",
                shape=(size, self.embedding_dim),
                initializer="zeros"
                if name in self.zero_init
                else tf.keras.initializers.RandomNormal(stddev=0.05),
            )
            for name, size in self.vocabulary_sizes.items()
        }
        super().build(input_shape)

    def call(self, ids: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if not self.built:
            self.build()
        out = {}
        for name, value in ids.items():
            out[name] = lookup(self.tables[SHARED_TABLES.get(name, name)], value)
        if self.l2:
            squares = [tf.reduce_sum(tf.square(v), axis=-1) for v in out.values()]  # [batch] each
            self.add_loss(self.l2 * tf.reduce_mean(tf.add_n(squares)))
        return out

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocabulary_sizes": dict(self.vocabulary_sizes),
            "embedding_dim": self.embedding_dim,
            "l2": self.l2,
            "zero_init": list(self.zero_init),
        }
