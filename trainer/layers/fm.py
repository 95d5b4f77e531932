"""`FactorizationMachine`: second-order field interactions with the sum-square identity.

Source: S. Rendle, "Factorization Machines", ICDM 2010, Eq. (1) and Lemma 3.1 (the `O(k n)`
rewrite of the pairwise sum); the vector form kept before the final sum over `dim` is the
bi-interaction pooling of He & Chua, "Neural Factorization Machines", SIGIR 2017, Eq. (4).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class FactorizationMachine(tf.keras.layers.Layer):
    """Pairwise (second-order) interactions of field embeddings.

    `Σ_{f<g} v_f ⊙ v_g = 0.5 · ((Σ_f v_f)^2 − Σ_f v_f^2)` (Rendle 2010, Lemma 3.1; element-wise
    squares), computed in `O(fields · dim)` instead of `O(fields^2 · dim)`.

    With 16-bit compute dtypes (the mixed-precision policies) the sums and the difference are
    computed in float32, because the identity subtracts two large numbers, and the result is
    cast back to the compute dtype. The layer has no weights.

    Args:
      reduce_sum: False (default) returns the bi-interaction vector `[batch, dim]`, usable as
        the input of an MLP; True sums it over `dim` into the FM logit term `[batch, 1]`.

    Call args:
      inputs: `[batch, fields, dim]` field embeddings `v_f`.

    Returns:
      `[batch, dim]`, or `[batch, 1]` with `reduce_sum=True`, in the compute dtype.

    Example:
      >>> emb = tf.random.normal([8, 5, 16])  # [batch, fields, dim]
      >>> FactorizationMachine()(emb).shape
      TensorShape([8, 16])
      >>> FactorizationMachine(reduce_sum=True)(emb).shape
      TensorShape([8, 1])
    """

    def __init__(self, reduce_sum: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(reduce_sum, bool):
            raise ValueError(f"reduce_sum must be a bool, got {reduce_sum!r}")
        self.reduce_sum = reduce_sum

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 3:
            raise ValueError(
                "FactorizationMachine expects inputs of rank 3 [batch, fields, dim], "
                f"got rank {input_shape.rank} (shape {input_shape})"
            )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        v = inputs
        if v.dtype in (tf.float16, tf.bfloat16):
            v = tf.cast(v, tf.float32)
        square_of_sum = tf.square(tf.reduce_sum(v, axis=1))  # [batch, dim]
        sum_of_squares = tf.reduce_sum(tf.square(v), axis=1)  # [batch, dim]
        out = 0.5 * (square_of_sum - sum_of_squares)  # [batch, dim]
        if self.reduce_sum:
            out = tf.reduce_sum(out, axis=-1, keepdims=True)  # [batch, 1]
        return tf.cast(out, inputs.dtype)

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], 1 if self.reduce_sum else input_shape[-1]])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "reduce_sum": self.reduce_sum}
