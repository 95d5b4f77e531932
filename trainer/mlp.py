"""A plain ReLU MLP whose every hidden output stays reachable (for CR extraction)."""

from __future__ import annotations

import tensorflow as tf

NORMALIZATIONS = ("none", "layer")


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class MLP(tf.keras.layers.Layer):
    """`h_l = relu(N_l(W_l h_{l-1} + b_l))` for each width in `hidden`; returns every `h_l`.

    `N_l` is the identity (`normalization="none"`) or a layer normalisation of the
    pre-activation (`"layer"`: `gamma * (z - mean(z)) / std(z) + beta` over the layer's units,
    Ba et al. 2016), which keeps about half of each layer's ReLUs active on every row, so that
    no unit dies and the layer does not fall onto a few directions.

    Args:
      hidden: widths of the hidden layers, e.g. `(256, 128, 64)`.
      dropout: dropout rate after each hidden layer (training only).
      normalization: `"none"` or `"layer"`, applied before each ReLU.
    Call:
      `[batch, d_in]` -> list of `[batch, hidden[l]]`, one per layer; with
      `pre_activations=True`, `(outputs, pre_activations)`: also each layer's input to its
      ReLU, `N_l(W_l h_{l-1} + b_l)`.
    """

    def __init__(self, hidden: tuple[int, ...], dropout: float = 0.0,
                 normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}")
        self.hidden = hidden
        self.dropout = float(dropout)
        self.normalization = normalization

    def build(self, input_shape):
        self.dense_layers = [
            tf.keras.layers.Dense(width, name=f"dense_{i + 1}")
            for i, width in enumerate(self.hidden)
        ]
        self.norm_layers = [
            tf.keras.layers.LayerNormalization(name=f"norm_{i + 1}")
            for i in range(len(self.hidden))
        ] if self.normalization == "layer" else None
        self.dropout_layer = tf.keras.layers.Dropout(self.dropout) if self.dropout else None
        super().build(input_shape)

    def call(self, x: tf.Tensor, training: bool = False, pre_activations: bool = False):
        outputs, pres = [], []
        for i, dense in enumerate(self.dense_layers):
            z = dense(x)  # [batch, hidden[i]]
            if self.norm_layers is not None:
                z = self.norm_layers[i](z)
            pres.append(z)
            x = tf.nn.relu(z)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
            outputs.append(x)
        return (outputs, pres) if pre_activations else outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": list(self.hidden), "dropout": self.dropout,
                "normalization": self.normalization}
