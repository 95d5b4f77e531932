"""`LinearFusion`: the projection baseline for transferring representations (paper Sec. 3.4.1,
Table 1 "LFM4Ads w/ linear fusion").

The representations are mapped linearly into the downstream model's input and concatenated
next to the field embeddings, `h = [r_1, ..., r_k] · W + b`. The paper tried such a projection
(and an alignment loss) before settling on the non-linear adapter: linear fusion gained
0.0001 AUC over SUM, the adapter 0.0005 (Table 1). The same layer, on the output of one
upstream layer at a time, is the "simple linear transformation" of the layer study (Sec. 5.1.3).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from trainer.layers.cross import clone_initializer


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class LinearFusion(tf.keras.layers.Layer):
    """`h = concat(r_1, ..., r_k) · W + b`.

    Args:
      units: width of `h`.
      use_bias: whether to add `b`.
      kernel_initializer, kernel_regularizer: of `W`, as in `tf.keras.layers.Dense`.

    Call args:
      inputs: one tensor `[batch, d]` or a list of `[batch, d_j]` (concatenated).

    Returns:
      `[batch, units]` float32.

    Example:
      >>> cr_user, cr_item = tf.random.normal([8, 64]), tf.random.normal([8, 64])
      >>> LinearFusion(16)([cr_user, cr_item]).shape
      TensorShape([8, 16])
    """

    def __init__(self, units: int, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", kernel_regularizer: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"use_bias must be a bool, got {use_bias!r}")
        self.units = units
        self.use_bias = use_bias
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape) -> None:
        shapes = input_shape if isinstance(input_shape, (list, tuple)) and input_shape and \
            isinstance(input_shape[0], (list, tuple, tf.TensorShape)) else [input_shape]
        dims = []
        for shape in shapes:
            shape = tf.TensorShape(shape)
            if shape.rank != 2 or shape[-1] is None:
                raise ValueError(f"every input must be [batch, d] with a known d, got {shape}")
            dims.append(int(shape[-1]))
        self.kernel = self.add_weight(
            name="kernel", shape=(sum(dims), self.units),  # W: [sum d_j, units]
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer, dtype=tf.float32)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros",
                                    dtype=tf.float32) if self.use_bias else None
        super().build(input_shape)

    def call(self, inputs) -> tf.Tensor:
        parts = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        x = tf.concat([tf.cast(p, tf.float32) for p in parts], axis=-1)  # [batch, sum d_j]
        h = tf.matmul(x, self.kernel)  # [batch, units]
        return h + self.bias if self.bias is not None else h

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        }
