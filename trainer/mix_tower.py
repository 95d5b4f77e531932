"""One branch of the mix tower: interaction stack -> MLP -> heads (paper Sec. 3.1, Fig. 2).

The branch input is `x0 = concat(UR, IR, UR * IR, e_1, ..., e_F)` (`[batch, d0]`; the
elementwise product `UR * IR` with `ur_ir_product`, so that every branch reads the shared
towers' user-item affinity directly, in the spirit of the paper's Sec. 3.4.2). The interaction
stack is one of
  * `cross`:     `x_l = CrossNetV2(x0, x_{l-1})`, l = 1..L (DCN-v2 Eq. 1, low rank with
                 `cross_projection_dim`);
  * `cross_mix`: `x_l = CrossNetMix(x0, x_{l-1})` (DCN-v2 Sec. 3.2, mixture of low-rank experts);
  * `fm`:        `x_1 = concat(x0, FM([P_u UR, P_i IR, e_1, ..., e_F]))` (Rendle 2010), with
                 UR and IR projected to the field embedding width.
then a ReLU MLP and one logit per head. Every intermediate output is returned under the name
that `ModelConfig.cr_layer` uses (`embedding`, `cross_<l>`, `mlp_<l>`, and `pre_mlp_<l>` for an
MLP layer's input to its ReLU), so any of them can be exported as CR(u,i); `cr` is the one the
config reads (`ModelConfig.cr_output()`, then `cr_normalization`: `l2` scales it to unit length).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from trainer.config import ModelConfig
from trainer.layers.cross import CrossNetV2
from trainer.layers.cross_mix import CrossNetMix
from trainer.layers.fm import FactorizationMachine
from trainer.mlp import MLP

CR_OUTPUT = "cr"  # the output that `ModelConfig` reads as CR(u,i)


class MixBranch(tf.keras.Model):
    """Interaction stack, MLP and `heads` logits of one branch (content, ad or shared).

    Call args:
      representations: `(UR [batch, d_ur], IR [batch, d_ir])`.
      fields: list of field embeddings, each `[batch, embedding_dim]`.
    Returns:
      dict with `embedding`, `cross_1..L`, `mlp_1..M`, `pre_mlp_1..M` (`[batch, width]`
      each), `cr` (the configured CR read, `CR_OUTPUT`) and `logit_<head>` (`[batch, 1]`) for
      each head.
    """

    def __init__(self, config: ModelConfig, heads: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        if not heads:
            raise ValueError("a branch needs at least one head, got ()")
        self.config = config
        self.heads = tuple(heads)
        if config.interaction == "cross":
            self.interactions = [
                CrossNetV2(projection_dim=config.cross_projection_dim, name=f"cross_{i + 1}")
                for i in range(config.num_interaction_layers)
            ]
        elif config.interaction == "cross_mix":
            self.interactions = [
                CrossNetMix(
                    num_experts=config.num_experts, low_rank=config.low_rank, name=f"cross_{i + 1}"
                )
                for i in range(config.num_interaction_layers)
            ]
        else:
            self.project_ur = tf.keras.layers.Dense(config.embedding_dim, use_bias=False)
            self.project_ir = tf.keras.layers.Dense(config.embedding_dim, use_bias=False)
            self.fm = FactorizationMachine(name="cross_1")
        self.mlp = MLP(config.mlp_hidden, dropout=config.dropout,
                       normalization=config.mlp_normalization, name="mlp")
        self.logits = {head: tf.keras.layers.Dense(1, name=f"logit_{head}") for head in heads}
        self.affinity = {
            head: tf.keras.layers.Dense(1, use_bias=False, name=f"affinity_{head}")
            for head in heads
        } if config.affinity_logit else {}

    def get_config(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "heads": list(self.heads),
                "name": self.name}

    def call(self, representations, fields, training: bool = False) -> dict[str, tf.Tensor]:
        ur, ir = representations
        parts = [ur, ir, ur * ir] if self.config.ur_ir_product else [ur, ir]
        x0 = tf.concat([*parts, *fields], axis=-1)  # [batch, d0]
        outputs = {"embedding": x0}
        if self.config.interaction == "fm":
            stacked = tf.stack([self.project_ur(ur), self.project_ir(ir), *fields], axis=1)
            x = tf.concat([x0, self.fm(stacked)], axis=-1)  # [batch, d0 + embedding_dim]
            outputs["cross_1"] = x
        else:
            x = x0
            for i, layer in enumerate(self.interactions):
                x = layer(x0, x)  # [batch, d0]
                outputs[f"cross_{i + 1}"] = x
        hidden, pre = self.mlp(x, training=training, pre_activations=True)
        for i, (h, z) in enumerate(zip(hidden, pre, strict=True)):
            outputs[f"mlp_{i + 1}"] = h
            outputs[f"pre_mlp_{i + 1}"] = z
        cr = outputs[self.config.cr_output()]
        if self.config.cr_normalization == "l2":
            cr = tf.math.l2_normalize(cr, axis=-1)  # [batch, d_cr], unit length
        outputs[CR_OUTPUT] = cr
        for head, dense in self.logits.items():
            logit = dense(h)  # [batch, 1]
            if head in self.affinity:
                logit += self.affinity[head](ur * ir)  # weighted <UR, IR>: [batch, 1]
            outputs[f"logit_{head}"] = logit
        return outputs
