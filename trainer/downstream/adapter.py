"""`NonLinearAdapter`: the feature-level usage of a cross representation (paper Sec. 3.4.1).

Source: LFM4Ads (arXiv 2508.14948), Eq. (3)-(4): given the downstream field embeddings
`E = [..., e_f, ...]` and an upstream cross representation `CR` (CR(u), CR(i), or both
concatenated), every field embedding is gated by the same non-linearly activated projection
of the CR,

    E' = E ⊙ σ(CR · M) = [..., e_f ⊙ σ(CR · M), ...],

with `M: [d_cr, d']` trainable and `d'` the width of a field embedding. The paper reads it as a
self-gating adapter (Fibinet's SENET, PEPNet's gate units): the CR decides how much of each
embedding dimension passes, instead of being concatenated next to features it shares no
space with. A CR of zeros (a cold-start key) gives the gate `σ(0)` on every dimension.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from trainer.layers.cross import clone_initializer


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class NonLinearAdapter(tf.keras.layers.Layer):
    """`E' = E ⊙ σ(CR · M)` (LFM4Ads Eq. 3-4).

    Args:
      activation: σ, any Keras activation name or callable (the paper: a non-linear
        activation; default sigmoid).
      per_field: False (the paper, Eq. 4): one gate `[d']` shared by every field;
        True: `M: [d_cr, F * d']`, a gate per field.
      use_bias: add a bias to `CR · M` (the paper has none).
      kernel_initializer, kernel_regularizer: of `M`, as in `tf.keras.layers.Dense`.

    Call args:
      inputs: `(E, CR)` with `E: [batch, F, d']` field embeddings and `CR: [batch, d_cr]`.

    Returns:
      `E'`: `[batch, F, d']`, in `E`'s dtype.

    Example:
      >>> fields = tf.random.normal([8, 10, 16])  # 10 fields of width 16
      >>> cr = tf.random.normal([8, 64])  # [CR(u), CR(i)]
      >>> NonLinearAdapter()((fields, cr)).shape
      TensorShape([8, 10, 16])
    """

    def __init__(self, activation: Any = "sigmoid", per_field: bool = False,
                 use_bias: bool = False, kernel_initializer: Any = "glorot_uniform",
                 kernel_regularizer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(per_field, bool):
            raise ValueError(f"per_field must be a bool, got {per_field!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"use_bias must be a bool, got {use_bias!r}")
        try:
            self.activation = tf.keras.activations.get(activation)
        except ValueError as e:
            raise ValueError(f"activation {activation!r} is not a Keras activation") from e
        self.per_field = per_field
        self.use_bias = use_bias
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape) -> None:
        fields_shape, cr_shape = (tf.TensorShape(s) for s in input_shape)
        if fields_shape.rank != 3 or fields_shape[1] is None or fields_shape[2] is None:
            raise ValueError(f"E must be [batch, fields, width] with known fields and width, "
                             f"got shape {fields_shape}")
        if cr_shape.rank != 2 or cr_shape[-1] is None:
            raise ValueError(f"CR must be [batch, d_cr] with a known d_cr, got shape {cr_shape}")
        self.num_fields, self.width = int(fields_shape[1]), int(fields_shape[2])
        units = self.width * (self.num_fields if self.per_field else 1)
        self.kernel = self.add_weight(
            name="kernel", shape=(int(cr_shape[-1]), units),  # M: [d_cr, (F *) d']
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer, dtype=tf.float32)
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros",
                                    dtype=tf.float32) if self.use_bias else None
        super().build(input_shape)

    def call(self, inputs) -> tf.Tensor:
        fields, cr = inputs
        logits = tf.matmul(tf.cast(cr, tf.float32), self.kernel)  # [batch, (F *) d']
        if self.bias is not None:
            logits += self.bias
        gate = self.activation(logits)
        if self.per_field:
            gate = tf.reshape(gate, [-1, self.num_fields, self.width])  # [batch, F, d']
        else:
            gate = gate[:, None, :]  # [batch, 1, d'], the same for every field (Eq. 4)
        return fields * tf.cast(gate, fields.dtype)  # [batch, F, d']

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "activation": tf.keras.activations.serialize(self.activation),
            "per_field": self.per_field,
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        }
