"""`CrossNetMix`: one DCN-v2 cross layer made of a gated mixture of low-rank experts.

Source: R. Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021 (arXiv 2008.13535), Sec. 3.2, Eq. (3)-(4).

All experts run together: their weights are stacked (`V: [experts, dim, rank]`,
`C: [experts, rank, rank]`, `U: [experts, rank, dim]`) and every product is one matrix-matrix
(or batched matrix-matrix) multiplication, so the layer has static shapes, no Python loop over
experts and compiles to a handful of GEMMs under XLA.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from trainer.layers.cross import clone_initializer


@tf.keras.utils.register_keras_serializable(package="lfm4ads")
class CrossNetMix(tf.keras.layers.Layer):
    """One DCN-v2 "mixture of low-rank experts" cross layer.

    `x_{l+1} = Σ_i G_i(x_l) · E_i(x_l) + x_l`, with experts
    `E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b)` and gates
    `G(x_l) = softmax(x_l W_g)` over the experts (DCN V2, Wang et al. 2021, Eq. 3 and 4).

    The bias `b: [dim]` is shared by the experts, as in the paper; since the gates sum to one,
    `Σ_i G_i (x_0 ⊙ (U_i h_i + b)) = x_0 ⊙ (Σ_i U_i (G_i h_i) + b)`, which is how the layer
    computes it: the gates scale the `[batch, experts, rank]` hidden state, and one
    `[batch, experts * rank] @ [experts * rank, dim]` product both applies the `U_i` and sums
    the experts (the `[batch, experts, dim]` tensor of expert outputs is never built).

    Gate logits and the softmax are computed in the variable dtype (float32 under the
    mixed-precision policies, so 16-bit logits can neither overflow nor lose the small gates);
    the gates are then cast to the compute dtype. The gate kernel is never autocast.

    Args:
      num_experts: number of low-rank experts (>= 1).
      low_rank: rank `r` of each expert (>= 1).
      activation: the nonlinearity `g`; any Keras activation, or None / "linear" for none.
      use_bias: whether to add the shared bias `b: [dim]`.
      kernel_initializer: initializer of `V`, `C`, `U` and the gate kernel `W_g: [dim, experts]`.
      bias_initializer: initializer of `b`.
      kernel_regularizer: regularizer of `V`, `C` and `U` (not of the gates).
      bias_regularizer: regularizer of `b`.

    Call args:
      x0: `[batch, dim]` the input of the first cross layer.
      x: `[batch, dim]` the output of the previous cross layer; defaults to `x0`.

    Returns:
      `[batch, dim]` in the layer's compute dtype.

    Example:
      >>> x0 = tf.random.normal([8, 16])
      >>> x1 = CrossNetMix(num_experts=4, low_rank=4)(x0)
      >>> x2 = CrossNetMix(num_experts=4, low_rank=4)(x0, x1)  # [8, 16]
    """

    def __init__(
        self,
        num_experts: int = 4,
        low_rank: int = 32,
        activation: Any = "tanh",
        use_bias: bool = True,
        kernel_initializer: Any = "truncated_normal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_experts", num_experts), ("low_rank", low_rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_experts = num_experts
        self.low_rank = low_rank
        self.activation = tf.keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)
        self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 2 or input_shape[-1] is None:
            raise ValueError(
                "CrossNetMix expects inputs of shape [batch, dim] with a known dim, "
                f"got shape {input_shape}"
            )
        dim, experts, rank = input_shape[-1], self.num_experts, self.low_rank
        self.v_kernel = self.add_weight(
            "v_kernel",
            shape=[experts, dim, rank],
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.c_kernel = self.add_weight(
            "c_kernel",
            shape=[experts, rank, rank],
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.u_kernel = self.add_weight(
            "u_kernel",
            shape=[experts, rank, dim],
            initializer=clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        # Never autocast: under the mixed policies the gate logits and softmax stay in the
        # variable dtype (float32).
        self.gate_kernel = self.add_weight(
            "gate_kernel",
            shape=[dim, experts],
            initializer=clone_initializer(self.kernel_initializer),
            experimental_autocast=False,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                "bias",
                shape=[dim],
                initializer=clone_initializer(self.bias_initializer),
                regularizer=self.bias_regularizer,
            )
        super().build(input_shape)

    def gates(self, x: tf.Tensor) -> tf.Tensor:
        """`softmax(x W_g)`: `[batch, dim]` -> `[batch, experts]` gates in the variable dtype
        (float32 under the mixed-precision policies)."""
        logits = tf.matmul(tf.cast(x, self.gate_kernel.dtype), self.gate_kernel)  # [batch, experts]
        return tf.nn.softmax(logits, axis=-1)

    def call(self, x0: tf.Tensor, x: tf.Tensor | None = None) -> tf.Tensor:
        # Keras autocasts only the first argument to the compute dtype.
        x = x0 if x is None else tf.cast(x, self.compute_dtype)
        experts, rank = self.num_experts, self.low_rank
        dim = self.u_kernel.shape[-1]
        # All V_i^T x as one GEMM: [batch, dim] @ [dim, experts * rank].
        v_flat = tf.reshape(tf.transpose(self.v_kernel, [1, 0, 2]), [dim, experts * rank])
        h = tf.reshape(tf.matmul(x, v_flat), [-1, experts, rank])  # [batch, experts, rank]
        h = self.activation(h)
        # All C_i at once: a matrix product batched over the experts.
        h = self.activation(tf.einsum("ber,ers->bes", h, self.c_kernel))  # [batch, experts, rank]
        gates = tf.cast(self.gates(x), h.dtype)  # [batch, experts]
        h = h * gates[:, :, tf.newaxis]  # [batch, experts, rank]
        # Σ_i U_i (G_i h_i) as one GEMM: [batch, experts * rank] @ [experts * rank, dim].
        mixed = tf.matmul(
            tf.reshape(h, [-1, experts * rank]),
            tf.reshape(self.u_kernel, [experts * rank, dim]),
        )  # [batch, dim]
        if self.use_bias:
            mixed = tf.nn.bias_add(mixed, self.bias)
        return x0 * mixed + x

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = {
            "num_experts": self.num_experts,
            "low_rank": self.low_rank,
            "activation": tf.keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
        }
        return {**super().get_config(), **config}
