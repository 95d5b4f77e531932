"""A plain ReLU MLP whose every hidden output stays reachable (for CR extraction)."""

from __future__ import annotations

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class MLP(tf.keras.layers.Layer):
    """`h_l = relu(W_l h_{l-1} + b_l)` for each width in `hidden`; returns every `h_l`.

    Args:
      hidden: widths of the hidden layers, e.g. `(256, 128, 64)`.
      dropout: dropout rate after each hidden layer (training only).
    Call:
      `[batch, d_in]` -> list of `[batch, hidden[l]]`, one per layer.
    """

    def __init__(self, hidden: tuple[int, ...], dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden = hidden
        self.dropout = float(dropout)

    def build(self, input_shape):
        self.dense_layers = [
            tf.keras.layers.Dense(width, activation="relu", name=f"dense_{i + 1}")
            for i, width in enumerate(self.hidden)
        ]
        self.dropout_layer = tf.keras.layers.Dropout(self.dropout) if self.dropout else None
        super().build(input_shape)

    def call(self, x: tf.Tensor, training: bool = False) -> list[tf.Tensor]:
        outputs = []
        for dense in self.dense_layers:
            x = dense(x)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
            outputs.append(x)
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": list(self.hidden), "dropout": self.dropout}
