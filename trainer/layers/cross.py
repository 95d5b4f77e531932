"""`CrossNetV2`: one DCN-v2 cross layer, full rank or low rank.

Source: R. Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021 (arXiv 2008.13535), Eq. (1) and the low-rank
variant of Sec. 3.2 / Eq. (2).

The layer is a drop-in replacement of `tfrs.layers.dcn.Cross` (same arguments, same call
signature, same numbers given the same weights) written for this project's conventions:
float32 variables under the mixed-precision policies, XLA friendly, Keras-serializable under
the `lfm4ads` package.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def clone_initializer(
    initializer: tf.keras.initializers.Initializer,
) -> tf.keras.initializers.Initializer:
    """A fresh instance per weight: Keras 2 warns when one unseeded instance is reused."""
    return initializer.__class__.from_config(initializer.get_config())


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class CrossNetV2(tf.keras.layers.Layer):
    """One DCN-v2 cross layer.

    `x_{l+1} = x_0 ⊙ (W x_l + b + diag_scale · x_l) + x_l` (DCN V2, Wang et al. 2021, Eq. 1;
    `diag_scale` adds `diag_scale · I` to `W`, as in `tfrs.layers.dcn.Cross`).

    Full rank (`projection_dim=None`): `W` is a `[dim, dim]` matrix. Low rank
    (`projection_dim=r`): `W = U V^T` (DCN V2, Eq. 2) with `V: [dim, r]` applied first and
    `U: [r, dim]`, i.e. `x_l @ V @ U` in row-vector form. Weights are stored in Keras' row-vector
    convention (`y = x @ kernel`), so `kernel` is `W^T`.

    Args:
      projection_dim: rank `r` of the low-rank factorization, or None for a full-rank `W`.
      diag_scale: non-negative scale of the identity added to `W`.
      use_bias: whether to add the bias `b: [dim]`.
      kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer: as in
        `tf.keras.layers.Dense`.

    Call args:
      x0: `[batch, dim]` (or `[..., dim]`) the input of the first cross layer.
      x: `[batch, dim]` the output of the previous cross layer; defaults to `x0`.

    Returns:
      `[batch, dim]` in the layer's compute dtype.

    Example:
      >>> x0 = tf.random.normal([8, 16])
      >>> x1 = CrossNetV2(projection_dim=4)(x0)
      >>> x2 = CrossNetV2(projection_dim=4)(x0, x1)  # [8, 16]
    """

    def __init__(
        self,
        projection_dim: int | None = None,
        diag_scale: float = 0.0,
        use_bias: bool = True,
        kernel_initializer: Any = "truncated_normal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if projection_dim is not None and (
            isinstance(projection_dim, bool)
            or not isinstance(projection_dim, int)
            or projection_dim < 1
        ):
            raise ValueError(
                f"projection_dim must be a positive int or None, got {projection_dim!r}"
            )
        if isinstance(diag_scale, bool) or not isinstance(diag_scale, (int, float)):
            raise ValueError(f"diag_scale must be a number, got {diag_scale!r}")
        if diag_scale < 0:
            raise ValueError(f"diag_scale must be non-negative, got {diag_scale!r}")
        self.projection_dim = projection_dim
        self.diag_scale = float(diag_scale)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)
        self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank is not None and input_shape.rank < 2:
            raise ValueError(
                f"CrossNetV2 expects inputs of rank >= 2 ([batch, dim]), got shape {input_shape}"
            )
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"CrossNetV2 needs a known last dimension, got input shape {input_shape}"
            )
        self.kernel = self.v_kernel = self.u_kernel = self.bias = None
        if self.projection_dim is None:
            self.kernel = self.add_weight(
                "kernel",
                shape=[dim, dim],  # W^T
                initializer=clone_initializer(self.kernel_initializer),
                regularizer=self.kernel_regularizer,
            )
        else:
            self.v_kernel = self.add_weight(
                "v_kernel",
                shape=[dim, self.projection_dim],  # V
                initializer=clone_initializer(self.kernel_initializer),
                regularizer=self.kernel_regularizer,
            )
            self.u_kernel = self.add_weight(
                "u_kernel",
                shape=[self.projection_dim, dim],  # U^T
                initializer=clone_initializer(self.kernel_initializer),
                regularizer=self.kernel_regularizer,
            )
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                shape=[dim],
                initializer=clone_initializer(self.bias_initializer),
                regularizer=self.bias_regularizer,
            )
        super().build(input_shape)

    def _project(self, x: tf.Tensor, kernel: tf.Variable) -> tf.Tensor:
        """`x @ kernel` for `x: [..., k]`; one GEMM whatever the leading dimensions."""
        if x.shape.rank == 2:
            return tf.matmul(x, kernel)
        flat = tf.reshape(x, [-1, x.shape[-1]])  # [batch * ..., k]
        out = tf.matmul(flat, kernel)  # [batch * ..., n]
        return tf.reshape(out, tf.concat([tf.shape(x)[:-1], tf.shape(kernel)[-1:]], 0))

    def call(self, x0: tf.Tensor, x: tf.Tensor | None = None) -> tf.Tensor:
        # Keras autocasts only the first argument to the compute dtype.
        x = x0 if x is None else tf.cast(x, self.compute_dtype)
        if self.projection_dim is None:
            wx = self._project(x, self.kernel)  # [batch, dim]
        else:
            wx = self._project(self._project(x, self.v_kernel), self.u_kernel)  # [batch, dim]
        if self.use_bias:
            wx = tf.nn.bias_add(wx, self.bias)
        if self.diag_scale:
            wx = wx + self.diag_scale * x
        return x0 * wx + x

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = {
            "projection_dim": self.projection_dim,
            "diag_scale": self.diag_scale,
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
        }
        return {**super().get_config(), **config}
