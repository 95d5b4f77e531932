"""A shallow feature-affinity path next to the deep branches (wide-and-deep in spirit).

Each head's logit gains

    alpha_h * cos(U, V) + c_h + sum_f b_f[id_f]

with `U` the sum of embeddings of the user's descriptive features (no ids, no history), `V`
the sum of the item's (category, mean of the tags), `alpha_h` a learned scale and `c_h` an
intercept per head, and `b_f` first-order (bias) terms of the scenario and the advertiser
(`BIAS_FIELDS`; click heads only).
The path has its own tables and no ids, so it generalises to users and items never seen in
training (cold start), and it learns from every row of both domains: the small ad domain
borrows the content domain's user-item affinity directly (paper Sec. 3.4.2), while the deep
branches learn what the path cannot express.

The path learns slowly and the deep branches over-fit small ad data within a few epochs, so
training has two stages (`LFM4AdsModel.fit_feature_path`, then `fit` with the path frozen);
why, with figures: `docs/BENCHMARKS.md` (issue 2's quality target).
"""

from __future__ import annotations

import tensorflow as tf

from common import features
from trainer.embeddings import lookup

# The default fields (`ModelConfig.feature_path_*_fields` choose others).
USER_FIELDS = (features.USER_AGE, features.USER_GENDER, features.USER_GEO)
ITEM_FIELDS = (features.ITEM_CATEGORY, features.ITEM_TAGS)
BIAS_FIELDS = (features.SCENARIO, features.ITEM_ADVERTISER)
ALPHA_INIT = 3.0  # a cosine in [-1, 1] needs a few units of logit to matter


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class FeatureAffinityPath(tf.keras.layers.Layer):
    """`alpha_h * cos(U, V) + c_h` (+ biases on the click heads) for each head `h`.

    Args:
      vocabulary_sizes: id-space size of every field in `user_fields + item_fields +
        bias_fields` (as the model's `FeaturePreprocessor` reports them).
      heads: head names; each gets its own `alpha`.
      bias_heads: the heads that also get the first-order terms.
      embedding_dim: width of `U` and `V`.
      bias_l2: L2 penalty on the bias tables (`bias_l2 * sum(b^2)`); rare values (an
        advertiser with a handful of clicks) over-fit without it.
      user_fields, item_fields: the fields summed into `U` and `V` (single- or multi-valued).
      bias_fields: the fields with a first-order term (may be empty).
      embedding_l2: L2 penalty on the embedding tables (`embedding_l2 * sum(E^2)`, a Gaussian
        prior on the feature vectors): the path is a maximum-likelihood fit of ~1.3k numbers,
        and at 200k examples its error is variance, not optimisation (`docs/BENCHMARKS.md`).
    Call args:
      ids: feature name -> int ids (`[batch]`, or `[batch, length]` with padding id 0).
    Returns:
      head -> logit contribution `[batch, 1]`.
    """

    def __init__(
        self,
        vocabulary_sizes: dict[str, int],
        heads: tuple[str, ...],
        bias_heads: tuple[str, ...] = (),
        embedding_dim: int = 8,
        bias_l2: float = 1e-4,
        embedding_l2: float = 0.0,
        user_fields: tuple[str, ...] = USER_FIELDS,
        item_fields: tuple[str, ...] = ITEM_FIELDS,
        bias_fields: tuple[str, ...] = BIAS_FIELDS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.user_fields, self.item_fields = tuple(user_fields), tuple(item_fields)
        self.bias_fields = tuple(bias_fields)
        if not self.user_fields or not self.item_fields:
            raise ValueError(f"the feature path needs user and item fields, got user_fields="
                             f"{list(self.user_fields)} and item_fields={list(self.item_fields)}")
        fields = self.user_fields + self.item_fields + self.bias_fields
        missing = sorted(set(fields) - set(vocabulary_sizes))
        if missing:
            raise ValueError(f"vocabulary_sizes lacks the feature path's fields {missing}")
        unknown = sorted(set(bias_heads) - set(heads))
        if unknown:
            raise ValueError(f"bias_heads {unknown} are not among heads {list(heads)}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if bias_l2 < 0:
            raise ValueError(f"bias_l2 must be >= 0, got {bias_l2}")
        if embedding_l2 < 0:
            raise ValueError(f"embedding_l2 must be >= 0, got {embedding_l2}")
        self.vocabulary_sizes = {name: int(vocabulary_sizes[name]) for name in fields}
        self.heads = tuple(heads)
        self.bias_heads = tuple(bias_heads)
        self.embedding_dim = int(embedding_dim)
        self.bias_l2 = float(bias_l2)
        self.embedding_l2 = float(embedding_l2)

    def build(self, input_shape=None):
        self.tables = {
            name: self.add_weight(
                name=f"{name}_affinity_embedding",
                shape=(self.vocabulary_sizes[name], self.embedding_dim),
                initializer=tf.keras.initializers.RandomNormal(stddev=0.3),
            )
            for name in self.user_fields + self.item_fields
        }
        self.biases = {
            name: self.add_weight(
                name=f"{name}_bias", shape=(self.vocabulary_sizes[name],), initializer="zeros"
            )
            for name in self.bias_fields
        }
        self.alpha = self.add_weight(
            name="alpha", shape=(len(self.heads),),
            initializer=tf.keras.initializers.Constant(ALPHA_INIT),
        )
        self.intercept = self.add_weight(
            name="intercept", shape=(len(self.heads),), initializer="zeros")
        super().build(input_shape)

    def _sum(self, ids: dict[str, tf.Tensor], fields: tuple[str, ...]) -> tf.Tensor:
        return tf.add_n([lookup(self.tables[name], ids[name]) for name in fields])  # [batch, d]

    def call(self, ids: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if not self.built:
            self.build()
        u = tf.math.l2_normalize(self._sum(ids, self.user_fields), -1)
        v = tf.math.l2_normalize(self._sum(ids, self.item_fields), -1)
        cos = tf.reduce_sum(u * v, -1, keepdims=True)  # [batch, 1]
        bias = tf.add_n([
            tf.gather(self.biases[name], ids[name])[:, None] for name in self.bias_fields
        ]) if self.bias_fields else 0.0  # [batch, 1]
        for l2, tables in ((self.bias_l2, self.biases), (self.embedding_l2, self.tables)):
            if l2 and tables:  # float32 under mixed precision too
                self.add_loss(l2 * tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(t, tf.float32))) for t in tables.values()]))
        return {
            head: self.alpha[i] * cos + self.intercept[i]
            + (bias if head in self.bias_heads else 0.0)
            for i, head in enumerate(self.heads)
        }

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocabulary_sizes": dict(self.vocabulary_sizes),
            "heads": list(self.heads),
            "bias_heads": list(self.bias_heads),
            "embedding_dim": self.embedding_dim,
            "bias_l2": self.bias_l2,
            "embedding_l2": self.embedding_l2,
            "user_fields": list(self.user_fields),
            "item_fields": list(self.item_fields),
            "bias_fields": list(self.bias_fields),
        }
