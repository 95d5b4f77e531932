"""The downstream ranker: a DCN-v2 on the ad domain's own features, plus what its transfer mode
takes from the upstream (paper Sec. 3.4, Table 1; modes in `trainer.downstream.config`).

    E   = [e_f for f in FIELDS]                                      own embeddings [batch, F, d]
    E'  = E ⊙ σ([CR(u), CR(i), found] · M)                           adapter modes (Eq. 3-4)
    x0  = [flatten(E'), UR, IR, found indicators, LinearFusion(CRs), logit(p_up)] as the mode
          has them (p_up: the upstream's predicted click probability of the row, `distill`)
    x_L = CrossNetV2(x0, x_{L-1}) ...                                 DCN-v2 (Wang et al. 2021)
    h   = MLP([x_L, IIM(UR, IR)])                                     IIM modes (Eq. 5)
    p   = σ(w · h + b)
    q   = σ(w_d · h + b_d)                                            `distill` (ExFM)

Loss: binary cross-entropy on the click label, plus `iim_aux_loss_weight` times the module's
own loss in the IIM modes (Sec. 5.2.2), plus `distill_loss_weight · BCE(p_up, q)` in `distill`
(the upstream's probability as a soft target of the auxiliary head: the external
distillation of Meta's ExFM, "External Large Foundation Model", 2025). The served prediction
is always p. A representation that a row cannot see (a cold-start key) arrives as zeros with
its found indicator 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from common import features, signatures
from trainer.config import ModelConfig
from trainer.downstream import config as downstream_config
from trainer.downstream.adapter import NonLinearAdapter
from trainer.downstream.iim import IsomorphicInteractionModule
from trainer.downstream.linear_fusion import LinearFusion
from trainer.embeddings import SHARED_TABLES, FeatureEmbeddings
from trainer.layers.cross import CrossNetV2
from trainer.mlp import MLP
from trainer.preprocessing import BUCKET_FIELDS, FeaturePreprocessor

# p_up is clipped to [eps, 1 - eps] before its logit (float32: 1 - 1e-6 is exact enough).
PREDICTION_EPSILON = 1e-6

# The downstream's own fields, each embedded by the ranker (ids included).
FIELDS = (features.SCENARIO,) + features.USER_FEATURES + features.ITEM_FEATURES
RAW_FEATURES = FIELDS
FIELD_GROUPS = {  # for importance by masking (Sec. 5.3.1)
    "ids": features.ID_FEATURES,
    "user features": tuple(f for f in features.USER_FEATURES if f not in features.ID_FEATURES),
    "item features": tuple(f for f in features.ITEM_FEATURES if f not in features.ID_FEATURES),
    "scenario": (features.SCENARIO,),
}


class DownstreamRanker(tfrs.models.Model):
    """DCN-v2 ranker with a transfer mode (module doc).

    Args:
      config: `DownstreamConfig` (its `mode` picks the transfer).
      preprocessor: raw features -> ids (e.g. `VocabularyPreprocessor.adapt` on the
        downstream training window).
      representation_dims: width of each representation feature the mode reads
        (`config.representation_features`), e.g. `{"ur": 32, "cr_user": 64, ...}`.
      upstream_config: the upstream's `ModelConfig` (the IIM modes copy its ad branch).
      upstream_export: the upstream SavedModel (`finetune` runs its towers;
        `iim_warm_start` reads its ad module).
      label_prior: the training rows' click rate; the logit's bias starts at its log-odds, so
        training starts calibrated and spends its few steps on the ranking (default: 0).

    Call args:
      inputs: the raw `FIELDS` (as `features.parse_examples` gives them) and the mode's
        representation features `[batch, d]` with their found indicators `[batch]` (float 0/1);
        in `distill`, `signatures.UPSTREAM_AD_PREDICTION_FEATURE` `[batch]` (a probability).
    Returns:
      `{"logit": [batch, 1], "prediction": [batch, 1]}` (+ `"iim_logit"` in the IIM modes,
      `"distill_logit"` in `distill` with a positive `distill_loss_weight`).

    Example:
      >>> ranker = DownstreamRanker(DownstreamConfig(mode="ur"), preprocessor, {"ur": 32})
      >>> ranker.compile(tf.keras.optimizers.Adam(1e-3))
      >>> ranker.fit(dataset_of_feature_dicts_with_label)
    """

    def __init__(self, config: downstream_config.DownstreamConfig,
                 preprocessor: FeaturePreprocessor,
                 representation_dims: dict[str, int] | None = None,
                 upstream_config: ModelConfig | None = None,
                 upstream_export: str | None = None, label_prior: float | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if label_prior is not None and not 0.0 < label_prior < 1.0:
            raise ValueError(f"label_prior must be in (0, 1), got {label_prior}")
        if config.mode == downstream_config.RETRIEVAL:
            raise ValueError("mode 'retrieval' is a model of its own: use "
                             "trainer.downstream.retrieval.StandaloneRetrieval")
        self.config = config
        self.mode = config.mode
        representation_dims = dict(representation_dims or {})
        missing = [f for f in config.representation_features if f not in representation_dims]
        if missing:
            raise ValueError(f"mode {self.mode!r} reads the representation features {missing}: "
                             f"give their widths in representation_dims (got "
                             f"{sorted(representation_dims)})")
        self.representation_dims = {f: int(representation_dims[f])
                                    for f in config.representation_features}
        self.preprocessor = preprocessor
        self.embeddings = FeatureEmbeddings(
            {name: preprocessor.vocabulary_size(name) for name in BUCKET_FIELDS
             if name not in SHARED_TABLES},
            config.embedding_dim, l2=config.embedding_l2, zero_init=features.ID_FEATURES)
        self.dense_features = config.dense_features
        self.cr_features = tuple(f for f in config.representation_features
                                 if f not in (signatures.UR_FEATURE, signatures.IR_FEATURE))
        self.adapter = NonLinearAdapter(
            config.adapter_activation, per_field=config.adapter_per_field,
            name="adapter") if self.mode in downstream_config.ADAPTER_MODES else None
        self.fusion = LinearFusion(config.linear_fusion_units, name="linear_fusion") if (
            self.mode == downstream_config.CR_LINEAR) else None
        self.iim = None
        if self.mode in downstream_config.IIM_MODES:
            if upstream_config is None:
                raise ValueError(f"mode {self.mode!r} needs the upstream's ModelConfig "
                                 "(upstream_config) to copy its ad branch")
            self.iim = IsomorphicInteractionModule(upstream_config, name="iim")
        self.upstream_config = upstream_config
        self.upstream_export = upstream_export
        self.towers = None
        if self.mode == downstream_config.FINETUNE:
            if upstream_export is None:
                raise ValueError("mode 'finetune' needs the upstream export (upstream_export)")
            from trainer.downstream.upstream_layer import UpstreamLayer

            self.towers = {
                signatures.UR_FEATURE: UpstreamLayer(upstream_export,
                                                     signatures.USER_TOWER_ENDPOINT,
                                            trainable=True, name="upstream_user_tower"),
                signatures.IR_FEATURE: UpstreamLayer(upstream_export,
                                                     signatures.ITEM_TOWER_ENDPOINT,
                                            trainable=True, name="upstream_item_tower"),
            }
        self.cross = [CrossNetV2(projection_dim=config.cross_projection_dim, name=f"cross_{i + 1}")
                      for i in range(config.num_cross_layers)]
        self.mlp = MLP(config.mlp_hidden, dropout=config.dropout, name="mlp")
        bias = 0.0 if label_prior is None else math.log(label_prior / (1.0 - label_prior))
        self.logit = tf.keras.layers.Dense(
            1, bias_initializer=tf.keras.initializers.Constant(bias), name="logit")
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.AUC(name="auc", from_logits=True, num_thresholds=1000)])
        self.iim_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True)) if self.iim else None
        self.prediction_features = config.prediction_features
        self.distill_logit = self.distill_task = None
        if self.mode == downstream_config.DISTILL and config.distill_loss_weight:
            self.distill_logit = tf.keras.layers.Dense(
                1, bias_initializer=tf.keras.initializers.Constant(bias), name="distill_logit")
            self.distill_task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
        self._warm_started = False

    def get_config(self) -> dict:
        return {"config": dataclasses.asdict(self.config),
                "representation_dims": dict(self.representation_dims), "name": self.name}

    # -- forward ----------------------------------------------------------------------------
    def _upstream_probability(self, inputs, name: str) -> tf.Tensor:
        """The upstream's predicted probability `name` of each row, `[batch, 1]` float32."""
        if name not in inputs:
            raise ValueError(f"mode {self.mode!r} reads the feature {name!r} (the upstream's "
                             f"{signatures.AD_PREDICTION!r} on the row itself): attach it with "
                             "trainer.downstream.data.with_upstream_prediction")
        return tf.reshape(tf.cast(inputs[name], tf.float32), [-1, 1])

    def _representation(self, inputs, name: str, masked, training: bool):
        """(vector [batch, d], found [batch, 1]) of representation feature `name`."""
        if self.towers is not None and name in self.towers:
            needs = signatures.REQUIRED_FEATURES[signatures.USER_REPRESENTATION
                                                 if name == signatures.UR_FEATURE
                                        else signatures.ITEM_REPRESENTATION]
            vector = self.towers[name]({k: inputs[k] for k in needs}, training=training)
            found = tf.ones_like(vector[:, :1])
        else:
            vector = tf.cast(inputs[name], tf.float32)
            found = tf.cast(tf.reshape(inputs[signatures.found_feature(name)], [-1, 1]), tf.float32)
        if name in masked:
            vector, found = tf.zeros_like(vector), tf.zeros_like(found)
        return tf.cast(vector, tf.float32), found

    def forward(self, inputs: dict[str, tf.Tensor], training: bool = False,
                masked: frozenset[str] = frozenset()) -> dict[str, tf.Tensor]:
        """`call` with the inputs of `masked` (field or representation feature names) zeroed:
        a field's embedding, a representation's vector and its found indicator, the column
        logit(p_up) of the upstream's prediction (Sec. 5.3.1)."""
        maskable = signatures.REPRESENTATION_FEATURES + downstream_config.PREDICTION_FEATURES
        unknown = sorted(set(masked) - set(FIELDS) - set(maskable))
        if unknown:
            raise ValueError(f"cannot mask {unknown}: not a field ({list(FIELDS)}) or a "
                             f"representation feature ({list(maskable)})")
        ids = self.preprocessor({k: inputs[k] for k in FIELDS})
        if training and self.config.id_dropout:
            for name in features.ID_FEATURES:  # hidden ids: the ranker must also use the features
                keep = tf.random.uniform(tf.shape(ids[name])) >= self.config.id_dropout
                ids[name] = tf.where(keep, ids[name], tf.zeros_like(ids[name]))
        embedded = self.embeddings(ids)
        fields = tf.stack([tf.zeros_like(embedded[f]) if f in masked else embedded[f]
                           for f in FIELDS], axis=1)  # [batch, F, d]
        reps = {name: self._representation(inputs, name, masked, training)
                for name in self.config.representation_features}
        if self.mode == downstream_config.FINETUNE:  # UR, IR from the fine-tuned towers
            for name in (signatures.UR_FEATURE, signatures.IR_FEATURE):
                reps[name] = self._representation(inputs, name, masked, training)
        if self.adapter is not None:
            condition = tf.concat([reps[n][0] for n in self.cr_features]
                                  + [reps[n][1] for n in self.cr_features], axis=-1)
            fields = self.adapter((fields, condition))  # E ⊙ σ(CR · M): [batch, F, d]
        width = len(FIELDS) * self.config.embedding_dim
        parts = [tf.reshape(fields, [-1, width])]  # [batch, F * d]
        dense = self.dense_features + ((signatures.UR_FEATURE, signatures.IR_FEATURE)
                                       if self.mode == downstream_config.FINETUNE else ())
        for name in dense:
            parts += list(reps[name])  # [batch, d], [batch, 1]
        if self.fusion is not None:
            parts.append(self.fusion([reps[n][0] for n in self.cr_features]
                                     + [reps[n][1] for n in self.cr_features]))  # [b, units]
        for name in self.prediction_features:
            p = tf.clip_by_value(self._upstream_probability(inputs, name), PREDICTION_EPSILON,
                                 1.0 - PREDICTION_EPSILON)  # [batch, 1]
            column = tf.math.log(p) - tf.math.log1p(-p)  # logit(p_up) [batch, 1]
            parts.append(tf.zeros_like(column) if name in masked else column)
        x0 = tf.concat(parts, axis=-1)  # [batch, d0]
        x = x0
        for layer in self.cross:
            x = layer(x0, x)  # [batch, d0]
        out = {}
        if self.iim is not None:
            module = self.iim((reps[signatures.UR_FEATURE][0], reps[signatures.IR_FEATURE][0]),
                              training=training)
            x = tf.concat([x, module["representation"]], axis=-1)  # [batch, d0 + d_cr']
            out["iim_logit"] = module["logit"]
        h = self.mlp(x, training=training)[-1] if self.config.mlp_hidden else x
        logit = tf.cast(self.logit(h), tf.float32)  # [batch, 1]
        out.update(logit=logit, prediction=tf.sigmoid(logit))
        if self.distill_logit is not None:
            out["distill_logit"] = tf.cast(self.distill_logit(h), tf.float32)  # [batch, 1]
        return out

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> dict[str, tf.Tensor]:
        return self.forward(inputs, training=training)

    def warm_start_iim(self, variables) -> list[str]:
        """Starts the IIM from the upstream ad module's `variables` (builds it first)."""
        if self.iim is None:
            raise ValueError(f"mode {self.mode!r} has no isomorphic interaction module")
        if not self.iim.built:
            d_ur = self.representation_dims[signatures.UR_FEATURE]
            d_ir = self.representation_dims[signatures.IR_FEATURE]
            self.iim((tf.zeros([1, d_ur]), tf.zeros([1, d_ir])))
        return self.iim.warm_start_from(variables)

    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        outputs = self(inputs, training=training)
        label = tf.cast(tf.reshape(inputs[features.LABEL], [-1, 1]), tf.float32)  # [batch, 1]
        loss = self.task(labels=label, predictions=outputs["logit"], training=training)
        if self.iim_task is not None and self.config.iim_aux_loss_weight:
            loss += self.config.iim_aux_loss_weight * self.iim_task(
                labels=label, predictions=outputs["iim_logit"], training=training)
        if self.distill_task is not None:  # the upstream's probability as a soft target
            target = self._upstream_probability(inputs, signatures.UPSTREAM_AD_PREDICTION_FEATURE)
            loss += self.config.distill_loss_weight * self.distill_task(
                labels=target, predictions=outputs["distill_logit"], training=training)
        return loss
